"""The `ftray` command: parse arguments, load the spec, call a stage, print the result."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ftray import exits
from ftray.errors import UserError
from ftray.monitor.cli import add_monitor_parsers
from ftray.progress import Progress
from ftray.rag.cli import add_index_parser
from ftray.review.cli import add_review_parser

if TYPE_CHECKING:
    from ftray.assess import AssessRef
    from ftray.pipeline import Pipeline

STAGES = {
    "prepare": "read, check, split and tokenize the data into a versioned dataset",
    "assess": "go/no-go: enough data? does the base model already do the job? cost per method",
    "train": "train full (DeepSpeed), LoRA or QLoRA on Ray Train (prepares data if needed)",
    "sweep": "Ray Tune (ASHA) over training trials; leaderboard and winner (prepares if needed)",
    "eval": "evaluate the candidate vs the incumbent, apply the gate, register (trains first if "
    "needed); exit 4 when the gate rejects it",
    "serve": "serve the registry's models on Ray Serve (OpenAI-compatible API) and answer "
    "serve.example_prompt with the production model (or --model)",
    "run": "the whole pipeline: prepare → assess → train → evaluate → register → serve",
}


def main(argv: list[str] | None = None) -> int:
    """Run `ftray ARGV...`; returns the exit code (ftray/exits.py)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return exits.USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return exits.INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftray", description="LLM fine-tuning pipelines on Ray.")
    parser.add_argument("--version", action="version", version=_version())
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    for verb, help_text in STAGES.items():
        sub = verbs.add_parser(verb, help=help_text, description=help_text)
        _job_args(sub, address=True)
        if verb in ("serve", "run"):
            sub.add_argument(
                "--keep-serving", action="store_true", help="keep serving until Ctrl-C"
            )
        if verb == "serve":
            sub.add_argument(
                "--model", help="model the example request goes to (default: production, else base)"
            )
        if verb == "run":
            sub.add_argument(
                "--force", action="store_true", help="train even when assess says not to"
            )
        if verb == "assess":
            sub.add_argument(
                "--estimates-only",
                action="store_true",
                help="print each method's memory per GPU from the spec and the model's config "
                "only (no Ray, no data, no weights; see assess.base_config)",
            )
        sub.set_defaults(handler=_run_stage)

    _submit_parsers(verbs)
    add_review_parser(verbs, _job_args)
    add_monitor_parsers(verbs, _job_args)
    add_index_parser(verbs)

    _verb(verbs, "validate", "check a job spec and print it resolved", _validate)

    schema = verbs.add_parser("schema", help="print the job spec's JSON Schema (for editors)")
    schema.add_argument(
        "--markdown", action="store_true", help="print the spec reference as Markdown instead"
    )
    schema.set_defaults(handler=_schema)

    data = verbs.add_parser("data", help="datasets: list, show one, diff two versions")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    _verb(actions, "list", "the project's dataset versions", _data_list)
    show = _verb(actions, "show", "one dataset version's accounting and checks", _data_show)
    show.add_argument("dataset_id", metavar="DATASET_ID", help="from `ftray data list`")
    show.add_argument(
        "--quarantine",
        nargs="?",
        const="",
        metavar="RULE",
        help="list every quarantined line (or RULE's) with its file, line and raw text",
    )
    diff = _verb(actions, "diff", "what changed from one dataset version to another", _data_diff)
    diff.add_argument("old", metavar="OLD", help="a dataset id")
    diff.add_argument("new", metavar="NEW", help="a later dataset id")

    models = verbs.add_parser("models", help="the model registry")
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    _verb(actions, "list", "list registered models", _models_list)
    _verb(actions, "show", "print one model card", _models_show).add_argument("model_id")
    promote = _verb(actions, "promote", "make a model the production model", _models_promote)
    promote.add_argument("model_id")
    promote.add_argument("--force", action="store_true", help="even if the gate rejected it")
    promote.add_argument("--reason", default="promoted by hand", help="recorded in the log")
    rollback = _verb(actions, "rollback", "restore the previous production model", _models_rollback)
    rollback.add_argument("--to", metavar="MODEL_ID", help="an earlier production model")
    rollback.add_argument("--reason", default="rolled back by hand", help="recorded in the log")
    _split_parsers(actions)

    export = _verb(verbs, "export", "write a model merged into one Hugging Face folder", _export)
    export.add_argument("--model", metavar="MODEL_ID", help="default: the production model")
    export.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    return parser


