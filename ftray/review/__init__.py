"""Human review of an evaluation: `ftray review`.

Reviewers rate the candidate's and the incumbent's answers to the same held-out inputs side by
side, blind to which is which (`app`, `pairwise`); ratings are stored one file each under
`evals/<eval-id>/reviews/` (`ratings`); `stats` turns them into a win rate with an interval and
inter-reviewer agreement; `verdict` feeds the win rate to the gate and settles it.
Nothing is imported here, so `ftray --help` stays fast.
"""
