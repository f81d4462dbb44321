"""`ftray review [serve|results|decide|pairs] JOB.yaml`: the review app, results, decision;
of an evaluation's pairs (`--eval`, default the latest) or a shadow model's (`--shadow`)."""

from __future__ import annotations

import argparse
import json
import sys

from ftray import exits
from ftray.errors import UserError

ACTIONS = {
    "serve": "serve the review pages: pairwise and flagged outputs (the default)",
    "results": "print win rate, interval, agreement (and an evaluation's gate) as JSON and "
    "write the report",
    "decide": "settle an evaluation's gate that waits for human review: promote or reject, once",
    "pairs": "write the rated items as preference pairs for train.method dpo (winner chosen, "
    "loser rejected, ties dropped, weighted by agreement) and print the counts and the file",
}


def add_review_parser(verbs, job_args) -> None:
    """Add `review` to the `ftray` sub-commands; `job_args` adds JOB and `--set`."""
    review = verbs.add_parser(
        "review",
        help="human review in a local web app: rate candidate vs incumbent (or a shadow model "
        "vs production) side by side, accept, correct or reject flagged outputs; results; "
        "decide a gate that waits for ratings",
        description="Human review: pairwise preference of an evaluation or of a shadow "
        "model's recorded pairs, and flagged production outputs whose accepted corrections "
        "enter the next dataset version. "
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
    review.add_argument(
        "--shadow",
        metavar="MODEL_ID",
        help="review shadow model MODEL_ID's recorded pairs (its answer vs production's to "
        "the same request) instead of an evaluation's; not with --eval or decide",
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
    from ftray.specload import load_spec
    from ftray.store import Store

    if args.shadow is not None and args.eval_id is not None:
        raise UserError(
            "--eval and --shadow each choose the pairs to review: an evaluation's, or a shadow "
            "model's recorded pairs. Give one."
        )
    if args.shadow is not None and args.action == "decide":
        raise UserError(
            "`ftray review decide` settles an evaluation's gate; a shadow model has no gate to "
            f"settle. `ftray review results JOB.yaml --shadow {args.shadow}` shows its win "
            "rate; `ftray models canary` or `ftray models promote` act on it."
        )
    spec = load_spec(args.job, args.overrides, check_files=False)
    store = Store(spec.storage, spec.project)
    if args.shadow is not None:
        return _shadow(spec, store, args)
    from ftray.review.ratings import EvalPairs, latest_eval

    eval_id = args.eval_id
    # The flagged queue needs no evaluation: a project serving its first model has none yet.
    if eval_id is None and (args.action != "serve" or store.manifests("evals")):
        eval_id = latest_eval(store)
    if args.action == "serve":
        what = f"evaluation {eval_id} and flagged outputs" if eval_id else "flagged outputs"
        return _serve(store, args, what, eval_id=eval_id)
    assert eval_id is not None
    if args.action == "pairs":
        from ftray.review.preferences import write_rating_pairs

        pairs = write_rating_pairs(spec.data, store, EvalPairs(store, eval_id))
        print(json.dumps(pairs, indent=2))
        return exits.OK
    from ftray.review.verdict import decide, results

    found = results(store, eval_id) if args.action == "results" else decide(store, eval_id)
    print(json.dumps(found, indent=2))
    print(f"report: {store.uri('evals', eval_id, 'reviews', 'report.html')}", file=sys.stderr)
    # `results` reports; only `decide`'s verdict is the command's outcome.
    return exits.gate_exit(found["gate"]) if args.action == "decide" else exits.OK


def _shadow(spec, store, args: argparse.Namespace) -> int:
    """`serve`, `results` or `pairs` of shadow model `args.shadow`'s recorded pairs."""
    from ftray.review.shadow_pairs import ShadowPairs, shadow_results

    model_id = args.shadow
    if args.action == "serve":
        what = f"shadow {model_id} against production and flagged outputs"
        return _serve(store, args, what, shadow=model_id)
    if args.action == "pairs":
        from ftray.review.preferences import write_rating_pairs

        pairs = write_rating_pairs(spec.data, store, ShadowPairs(store, model_id))
        print(json.dumps(pairs, indent=2))
        return exits.OK
    print(json.dumps(shadow_results(store, model_id, spec.eval.confidence_level), indent=2))
    print(f"report: {store.uri('shadows', model_id, 'reviews', 'report.html')}", file=sys.stderr)
    return exits.OK


def _serve(
    store,
    args: argparse.Namespace,
    what: str,
    eval_id: str | None = None,
    shadow: str | None = None,
) -> int:
    """Serve the review app of an evaluation's pairs, a shadow's, or neither (`what` says)."""
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
    app = build_app(store, eval_id, reviewers, shadow=shadow)
    print(f"reviewing {what}: http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
