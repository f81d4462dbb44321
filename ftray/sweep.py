"""The sweep stage: Ray Tune (ASHA or FIFO) over training trials, each a full Ray Train run.

Contract. In: a `DatasetRef` and the job spec (its sweep section and what each trial
changes). Out: a `SweepRef` to `sweeps/<sweep-id>/`: the Tune experiment (`tune/`), one run
folder per trial (`trials/<trial-id>/<run-id>/`, each a train stage's artifact), the manifest
with the leaderboard and the winner, whose `RunRef` is `SweepRef.winner`. Side effects: one
W&B run per trial, grouped by the sweep id, and a `sweep` run there holding the leaderboard.

A trial's hyperparameters are written into the job spec, which is validated like any other;
the trial trains into `sweeps/<sweep-id>/trials/<trial-id>/<run-id>/` and reports every
evaluation to Tune through Ray Train's `TuneReportCallback`: the validation loss and, with
`sweep.metric: task` (the default), the job's primary metric on a fixed validation sample
(`ftray.train.probe`), so ASHA stops trials that trail on the task's metric and the winner is
the best on it. The test (eval) split is never read. Running the same sweep again resumes the
Tune experiment (finished trials stay finished; an interrupted trial resumes its run from its
checkpoint); a finished sweep is reused.
"""

from __future__ import annotations

import math
import tempfile

from ftray.artifacts import DatasetRef, RunRef, SweepRef, reuse
from ftray.errors import UserError
from ftray.evaluate.score import Task
from ftray.progress import Progress
from ftray.spec import JobSpec, SweepParam, SweepSpec, TrainSpec
from ftray.store import Store, content_id
from ftray.train.ray_train import Trial, planned_steps, train
from ftray.train.tracking import log_leaderboard, wandb_settings
from ftray.train.warm import pin_parent

SWEEP_VERSION = 2  # 2: trials ranked and pruned on the task metric, on the validation split
# What a trial reports to Tune for each `sweep.metric`.
REPORTED = {"task": "task_metric", "eval_loss": "eval_loss"}


def with_params(spec: JobSpec, params: dict) -> JobSpec:
    """`spec` with each 'train.a.b' path set to its value, validated again."""
    raw = spec.model_dump(mode="json")
    for path, value in params.items():
        node = raw
        *parents, leaf = path.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    raw["sweep"] = None
    return JobSpec.model_validate(raw)


def sweep(spec: JobSpec, dataset: DatasetRef, store: Store, progress: Progress) -> SweepRef:
    """Run (or resume, or reuse) the job's sweep; return the winner and the leaderboard."""
    # one parent for every trial, and part of the sweep's id (train.init_from: production)
    spec = spec.model_copy(update={"train": pin_parent(spec.train, spec.model, store)})
    assert spec.sweep is not None
    probe = _probe(spec)
    sweep_id = content_id(
        "sweep",
        dataset.id,
        spec.model.model_dump(mode="json"),
        spec.train.model_dump(mode="json"),
        spec.sweep.model_dump(mode="json"),
        probe or {},
        SWEEP_VERSION,
    )
    uri = store.uri("sweeps", sweep_id)
    if (manifest := reuse(store, "sweeps", sweep_id)) is not None:
        return SweepRef(sweep_id, uri, manifest, True, _winner(store, manifest))

    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from ftray import slots

    rules = spec.sweep
    evaluations = evaluations_per_trial(spec.train, dataset.manifest["counts"]["train"])
    grace, factor = asha_rungs(rules, evaluations)
    slots_name, slots_actor = slots.start(sweep_id, rules.max_concurrent)
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            job=spec.model_dump(mode="json"),
            dataset=dataset,
            sweep_id=sweep_id,
            probe=probe,
            slots=slots_name,
        ),
        {"CPU": 0.01},  # the trial only drives Ray Train; its workers hold the CPUs
    )
    path = store.uri("sweeps", sweep_id, "tune")
    if tune.Tuner.can_restore(path):
        progress.note(f"resuming sweep {sweep_id}")
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
        slots.keep_releasing(tuner, slots_name)
    else:
        rungs = f" (grace {grace}, reduction {factor})" if rules.scheduler == "asha" else ""
        progress.note(
            f"{rules.num_samples} sample(s) over {', '.join(rules.parameters)}; "
            f"{rules.scheduler}{rungs} on {metric_name(spec)} ({rules.resolved_mode}), "
            f"{rules.max_concurrent} at once"
        )
        tuner = tune.Tuner(
            trainable,
            param_space={path: _domain(p) for path, p in rules.parameters.items()},
            tune_config=tune.TuneConfig(
                metric=REPORTED[rules.metric],
                mode=rules.resolved_mode,
                num_samples=rules.num_samples,
                # Tune's own generator, seeded (the same seed samples the same trials); it
                # takes the concurrency limit itself (Tune ignores max_concurrent_trials
                # beside a given generator)
                search_alg=BasicVariantGenerator(
                    max_concurrent=rules.max_concurrent, random_state=rules.seed
                ),
                scheduler=_scheduler(rules.scheduler, grace, factor, evaluations),
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=uri,
                verbose=0,
                callbacks=[slots.ReleaseSlots(slots_name)],  # kept for a resumed sweep
            ),
        )
    try:
        grid = tuner.fit()
    finally:
        ray.kill(slots_actor)
    results = [grid[i] for i in range(len(grid))]
    leaderboard = rank(_leaderboard(results, rules), rules.resolved_mode)
    finished = [row for row in leaderboard if row["run_id"]]
    if not finished:
        errors = [str(r.error).splitlines()[0] for r in results if r.error][:3]
        raise UserError(f"sweep {sweep_id}: no trial finished. First errors: {errors}")
    manifest = store.finish(
        {
            "sweep_id": sweep_id,
            "dataset_id": dataset.id,
            "sweep": rules.model_dump(mode="json"),
            "metric": metric_name(spec),
            "leaderboard": leaderboard,
            "winner": finished[0],
        },
        "sweeps",
        sweep_id,
    )
    if spec.wandb is not None:
        folder = store.path("sweeps", sweep_id) if store.is_local else tempfile.gettempdir()
        log_leaderboard(
            wandb_settings(spec.wandb, spec.project, sweep_id, folder, group=sweep_id), manifest
        )
    return SweepRef(sweep_id, uri, manifest, False, _winner(store, manifest))