def _split_parsers(actions) -> None:
    """`ftray models canary|experiment|end-split|history`: traffic splits of `production`."""
    canary = _verb(
        actions, "canary", "send a share of production traffic to a candidate", _models_canary
    )
    canary.add_argument("model_id")
    canary.add_argument(
        "--percent", type=float, required=True, help="its share of production traffic, 0 < P < 100"
    )
    canary.add_argument("--reason", default="canary by hand", help="recorded in the log")
    experiment = _verb(
        actions, "experiment", "split production traffic between two models", _models_experiment
    )
    experiment.add_argument("a", metavar="A", help="a model id")
    experiment.add_argument("b", metavar="B", help="another model id")
    experiment.add_argument(
        "--split", type=float, default=50.0, help="B's share of production traffic (default 50)"
    )
    experiment.add_argument("--reason", default="experiment by hand", help="recorded in the log")
    end = _verb(actions, "end-split", "end the canary or experiment", _models_end_split)
    end.add_argument("--reason", default="ended by hand", help="recorded in the log")
    _verb(actions, "history", "every registry event, oldest first", _models_history)


def _verb(verbs, name: str, help_text: str, handler) -> argparse.ArgumentParser:
    """A sub-command that takes JOB and `--set` and runs `handler(args)`."""
    parser = verbs.add_parser(name, help=help_text)
    _job_args(parser)
    parser.set_defaults(handler=handler)
    return parser


def _submit_parsers(verbs) -> None:
    from ftray.submit import STAGES as SUBMIT_STAGES

    submit = verbs.add_parser(
        "submit",
        help="run a job on a Ray cluster through the Ray Jobs API (or as a KubeRay RayJob)",
        description="Upload the working directory and run `ftray STAGE JOB.yaml` on a cluster; "
        "streams its logs and exits with the job's result.",
    )
    _job_args(submit)
    submit.add_argument("--address", help="Ray dashboard URL, e.g. http://127.0.0.1:8265")
    submit.add_argument("--stage", choices=SUBMIT_STAGES, default="run", help="verb to run")
    submit.add_argument("--working-dir", default=".", help="folder uploaded as working_dir")
    submit.add_argument(
        "--exclude", action="append", default=[], metavar="PATTERN", help="also leave out"
    )
    submit.add_argument("--requirements", help="pip requirements file to install for the job")
    submit.add_argument("--no-follow", action="store_true", help="return once submitted")
    submit.add_argument("--k8s", action="store_true", help="create a KubeRay RayJob instead")
    submit.add_argument("--namespace", default="default", help="--k8s: Kubernetes namespace")
    submit.add_argument("--cluster", help="--k8s: run on this existing RayCluster")
    submit.add_argument("--image", help="--k8s: ftray image for an ephemeral cluster")
    submit.add_argument("--dry-run", action="store_true", help="--k8s: print the RayJob only")
    submit.set_defaults(handler=_submit)

    jobs = verbs.add_parser("jobs", help="jobs on a Ray cluster: list, status, logs, stop")
    jobs.add_argument("action", choices=("list", "status", "logs", "stop"))
    jobs.add_argument("job_id", nargs="?", help="submission id printed by `ftray submit`")
    jobs.add_argument("--address", help="Ray dashboard URL (default: $RAY_ADDRESS)")
    jobs.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    jobs.set_defaults(handler=_jobs)


