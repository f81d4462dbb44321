"""Human review: `ftray review` (an evaluation's pairs or a shadow model's, and flagged
production outputs).

Reviewers rate the candidate's and the incumbent's answers to the same held-out inputs side by
side, blind to which is which (`app`, `pairwise`); ratings are stored one file each under
`evals/<eval-id>/reviews/` (`ratings`); `stats` turns them into a win rate with an interval and
inter-reviewer agreement; `verdict` feeds the win rate to the gate and settles it. A shadow
model's recorded pairs (its answer and production's to the same request, `shadow_pairs`) go
through the same queue, ratings and statistics, under `shadows/<model-id>/reviews/`. The same
app's `flagged` queue shows served answers flagged by users or monitoring checks, to accept
(with a corrected output) or reject through `ftray.monitor.feedback`.
Nothing is imported here, so `ftray --help` stays fast.
"""