def metric_name(spec: JobSpec) -> str:
    """What the sweep ranks on, in words: 'macro_f1 on 64 validation examples'."""
    assert spec.sweep is not None
    if spec.sweep.metric == "eval_loss":
        return "validation loss"
    return (
        f"{Task.of(spec.eval, spec.data).primary} on {spec.sweep.task_sample} validation examples"
    )


def print_leaderboard(leaderboard: list[dict], metric: str, progress: Progress) -> None:
    """One line per trial, best first: its ranking metric, validation loss, steps, status
    and values."""
    progress.note(f"ranked by {metric}")
    for rank_, row in enumerate(leaderboard, 1):
        params = ", ".join(
            f"{key.removeprefix('train.')}={_short(value)}" for key, value in row["params"].items()
        )
        value = "-" if row["metric"] is None else f"{row['metric']:.4f}"
        loss = "" if row.get("eval_loss") is None else f"  validation loss {row['eval_loss']:.4f}"
        progress.note(
            f"{rank_}. {row['trial_id']}  {value}{loss}  steps {row['steps']}  "
            f"{row['status']}  {params}"
        )


def rank(rows: list[dict], mode: str) -> list[dict]:
    """Finished trials first, best `metric` first (a trial with no value last among them),
    ties to the lower validation loss."""
    sign = 1 if mode == "min" else -1

    def key(row: dict):
        missing, loss = row["metric"] is None, row.get("eval_loss")
        return (
            row["run_id"] is None,
            missing,
            0 if missing else sign * row["metric"],
            float("inf") if loss is None else loss,
        )

    return sorted(rows, key=key)


def _probe(spec: JobSpec) -> dict | None:
    """The task probe every trial runs (None when the sweep ranks on validation loss)."""
    assert spec.sweep is not None
    if spec.sweep.metric != "task":
        return None
    return {
        "task": Task.of(spec.eval, spec.data).__dict__,
        "sample": spec.sweep.task_sample,
        "max_new_tokens": spec.eval.max_new_tokens,
    }


def _trial(
    params: dict, job: dict, dataset: DatasetRef, sweep_id: str, probe: dict | None, slots: str
):
    from ray import tune

    from ftray.slots import acquire, release

    trial_id = tune.get_context().get_trial_id()
    acquire(slots, trial_id)
    try:
        _train_trial(params, job, dataset, sweep_id, probe, trial_id)
    finally:
        release(slots, trial_id)