def _submit(args) -> int:
    if args.k8s:
        from ftray.k8s import submit_rayjob

        return submit_rayjob(
            args.job,
            args.overrides,
            Progress(),
            stage=args.stage,
            namespace=args.namespace,
            cluster=args.cluster,
            image=args.image,
            dry_run=args.dry_run,
            follow=not args.no_follow,
        )
    from ftray.submit import build_submission, jobs_address, submit

    address = jobs_address(args.address)
    submission = build_submission(
        args.job,
        args.overrides,
        stage=args.stage,
        working_dir=args.working_dir,
        excludes=args.exclude,
        requirements=args.requirements,
    )
    return submit(submission, address, Progress(), follow=not args.no_follow)


def _jobs(args) -> int:
    from ftray.submit import job_command, jobs_address

    return job_command(args.action, jobs_address(args.address), args.job_id, args.follow)


def _job_args(parser: argparse.ArgumentParser, address: bool = False) -> None:
    """JOB and `--set`; with `address`, `--address` of the Ray cluster the verb runs on."""
    parser.add_argument("job", help="path of the job spec YAML")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value, e.g. --set train.lr=1e-4 (repeatable)",
    )
    if address:
        parser.add_argument(
            "--address", help="Ray cluster address (default: $RAY_ADDRESS, else local)"
        )


# Verbs that read the job's input files (model folder, data sources, word list): their spec is
# checked for those files up front. The others (serve, models, review, monitor, data, …) work on
# the store and must run where the data is absent, e.g. a laptop looking at a cluster's registry.
_READS_INPUTS = {"validate", "prepare", "assess", "train", "sweep", "eval", "run", "retrain"}


def _load(args):
    from ftray.specload import load_spec

    return load_spec(args.job, args.overrides, check_files=args.verb in _READS_INPUTS)


def _run_stage(args) -> int:
    from ftray.pipeline import Pipeline
    from ftray.runtime import ray_session

    spec = _load(args)
    progress = Progress()
    if getattr(args, "estimates_only", False):
        from ftray.assess import memory_estimates
        from ftray.store import Store

        for line in memory_estimates(spec, Store(spec.storage, spec.project)):
            progress.note(line)
        return exits.OK
    if args.verb in ("serve", "run"):
        from ftray.serve.vllm_engine import check_engine

        check_engine(spec.serve.engine)  # before Ray starts, or a whole run trains first
    with ray_session(spec.ray, args.address):
        if args.verb == "serve":
            from ftray.serve.stage import serve_registry

            serve_registry(spec, progress, args.model, keep_serving=args.keep_serving)
            return exits.OK
        return _STAGE_VERBS[args.verb](Pipeline(spec, progress), args)


def _eval(pipeline: Pipeline, args) -> int:
    card = pipeline.decide()
    code = exits.gate_exit(card["gate"])
    _render_stop(pipeline.progress, card, code)
    return code


def _run(pipeline: Pipeline, args) -> int:
    progress = pipeline.progress
    assessment = None
    if pipeline.spec.assess.enabled:
        assessment = pipeline.assessment
        code = exits.assess_exit(assessment.decision, force=args.force)
        if code != exits.OK:
            _render_assess_stop(progress, assessment.decision)
            return code
    card = pipeline.decide()
    code = exits.gate_exit(card["gate"])
    if code == exits.OK:
        pipeline.serve(keep_serving=args.keep_serving)
    _render_stop(progress, card, code)
    if code != exits.AWAITING_REVIEW:
        _render_summary(pipeline, assessment, card)
    return code


def _built(artifact: object) -> int:
    """Exit code of the artifact verbs: asking for the artifact ran its stage (and the stages
    before it, or reused them), so it exists."""
    return exits.OK


_STAGE_VERBS: dict[str, Callable[[Pipeline, argparse.Namespace], int]] = {
    "prepare": lambda pipeline, args: _built(pipeline.dataset),
    "assess": lambda pipeline, args: _built(pipeline.assessment),
    "train": lambda pipeline, args: _built(pipeline.run),
    "sweep": lambda pipeline, args: _built(pipeline.sweep),
    "eval": _eval,
    "run": _run,
}


