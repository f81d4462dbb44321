"""`ftray monitor | retrain | feedback`: checks on production traffic, the next version from
accepted corrections, and decisions on feedback."""

from __future__ import annotations

import argparse
import json

from ftray import exits


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
    from ftray.monitor.stage import monitor
    from ftray.progress import Progress
    from ftray.runtime import ray_session
    from ftray.specload import load_spec
    from ftray.store import Store

    spec = load_spec(args.job, args.overrides, check_files=False)
    progress = Progress()
    with ray_session(spec.ray, args.address), progress.stage("monitor"):
        ref = monitor(spec, Store(spec.storage, spec.project), progress)
    return exits.monitor_exit(ref.alerts)


def _retrain(args: argparse.Namespace) -> int:
    from ftray.monitor.retrain import retrain_spec
    from ftray.pipeline import Pipeline
    from ftray.progress import Progress
    from ftray.runtime import ray_session
    from ftray.specload import load_spec
    from ftray.store import Store

    spec = load_spec(args.job, args.overrides, check_files=True)
    progress = Progress()
    with progress.stage("retrain"):
        spec = retrain_spec(spec, Store(spec.storage, spec.project), progress)
    with ray_session(spec.ray, args.address):
        card = Pipeline(spec, progress).decide()
    return exits.gate_exit(card["gate"])


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
