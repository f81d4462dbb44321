"""`ftray monitor | retrain | feedback`: checks on production traffic, the next version from
accepted corrections, and decisions on feedback."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ftray import exits

if TYPE_CHECKING:
    from ftray.progress import Progress
    from ftray.spec import JobSpec
    from ftray.store import Store


def add_monitor_parsers(verbs, job_args) -> None:
    """Add the three verbs; `job_args` adds JOB, `--set` and (address=True) `--address`."""
    monitor = verbs.add_parser(
        "monitor",
        help="quality checks on the Serve app's sampled traffic; alerts; report (exit 6 on "
        "an alert)",
    )
    job_args(monitor, address=True)
    monitor.set_defaults(handler=_monitor)

    retrain = verbs.add_parser(
        "retrain",
        help="next dataset version = sources + accepted corrections; train, evaluate against "
        "production, gate (exit codes as `ftray eval`)",
    )
    job_args(retrain, address=True)
    retrain.set_defaults(handler=_retrain)

    feedback = verbs.add_parser("feedback", help="feedback on served answers: list, accept, reject")
    feedback.add_argument("action", choices=("list", "accept", "reject"))
    job_args(feedback)
    feedback.add_argument("feedback_ids", nargs="*", metavar="FEEDBACK_ID")
    feedback.add_argument("--output", help="accept: the corrected answer (default: the user's)")
    feedback.add_argument("--all", action="store_true", help="list: decided feedback too")
    feedback.set_defaults(handler=_feedback)


def _monitor(args: argparse.Namespace) -> int:
    import time

    from ftray.monitor import trigger
    from ftray.monitor.retrain import unused_corrections
    from ftray.monitor.stage import monitor
    from ftray.progress import Progress
    from ftray.runtime import ray_session
    from ftray.specload import load_spec
    from ftray.store import Store

    spec = load_spec(args.job, args.overrides, check_files=False)
    store = Store(spec.storage, spec.project)
    progress = Progress()
    with ray_session(spec.ray, args.address):
        with progress.stage("monitor"):
            ref = monitor(spec, store, progress)
        started = time.time()
        reason = trigger.retrain_reason(spec, store, ref.alerts, started)
        if reason and not unused_corrections(store):
            # the same data again: the same dataset, run and model, judged against itself
            progress.note(f"retrain due ({reason}) but skipped: no new accepted corrections")
            trigger.record_retrain(store, started, reason, None)
        elif reason:
            progress.note(f"retrain due ({reason}): monitor.retrain starts it")
            card = _next_version(spec, store, progress)
            trigger.record_retrain(store, started, reason, card)
    # The checks decide the exit code; a retrain's verdict is in the registry and its log.
    return exits.monitor_exit(ref.alerts)


def _retrain(args: argparse.Namespace) -> int:
    from ftray.progress import Progress
    from ftray.runtime import ray_session
    from ftray.specload import load_spec
    from ftray.store import Store

    spec = load_spec(args.job, args.overrides, check_files=True)
    with ray_session(spec.ray, args.address):
        card = _next_version(spec, Store(spec.storage, spec.project), Progress())
    return exits.gate_exit(card["gate"])


def _next_version(spec: JobSpec, store: Store, progress: Progress) -> dict:
    """`ftray retrain`: the spec with the accepted corrections, trained, evaluated, decided."""
    from ftray.monitor.retrain import retrain_spec
    from ftray.pipeline import Pipeline

    with progress.stage("retrain"):
        spec = retrain_spec(spec, store, progress)
    return Pipeline(spec, progress).decide()


def _feedback(args: argparse.Namespace) -> int:
    from ftray.errors import UserError
    from ftray.monitor import feedback
    from ftray.specload import load_spec
    from ftray.store import Store

    spec = load_spec(args.job, args.overrides, check_files=False)
    store = Store(spec.storage, spec.project)
    if args.action == "list":
        decided = feedback.decisions(store)
        rows = feedback.all_feedback(store) if args.all else feedback.pending(store)
        for row in rows:
            print(json.dumps({**row, "decision": decided.get(row["feedback_id"])}))
        return 0
    if not args.feedback_ids:
        raise UserError(f"`ftray feedback {args.action}` takes one or more FEEDBACK_IDs")
    for feedback_id in args.feedback_ids:
        record = feedback.decide(store, feedback_id, args.action, output=args.output)
        print(f"{feedback_id}: {record['decision']}")
    return 0