def _render_assess_stop(progress: Progress, decision: str) -> None:
    from ftray.artifacts import DONT

    hint = "`ftray run --force` trains anyway." if decision == DONT else ""
    progress.note(f"stopped: assess says {decision!r}. {hint}")


def _render_stop(progress: Progress, card: dict, code: int) -> None:
    """Why `ftray eval|run` stopped short of production, when it did."""
    if code == exits.AWAITING_REVIEW:
        progress.note(
            f"stopped: {card['model_id']} awaits human review; rate with "
            "`ftray review JOB.yaml`, then `ftray review decide JOB.yaml`"
        )
    elif code == exits.GATE_REJECTED:
        progress.note(
            f"stopped: the gate rejected {card['model_id']}; production "
            "is unchanged (`ftray models list` shows it)."
        )


def _render_summary(pipeline: Pipeline, assessment: AssessRef | None, card: dict) -> None:
    """`ftray run`'s closing summary: one line per stage."""
    progress = pipeline.progress
    m = pipeline.evaluation.metrics
    counts = pipeline.dataset.manifest["counts"]
    run = pipeline.trained.manifest
    lines = [
        f"records kept {counts['train'] + counts['validation'] + counts['eval']}, "
        f"quarantined {counts['quarantine']}",
    ]
    if assessment is not None:
        verdict = assessment.manifest
        base = verdict["baseline"]
        lines.append(
            f"assess: {verdict['decision']} (prompted base model {base['metric']} "
            f"{_value(base['score'])}; recommended method {verdict['recommended_method']})"
            if base is not None
            else f"assess: {verdict['decision']}"
        )
    lines += [
        f"training loss {run['loss_first']} → {run['loss_last']}",
        f"held-out exact match: incumbent {m['incumbent']['exact_match']:.1%}, "
        f"candidate {m['candidate']['exact_match']:.1%} ({m['examples']} examples; incumbent: "
        f"{pipeline.evaluation.manifest['incumbent']['label']})",
        f"{m['primary_metric']}: incumbent {_value(m['incumbent'][m['primary_metric']])}, "
        f"candidate {_value(m['candidate'][m['primary_metric']])}; gate "
        f"{'passed' if card['gate']['passed'] else 'failed'}",
    ]
    if g := m.get("general_ppl"):
        lines.append(
            f"general_ppl (forgetting probe): base {g['base']:.4g}, candidate "
            f"{g['candidate']:.4g} (ratio {g['ratio']:.3f})"
        )
    lines += [
        f"model id {card['model_id']} (stage: {card['stage']})",
        "stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in progress.timings.items()),
    ]
    progress.console.print("[bold]summary[/]")
    for line in lines:
        progress.note(line)


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _validate(args) -> int:
    spec = _load(args)
    print(json.dumps(spec.model_dump(mode="json"), indent=2))
    print(f"{args.job}: valid", file=sys.stderr)
    return 0


def _schema(args) -> int:
    from ftray.spec import JobSpec
    from ftray.specdoc import spec_reference

    if args.markdown:
        print(spec_reference(), end="")
    else:
        print(json.dumps(JobSpec.model_json_schema(), indent=2))
    return 0


def _data_list(args) -> int:
    from ftray.data import inspect

    for manifest in inspect.list_datasets(_store(args)):
        counts = manifest["counts"]
        print(
            f"{manifest['dataset_id']}  {manifest['created_at']}  train {counts['train']}  "
            f"validation {counts.get('validation', 0)}  eval {counts['eval']}  "
            f"quarantined {counts['quarantine']}"
        )
    return exits.OK


