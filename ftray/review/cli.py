"""`ftray review [serve|results|decide|pairs] JOB.yaml`: the review app, results, decision."""

from __future__ import annotations

import argparse
import json
import sys

from ftray import exits
from ftray.errors import UserError

ACTIONS = {
    "serve": "serve the review pages: pairwise and flagged outputs (the default)",
    "results": "print win rate, interval, agreement and the gate as JSON (and write the report)",
    "decide": "settle a gate that waits for human review: promote or reject, once",
    "pairs": "write the rated items as preference pairs for train.method dpo (winner chosen, "
    "loser rejected, ties dropped, weighted by agreement) and print the counts and the file",
}


def add_review_parser(verbs, job_args) -> None:
    """Add `review` to the `ftray` sub-commands; `job_args` adds JOB and `--set`."""
    review = verbs.add_parser(
        "review",
        help="human review in a local web app: rate candidate vs incumbent side by side, "
        "accept, correct or reject flagged outputs; results; decide a gate that waits for "
        "ratings",
        description="Human review: pairwise preference of an evaluation, and flagged "
        "production outputs whose accepted corrections enter the next dataset version. "
        + "; ".join(f"{name}: {text}" for name, text in ACTIONS.items())
        + ".",
    )
    review.add_argument(
        "action", nargs="?", default="serve", choices=tuple(ACTIONS), help="default: serve"
    )
    job_args(review)
    review.add_argument(
        "--eval",
        dest="eval_id",
        metavar="EVAL_ID",
        help="default: the project's latest eval (serve: none yet serves the flagged queue only)",
    )
    review.add_argument("--host", default="127.0.0.1", help="serve: bind address")
    review.add_argument("--port", type=int, default=8400, help="serve: port")
    review.add_argument(
        "--tokens",
        metavar="FILE",
        help="serve: YAML of `reviewer: token` lines; only these tokens get in (default: "
        "anyone who can reach the page signs in with a name)",
    )
    review.set_defaults(handler=_review)


def _review(args: argparse.Namespace) -> int:
    from ftray.review.ratings import latest_eval
    from ftray.specload import load_spec
    from ftray.store import Store

    spec = load_spec(args.job, args.overrides, check_files=False)
    store = Store(spec.storage, spec.project)
    eval_id = args.eval_id
    # The flagged queue needs no evaluation: a project serving its first model has none yet.
    if eval_id is None and (args.action != "serve" or store.manifests("evals")):
        eval_id = latest_eval(store)
    if args.action == "serve":
        return _serve(store, eval_id, args)
    if args.action == "pairs":
        from ftray.review.preferences import write_rating_pairs

        assert eval_id is not None
        print(json.dumps(write_rating_pairs(spec.data, store, eval_id), indent=2))
        return exits.OK
    from ftray.review.verdict import decide, results

    found = results(store, eval_id) if args.action == "results" else decide(store, eval_id)
    print(json.dumps(found, indent=2))
    print(f"report: {store.uri('evals', eval_id, 'reviews', 'report.html')}", file=sys.stderr)
    # `results` reports; only `decide`'s verdict is the command's outcome.
    return exits.gate_exit(found["gate"]) if args.action == "decide" else exits.OK


def _serve(store, eval_id: str | None, args: argparse.Namespace) -> int:
    import uvicorn
    import yaml

    from ftray.review.app import build_app
    from ftray.review.http import Reviewers

    reviewers = None
    if args.tokens:
        try:
            with open(args.tokens) as handle:
                listed = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"--tokens {args.tokens}: cannot read it: {err}") from None
        if not isinstance(listed, dict):
            raise UserError(f"--tokens {args.tokens}: expected `reviewer: token` lines")
        reviewers = Reviewers.from_names(listed)
    elif args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: anyone who reaches {args.host}:{args.port} can sign in and rate; "
            "`--tokens FILE` limits it to listed reviewers",
            file=sys.stderr,
        )
    app = build_app(store, eval_id, reviewers)
    what = f"evaluation {eval_id} and flagged outputs" if eval_id else "flagged outputs"
    print(f"reviewing {what}: http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