def _train_trial(params, job, dataset, sweep_id, probe, trial_id: str) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    spec = with_params(JobSpec.model_validate(job), params)
    trial = Trial(
        sweep_id=sweep_id,
        trial_id=trial_id,
        params=params,
        callbacks=(TuneReportCallback(),),
        probe=probe,
    )
    store = Store(spec.storage, spec.project)
    ref = train(
        spec.train,
        spec.model,
        dataset,
        store,
        Progress(),
        wandb=spec.wandb,
        project=spec.project,
        trial=trial,
    )
    metrics = ref.manifest["metrics"]
    tune.report(
        {  # the run's result is its best checkpoint
            "eval_loss": metrics["best_eval_loss"],
            "task_metric": metrics["best_task_metric"] or 0.0,
            "step": metrics["step"],
            "run_id": ref.id,
            "run_folder": [*trial.folder, ref.id],
            "stopped_early": ref.manifest["stopped_early"],
        }
    )


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _domain(param: SweepParam):
    from ray import tune

    if param.type in ("grid", "choice"):
        assert param.values  # SweepParam requires them
        return (tune.grid_search if param.type == "grid" else tune.choice)(param.values)
    assert param.low is not None and param.high is not None  # SweepParam requires them
    if param.type == "randint":
        return tune.randint(int(param.low), int(param.high))
    return getattr(tune, param.type)(param.low, param.high)


def evaluations_per_trial(train: TrainSpec, n_train: int) -> int:
    """Evaluations a trial of `train` runs on `n_train` examples (every `eval_every` steps, or
    each epoch, and at the end): the rungs ASHA can stop a trial at."""
    steps_per_epoch, total = planned_steps(train, n_train)
    return math.ceil(total / (train.eval_every or max(1, steps_per_epoch)))


def trial_count(rules: SweepSpec) -> int:
    """Trials the sweep runs: num_samples times every grid's size."""
    grids = [len(p.values or ()) for p in rules.parameters.values() if p.type == "grid"]
    return rules.num_samples * math.prod(grids)


def asha_rungs(rules: SweepSpec, evaluations: int) -> tuple[int, int]:
    """ASHA's (grace period, reduction factor): the spec's, or from the trial budget.

    Derived so that two rungs cut and still leave a trial to finish: the largest factor of
    4, 3, 2 whose square fits in the number of trials (else 2), and a grace period of
    evaluations // factor² (at least 1), which puts the rungs at grace and grace·factor (and
    grace·factor² when the trials evaluate often enough), below the last evaluation.
    """
    trials = trial_count(rules)
    factor = rules.reduction_factor or next((f for f in (4, 3) if f**2 <= trials), 2)
    grace = rules.grace_period or max(1, evaluations // factor**2)
    return grace, factor


def _scheduler(kind: str, grace: int, factor: int, evaluations: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if kind == "fifo":
        return FIFOScheduler()
    # No rung at the last evaluation: a trial stopped there has spent its steps, and would
    # lose the report that makes it a finished run (it follows the last evaluation).
    return ASHAScheduler(
        time_attr="training_iteration",
        grace_period=grace,
        reduction_factor=factor,
        max_t=max(grace, evaluations - 1),
        stop_last_trials=False,
    )


def _leaderboard(results, rules) -> list[dict]:
    """One row per trial: its best ranking metric, best validation loss and task metric
    over every evaluation it reported, and how it ended."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        finished = bool(metrics.get("run_id"))
        if result.error:
            status = "error"
        elif finished:
            status = "early-stopped (patience)" if metrics.get("stopped_early") else "finished"
        else:
            status = "stopped by ASHA"
        history = result.metrics_dataframe
        best = {
            name: _best(history, reported, "min" if name == "eval_loss" else "max")
            for name, reported in REPORTED.items()
        }
        rows.append(
            {
                "trial_id": metrics.get("trial_id") or result.path.rstrip("/").rsplit("/", 1)[-1],
                "params": dict(result.config or {}),
                "metric": best[rules.metric],
                "eval_loss": best["eval_loss"],
                "task_metric": best["task"] if rules.metric == "task" else None,
                "steps": metrics.get("step"),
                "evaluations": metrics.get("training_iteration"),
                "status": status,
                "run_id": metrics.get("run_id") if finished else None,
                "run_folder": metrics.get("run_folder") if finished else None,
            }
        )
    return rows


def _best(history, column: str, mode: str) -> float | None:
    if history is None or column not in history or not history[column].notna().any():
        return None
    values = history[column].dropna()
    return round(float(values.min() if mode == "min" else values.max()), 5)


def _winner(store: Store, manifest: dict) -> RunRef:
    folder = manifest["winner"]["run_folder"]
    return RunRef(folder[-1], store.uri(*folder), store.manifest(*folder), True)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