def _data_show(args) -> int:
    from ftray.data import inspect

    store = _store(args)
    if args.quarantine is None:
        print(inspect.format_show(inspect.show(store, args.dataset_id)))
    else:
        rows = inspect.quarantined(store, args.dataset_id, args.quarantine or None)
        print(inspect.format_quarantined(rows))
    return exits.OK


def _data_diff(args) -> int:
    from ftray.data import inspect

    print(json.dumps(inspect.diff(_store(args), args.old, args.new), indent=2))
    return exits.OK


def _store(args):
    from ftray.store import Store

    spec = _load(args)
    return Store(spec.storage, spec.project)


def _models_list(args) -> int:
    from ftray.registry import list_models
    from ftray.routing import describe, split_of

    store = _store(args)
    cards = list_models(store)
    if not cards:
        print("no registered models yet; `ftray run JOB.yaml` registers one")
    split = split_of(store)
    if split:
        print(describe(split))
    for card in cards:
        metrics = card["metrics"]
        primary = metrics.get("primary_metric", "exact_match")
        value = metrics.get("candidate", {}).get(primary)
        print(
            f"{card['model_id']}  {card['stage']:<10}  {primary}={value}  "
            f"gate={_gate_word(card['gate'])}  run={card['run_id']}  "
            f"{card['created_at']}"
        )
    return 0


def _gate_word(gate: dict) -> str:
    return "passed" if gate["passed"] else "pending" if gate.get("pending") else "failed"


def _models_show(args) -> int:
    from ftray.registry import get_model, lineage
    from ftray.routing import split_of

    store = _store(args)
    card = get_model(store, args.model_id)
    split = split_of(store)
    in_split = split if split and args.model_id in (split["model_id"], split["control"]) else None
    print(
        json.dumps({**card, "lineage": lineage(store, args.model_id), "split": in_split}, indent=2)
    )
    return 0


def _models_canary(args) -> int:
    from ftray.routing import canary, describe

    print(describe(canary(_store(args), args.model_id, percent=args.percent, reason=args.reason)))
    return 0


def _models_experiment(args) -> int:
    from ftray.routing import describe, experiment

    split = experiment(_store(args), args.a, args.b, percent=args.split, reason=args.reason)
    print(describe(split))
    return 0


def _models_end_split(args) -> int:
    from ftray.registry import production
    from ftray.routing import end_split

    store = _store(args)
    event = end_split(store, reason=args.reason)
    print(
        f"ended the {event['ended_split']['action']} of {event['model_id']}; "
        f"production: {production(store) or 'none'}"
    )
    return 0


def _models_history(args) -> int:
    from ftray.registry import history

    for event in history(_store(args)):
        share = f" {event['percent']:g}%" if "percent" in event else ""
        against = event.get("control") or event.get("previous")
        print(
            f"{event['at']}  {event['action']:<10} {event['model_id']}{share}"
            f"{f' (vs {against})' if against else ''}  by {event['by']}: {event['reason']}"
        )
    return 0


def _models_promote(args) -> int:
    from ftray.registry import promote

    event = promote(_store(args), args.model_id, reason=args.reason, force=args.force)
    print(f"production: {event['model_id']} (was {event['previous'] or 'none'})")
    return 0


def _export(args) -> int:
    from ftray.export import export_model
    from ftray.store import Store

    spec = _load(args)
    folder = export_model(spec, Store(spec.storage, spec.project), args.model, args.out)
    print(f"exported to {folder}")
    return exits.OK


def _models_rollback(args) -> int:
    from ftray.registry import production, rollback

    store = _store(args)
    event = rollback(store, to=args.to, reason=args.reason)
    if event["action"] == "end_split":
        print(
            f"rolled back the {event['ended_split']['action']} of {event['model_id']}; "
            f"production: {production(store) or 'none'}"
        )
    else:
        print(f"production: {event['model_id']} (rolled back from {event['previous']})")
    return 0


def _version() -> str:
    from ftray import __version__

    return f"ftray {__version__}"


if __name__ == "__main__":
    sys.exit(main())
