"""When `ftray monitor` retrains by itself: the `monitor.retrain` triggers, judged after the
checks ran (an alert counts on production traffic only), and the log of the
retrains it started (`monitor/retrains/`, one event each: when, why, the model it produced
and the gate's verdict).

Nothing here trains: `ftray monitor` (an orchestrator) runs the same retrain as `ftray
retrain` when `retrain_reason` names a reason, and the gate decides as always.
"""

from __future__ import annotations

from ftray.monitor.reference import UNRECORDED
from ftray.monitor.retrain import unused_corrections
from ftray.spec import JobSpec
from ftray.store import Store, utc_stamp

LOG = ("monitor", "retrains")


def retrain_reason(spec: JobSpec, store: Store, alerts: list[dict], now: float) -> str | None:
    """Why a retrain is due now, or None: an alert of a listed check on the production
    model, enough accepted corrections no retrain has used, or the schedule (checked in that
    order)."""
    from ftray.registry import list_models

    triggers = spec.monitor.retrain
    # A retrain makes the production model's next version, so only production traffic calls
    # for one: the production model's, an earlier production model's (production until a
    # promotion in the window), and samples that name no model (judged as production's). A
    # canary's, an experiment arm's or another tenant's alert names that model; a person acts.
    ours = {c["model_id"] for c in list_models(store) if c["stage"] in ("production", "archived")}
    ours.add(UNRECORDED)
    fired = [
        alert["check"]
        for alert in alerts
        if alert["model"] in ours
        and ("any" in triggers.on_alerts or alert["check"] in triggers.on_alerts)
    ]
    if fired:
        return f"alert: {', '.join(fired)}"
    if triggers.min_corrections:
        new = len(unused_corrections(store))
        if new >= triggers.min_corrections:
            return f"{new} accepted correction(s) not yet used (≥ {triggers.min_corrections})"
    if triggers.every_hours:
        started = [event["started"] for event in store.read_events(*LOG)]
        if not started or now - max(started) >= triggers.every_hours * 3600:
            return f"schedule: every {triggers.every_hours:g} h"
    return None


def record_retrain(store: Store, started: float, reason: str, card: dict | None) -> None:
    """Log a retrain `ftray monitor` started: its reason and outcome (None: nothing to train)."""
    outcome = {"model_id": card["model_id"], "stage": card["stage"]} if card else None
    event = {
        "started": started,
        "time": utc_stamp(started),
        "reason": reason,
        "outcome": outcome,
    }
    store.write_event(event, *LOG)
