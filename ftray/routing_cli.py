"""`ftray models canary|experiment|end-split|shadow|end-shadow|shadow-report|history`: how
`production` traffic is split between models and mirrored to a shadow (`ftray.routing`)."""

from __future__ import annotations

import json


def add_routing_parsers(actions, verb, load) -> None:
    """Add the routing verbs to `ftray models`; `verb` adds a sub-command taking JOB and
    `--set`, `load(args)` reads the job spec."""

    def run(handler):
        def opened(args) -> int:
            from ftray.store import Store

            spec = load(args)
            args.rollout = spec.serve.rollout.model_dump()
            return handler(Store(spec.storage, spec.project), args)

        return opened

    canary = verb(
        actions, "canary", "send a share of production traffic to a candidate", run(_canary)
    )
    canary.add_argument("model_id")
    canary.add_argument(
        "--percent", type=float, required=True, help="its share of production traffic, 0 < P < 100"
    )
    canary.add_argument("--reason", default="canary by hand", help="recorded in the log")
    canary.add_argument(
        "--auto",
        action="store_true",
        help="let `ftray models watch` (and each `ftray monitor` run) promote it or roll it "
        "back by the job's serve.rollout rules",
    )
    experiment = verb(
        actions, "experiment", "split production traffic between two models", run(_experiment)
    )
    experiment.add_argument("a", metavar="A", help="a model id")
    experiment.add_argument("b", metavar="B", help="another model id")
    experiment.add_argument(
        "--split", type=float, default=50.0, help="B's share of production traffic (default 50)"
    )
    experiment.add_argument("--reason", default="experiment by hand", help="recorded in the log")
    end = verb(actions, "end-split", "end the canary or experiment", run(_end_split))
    end.add_argument("--reason", default="ended by hand", help="recorded in the log")
    shadow = verb(
        actions,
        "shadow",
        "mirror a share of production requests to a model; users get production's answers",
        run(_shadow),
    )
    shadow.add_argument("model_id")
    shadow.add_argument(
        "--percent", type=float, required=True, help="the share of users mirrored, 0 < P < 100"
    )
    shadow.add_argument("--reason", default="shadow by hand", help="recorded in the log")
    end_shadow = verb(actions, "end-shadow", "stop mirroring to the shadow", run(_end_shadow))
    end_shadow.add_argument("--reason", default="ended by hand", help="recorded in the log")
    report = verb(
        actions,
        "shadow-report",
        "print the recorded shadow pairs' counts, agreement and latency per shadow model (JSON)",
        run(_shadow_report),
    )
    report.add_argument("--hours", type=float, default=24.0, help="the window (default 24)")
    watch = verb(
        actions,
        "watch",
        "judge the active canary or experiment on its online counts; an --auto canary is "
        "promoted or rolled back",
        run(_watch),
    )
    watch.add_argument(
        "--every", type=float, metavar="S", help="judge again every S seconds until decided"
    )
    watch.add_argument(
        "--for",
        dest="limit",
        type=float,
        default=3600.0,
        metavar="S",
        help="with --every: give up after S seconds (default 3600)",
    )
    verb(actions, "history", "every registry event, oldest first", run(_history))


def _canary(store, args) -> int:
    from ftray.routing import canary, describe

    auto = args.rollout if args.auto else None
    event = canary(store, args.model_id, percent=args.percent, reason=args.reason, auto=auto)
    print(describe(event) + (" (automatic: `ftray models watch` decides)" if auto else ""))
    return 0


def _experiment(store, args) -> int:
    from ftray.routing import describe, experiment

    print(describe(experiment(store, args.a, args.b, percent=args.split, reason=args.reason)))
    return 0


def _end_split(store, args) -> int:
    from ftray.registry import production
    from ftray.routing import end_split

    event = end_split(store, reason=args.reason)
    print(
        f"ended the {event['ended_split']['action']} of {event['model_id']}; "
        f"production: {production(store) or 'none'}"
    )
    return 0


def _shadow(store, args) -> int:
    from ftray.registry import production
    from ftray.routing import shadow

    event = shadow(store, args.model_id, percent=args.percent, reason=args.reason)
    print(
        f"shadow: {event['model_id']} answers {event['percent']:g}% of production's users "
        f"beside {production(store) or 'the production model'}; they get production's answers"
    )
    return 0


def _end_shadow(store, args) -> int:
    from ftray.routing import end_shadow

    print(f"ended the shadow of {end_shadow(store, reason=args.reason)['model_id']}")
    return 0


def _shadow_report(store, args) -> int:
    from ftray.serve.shadow import shadow_report

    print(json.dumps(shadow_report(store, hours=args.hours), indent=2))
    return 0


def _watch(store, args) -> int:
    import time

    from ftray.rollout import watch

    deadline = time.monotonic() + args.limit
    while True:
        split, verdict, decided = watch(store, args.rollout)
        if split is None or verdict is None:
            print("no canary or experiment is active")
            return 0
        print(f"{verdict.decision}: {'; '.join(verdict.reasons)}")
        print(json.dumps(verdict.arms, indent=2))
        if decided is not None:
            print(f"{decided['action']}: {decided['model_id']} ({decided['reason']})")
            return 0
        if not args.every or verdict.decision != "wait" or time.monotonic() > deadline:
            return 0
        time.sleep(args.every)


def _history(store, args) -> int:
    from ftray.registry import history

    for event in history(store):
        share = f" {event['percent']:g}%" if "percent" in event else ""
        against = event.get("control") or event.get("previous")
        print(
            f"{event['at']}  {event['action']:<10} {event['model_id']}{share}"
            f"{f' (vs {against})' if against else ''}  by {event['by']}: {event['reason']}"
        )
    return 0
