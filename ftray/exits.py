"""The `ftray` command's exit codes, and the one place where a decision becomes one.

Codes 3 to 6 are decisions, not errors: a scheduler or CI job branches on them.
"""

from __future__ import annotations

OK = 0
FAILED = 1  # a job that failed on the cluster (`ftray submit`, `ftray jobs`)
USER_ERROR = 2  # ftray.errors.UserError: something the user can fix
ASSESS_STOP = 3  # `ftray run`: assess says not to train
GATE_REJECTED = 4  # the gate (or the human review) rejected the candidate
AWAITING_REVIEW = 5  # the gate has a human rule still waiting for ratings
MONITOR_ALERT = 6  # `ftray monitor` fired at least one alert
INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


def gate_exit(gate: dict) -> int:
    """The exit code for a gate's verdict: 0 passed, 4 rejected, 5 awaiting human review.

    Used by `ftray eval`, `ftray run`, `ftray retrain` and `ftray review decide`.
    """
    if gate.get("pending"):
        return AWAITING_REVIEW
    return OK if gate["passed"] else GATE_REJECTED


def assess_exit(decision: str, *, force: bool) -> int:
    """Whether `ftray run` goes on after assess: 0 to train, else 3.

    `--force` overrides "don't fine-tune" only; "not enough data" always stops.
    """
    from ftray.artifacts import DONT, FINE_TUNE

    if decision == FINE_TUNE or (decision == DONT and force):
        return OK
    return ASSESS_STOP


def monitor_exit(alerts: list) -> int:
    """`ftray monitor`: 6 when any alert fired, else 0."""
    return MONITOR_ALERT if alerts else OK
