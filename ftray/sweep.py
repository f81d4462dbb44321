"""The sweep stage: Ray Tune (ASHA or FIFO) over training trials, each a full Ray Train run.

Contract. In: a `DatasetRef` and the job spec (its sweep section and what each trial
changes). Out: a `SweepRef` to `sweeps/<sweep-id>/`: the Tune experiment (`tune/`), one run
folder per trial (`trials/<trial-id>/<run-id>/`, each a train stage's artifact), the manifest
with the leaderboard and the winner, whose `RunRef` is `SweepRef.winner`. Side effects: one
W&B run per trial, grouped by the sweep id.

A trial's hyperparameters are written into the job spec, which is validated like any other;
the trial trains into `sweeps/<sweep-id>/trials/<trial-id>/<run-id>/` with its own W&B run
in the group `<sweep-id>`, and reports every evaluation to Tune through Ray Train's
`TuneReportCallback`, so ASHA can stop it at a rung. Running the same sweep again resumes
the Tune experiment (finished trials stay finished; an interrupted trial resumes its run
from its checkpoint); a finished sweep is reused.
"""

from __future__ import annotations

import os

from ftray.artifacts import DatasetRef, RunRef, SweepRef, reuse
from ftray.errors import UserError
from ftray.progress import Progress
from ftray.spec import JobSpec, SweepParam
from ftray.store import Store, content_id
from ftray.train.ray_train import train

SWEEP_VERSION = 1


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
    assert spec.sweep is not None
    sweep_id = content_id(
        "sweep",
        dataset.dataset_id,
        spec.model.model_dump(mode="json"),
        spec.train.model_dump(mode="json"),
        spec.sweep.model_dump(mode="json"),
        SWEEP_VERSION,
    )
    if (manifest := reuse(store, "sweeps", sweep_id)) is not None:
        return SweepRef(
            sweep_id, store.uri("sweeps", sweep_id), manifest, True, _winner(store, manifest)
        )

    from ray import tune

    rules = spec.sweep
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            job=spec.model_dump(mode="json"),
            dataset=dataset,
            sweep_id=sweep_id,
            fault_step=os.environ.get("FTRAY_INJECT_FAULT"),  # trials don't see our env
        ),
        {"CPU": 0.01},  # the trial only drives Ray Train; its workers hold the CPUs
    )
    path = store.uri("sweeps", sweep_id, "tune")
    if tune.Tuner.can_restore(path):
        progress.note(f"resuming sweep {sweep_id}")
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
    else:
        progress.note(
            f"{rules.num_samples} sample(s) over {', '.join(rules.parameters)}; "
            f"{rules.scheduler} on {rules.metric} ({rules.mode}), {rules.max_concurrent} at once"
        )
        tuner = tune.Tuner(
            trainable,
            param_space={path: _domain(p) for path, p in rules.parameters.items()},
            tune_config=tune.TuneConfig(
                metric=rules.metric,
                mode=rules.mode,
                num_samples=rules.num_samples,
                max_concurrent_trials=rules.max_concurrent,
                scheduler=_scheduler(rules),
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name="tune", storage_path=store.uri("sweeps", sweep_id), verbose=0
            ),
        )
    results = tuner.fit()
    leaderboard = _leaderboard(results, rules)
    finished = [row for row in leaderboard if row["run_id"]]
    if not finished:
        errors = [str(r.error).splitlines()[0] for r in results if r.error][:3]
        raise UserError(f"sweep {sweep_id}: no trial finished. First errors: {errors}")
    manifest = store.finish(
        {
            "sweep_id": sweep_id,
            "dataset_id": dataset.dataset_id,
            "sweep": rules.model_dump(mode="json"),
            "leaderboard": leaderboard,
            "winner": finished[0],
        },
        "sweeps",
        sweep_id,
    )
    return SweepRef(
        sweep_id, store.uri("sweeps", sweep_id), manifest, False, _winner(store, manifest)
    )


def print_leaderboard(leaderboard: list[dict], metric: str, progress: Progress) -> None:
    for rank, row in enumerate(leaderboard, 1):
        params = ", ".join(
            f"{key.removeprefix('train.')}={_short(value)}" for key, value in row["params"].items()
        )
        value = "-" if row["metric"] is None else f"{row['metric']:.4f}"
        progress.note(
            f"{rank}. {row['trial_id']}  {metric} {value}  steps {row['steps']}  "
            f"{row['status']}  {params}"
        )


def _trial(
    params: dict, job: dict, dataset: DatasetRef, sweep_id: str, fault_step: str | None
) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    spec = with_params(JobSpec.model_validate(job), params)
    trial_id = tune.get_context().get_trial_id()
    store = Store(spec.storage, spec.project)
    ref = train(
        spec.train,
        spec.model,
        dataset,
        store,
        Progress(),
        wandb=spec.wandb,
        project=spec.project,
        folder=("sweeps", sweep_id, "trials", trial_id),
        trial={"sweep_id": sweep_id, "trial_id": trial_id, "params": params},
        callbacks=[TuneReportCallback()],
        fault_step=fault_step,
    )
    metrics = ref.manifest["metrics"]
    tune.report(
        {
            "eval_loss": metrics["best_eval_loss"],  # the run's result is its best checkpoint
            "step": metrics["step"],
            "run_id": ref.run_id,
            "run_folder": ["sweeps", sweep_id, "trials", trial_id, ref.run_id],
            "stopped_early": ref.manifest["stopped_early"],
        }
    )


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _domain(param: SweepParam):
    from ray import tune

    if param.type == "grid":
        return tune.grid_search(param.values)
    if param.type == "choice":
        return tune.choice(param.values)
    if param.type == "randint":
        return tune.randint(int(param.low), int(param.high))
    return getattr(tune, param.type)(param.low, param.high)


def _scheduler(rules):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if rules.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        grace_period=rules.grace_period,
        reduction_factor=rules.reduction_factor,
    )


def _leaderboard(results, rules) -> list[dict]:
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
        values = [] if history is None or rules.metric not in history else history[rules.metric]
        best = None
        if len(values):
            best = float(values.min() if rules.mode == "min" else values.max())
        rows.append(
            {
                "trial_id": metrics.get("trial_id") or result.path.rstrip("/").rsplit("/", 1)[-1],
                "params": dict(result.config or {}),
                "metric": round(best, 5) if best is not None else None,
                "steps": metrics.get("step"),
                "evaluations": metrics.get("training_iteration"),
                "status": status,
                "run_id": metrics.get("run_id") if finished else None,
                "run_folder": metrics.get("run_folder") if finished else None,
            }
        )
    sign = 1 if rules.mode == "min" else -1
    rows.sort(key=lambda r: (r["run_id"] is None, sign * (r["metric"] or 0)))
    return rows


def _winner(store: Store, manifest: dict) -> RunRef:
    folder = manifest["winner"]["run_folder"]
    return RunRef(folder[-1], store.uri(*folder), store.manifest(*folder), True)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
