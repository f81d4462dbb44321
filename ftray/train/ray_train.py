"""The train stage: `train_loop` on Ray Train workers, data streamed as Ray Data shards.

Contract. In: a `DatasetRef` (its train and validation splits; never its eval split, the
test set) and the job's model, train and wandb sections (a sweep adds a `Trial`). Out: a
`RunRef` to `runs/<run-id>/` (or a sweep's trial folder): Ray Train's checkpoints,
`config.json`, the weights of the checkpoint chosen on the validation split (an adapter or a
full model, `weights_uri`) and the manifest with the loss, validation and task-probe
histories. Side effects: a W&B run (offline without a key; its files in the run folder on
local storage); an unfinished run with the same id is resumed, not restarted.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from ftray.artifacts import DatasetRef, RunRef, reuse
from ftray.errors import UserError
from ftray.models import resolve_model
from ftray.progress import Progress
from ftray.spec import ModelSpec, TrainSpec, WandbSpec
from ftray.store import Store, content_id
from ftray.train.config import FaultConfig, LoopConfig, ProbeConfig
from ftray.train.dpo import PAIR_COLUMNS
from ftray.train.loop import train_loop
from ftray.train.methods import consolidate
from ftray.train.tracking import wandb_settings
from ftray.train.warm import parent_weights, pin_parent

TRAIN_VERSION = 3  # 3: checkpoints chosen on the validation split
_VALIDATION_CACHE_BYTES = 256 * 2**20  # see _validation_bytes


@dataclass(frozen=True)
class Trial:
    """What a sweep adds to a training run: where it goes, Tune's report callback, and the
    task probe (`probe`: task fields, `sample` size and `max_new_tokens`; None: rank on
    validation loss)."""

    sweep_id: str
    trial_id: str
    params: dict
    callbacks: tuple = ()
    probe: dict | None = None

    @property
    def folder(self) -> tuple[str, ...]:
        return ("sweeps", self.sweep_id, "trials", self.trial_id)

    def record(self) -> dict:
        """Part of the run id, the W&B group and config, and the run's manifest."""
        return {"sweep_id": self.sweep_id, "trial_id": self.trial_id, "params": self.params}


def train(
    spec: TrainSpec,
    model: ModelSpec,
    dataset: DatasetRef,
    store: Store,
    progress: Progress,
    wandb: WandbSpec | None = None,
    project: str = "ftray",
    *,
    trial: Trial | None = None,
) -> RunRef:
    """Train `spec.method` on the dataset's train split, into `runs/<run-id>/` (a sweep
    trial: into its trial folder); checkpoints are chosen on the validation split.

    A finished identical run is reused; an unfinished one (a crash, a stopped job) resumes
    from its latest checkpoint: Ray Train picks the run up by its name and storage path.
    """
    # a warm start's parent, resolved here (not in the workers): part of the run id
    spec = pin_parent(spec, model, store)
    folder = trial.folder if trial else ("runs",)
    record = trial.record() if trial else None
    run_id = run_identity(spec, model, dataset.id, trial)
    if (manifest := reuse(store, *folder, run_id)) is not None:
        return RunRef(run_id, store.uri(*folder, run_id), manifest, True)

    config = _loop_config(spec, model, dataset, store, (*folder, run_id), wandb, project, trial)
    store.write_json(config.model_dump(mode="json"), *folder, run_id, "config.json")
    n_train, workers = dataset.manifest["counts"]["train"], spec.scaling.num_workers
    if spec.init_from:
        progress.note(f"warm start from {spec.init_from}")
    progress.note(
        f"{spec.method} on {workers} worker(s): {n_train} examples, {config.total_steps} steps "
        f"of {spec.batch_size} ({spec.per_worker_batch} per worker × {spec.accumulation} "
        f"accumulated); checkpoints chosen on {dataset.manifest['counts']['validation']} "
        "validation examples"
    )
    result = _trainer(config, dataset, store, folder, trial).fit()
    return _finish(result, config, dataset, store, (*folder, run_id), record)


def run_identity(
    spec: TrainSpec, model: ModelSpec, dataset_id: str, trial: Trial | None = None
) -> str:
    """The run's id: the hash of what decides its weights (with a pinned `init_from`, the
    parent's model id: `ftray.train.warm.pin_parent`)."""
    return content_id(
        "run",
        dataset_id,
        model.model_dump(mode="json"),
        spec.model_dump(mode="json"),
        TRAIN_VERSION,
        trial.record() if trial else {},
        (trial.probe if trial else None) or {},
    )


def planned_steps(spec: TrainSpec, n_train: int) -> tuple[int, int]:
    """(optimizer steps per epoch, steps the run takes) on `n_train` training examples."""
    workers = spec.scaling.num_workers
    steps_per_epoch = (n_train // workers) // (spec.batch_size // workers)
    epochs = steps_per_epoch * spec.epochs
    return steps_per_epoch, min(spec.max_steps or epochs, epochs)


def _loop_config(spec, model, dataset, store, run, wandb, project, trial) -> LoopConfig:
    counts = dataset.manifest["counts"]
    n_train = counts["train"]
    steps_per_epoch, total_steps = planned_steps(spec, n_train)
    if steps_per_epoch < 1:
        raise UserError(
            f"train.batch_size: {spec.batch_size} is more than the {n_train} training examples "
            f"of dataset {dataset.id}; lower train.batch_size or add data."
        )
    if not counts.get("validation"):
        raise UserError(
            f"dataset {dataset.id} has no validation examples to choose checkpoints "
            "on; raise data.validation_fraction, add data, or give data.validation_sources."
        )
    model_dir = resolve_model(model, store)
    return LoopConfig(
        run_id=run[-1],
        train=spec,
        model_dir=model_dir,
        chat_template=model.chat_template,
        attention=model.attention,
        init_weights=parent_weights(spec, store),
        dtype=model.dtype,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        pack_length=dataset.manifest["spec"]["max_seq_len"],
        wandb=_wandb(wandb, project, store, run, trial),
        trial=trial.record() if trial else None,
        probe=_probe(trial.probe, dataset) if trial and trial.probe else None,
        fault=_fault_injection(store, run, spec.scaling.num_workers),
        cache_validation=_validation_bytes(dataset, spec) <= _VALIDATION_CACHE_BYTES,
    )


def _validation_bytes(dataset: DatasetRef, spec: TrainSpec) -> int:
    """An upper bound on the validation split's token arrays in memory, across workers: every
    row at `max_seq_len`, 8 bytes a token, per column. Decided on the driver, so every worker
    caches or none does (a worker that re-reads its shard alone would wait for the others)."""
    columns = len(PAIR_COLUMNS) if spec.method == "dpo" else 2
    rows = dataset.manifest["counts"]["validation"]
    return rows * dataset.manifest["spec"]["max_seq_len"] * columns * 8


def _probe(settings: dict, dataset: DatasetRef) -> ProbeConfig:
    """The probe's sample: the first `sample` validation examples (the same for every
    trial of a sweep); for a dataset prepared with data.retrieval, each asked with its chunks
    as evaluation and serving ask it."""
    import fsspec
    import pyarrow.dataset as pds

    from ftray.evaluate.rag_metrics import asked_with_context

    retrieval = bool(dataset.manifest.get("retrieval"))
    fs, path = fsspec.core.url_to_fs(f"{dataset.uri}/validation")
    table = pds.dataset(path, filesystem=fs, format="parquet").head(
        settings["sample"],
        columns=["prompt", "messages", "completion", *(["context"] if retrieval else [])],
    )
    examples = table.to_pylist()
    if retrieval:
        for row in examples:
            row["messages"] = asked_with_context(row["messages"], row.pop("context"))
    return ProbeConfig(
        task=settings["task"],
        examples=examples,
        max_new_tokens=settings["max_new_tokens"],
    )


def _trainer(config: LoopConfig, dataset: DatasetRef, store: Store, folder, trial: Trial | None):
    import ray.data
    from ray.data import ExecutionOptions
    from ray.train import (
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchConfig, TorchTrainer

    spec = config.train
    attribute, order = config.score_attribute
    columns = PAIR_COLUMNS if spec.method == "dpo" else ["input_ids", "labels"]
    return TorchTrainer(
        _ray_worker,  # type: ignore[arg-type]  # typed as returning None; Ray keeps the value
        train_loop_config=config.model_dump(mode="json"),
        scaling_config=ScalingConfig(
            num_workers=spec.scaling.num_workers,
            use_gpu=spec.scaling.use_gpu,
            resources_per_worker={"CPU": spec.scaling.cpus_per_worker},
            placement_strategy=spec.scaling.placement_strategy,
        ),
        torch_config=TorchConfig(backend="nccl" if spec.scaling.use_gpu else "gloo"),
        # the eval split is the test set: training never reads it
        datasets={
            split: ray.data.read_parquet(f"{dataset.uri}/{split}", columns=columns)
            for split in ("train", "validation")
        },
        # Same order every epoch on every attempt: a resumed run skips what it consumed.
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
        run_config=RunConfig(
            name=config.run_id,
            storage_path=store.uri(*folder),
            callbacks=list(trial.callbacks) if trial else [],
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=spec.keep_checkpoints,
                checkpoint_score_attribute=attribute,
                checkpoint_score_order=order,
            ),
        ),
    )


def _finish(result, config: LoopConfig, dataset, store: Store, run, record) -> RunRef:
    """The best checkpoint's weights (ZeRO shards consolidated for a full run) and the
    run's manifest."""
    spec = config.train
    final = result.return_value or {}
    best = result.get_best_checkpoint(*config.score_attribute) or result.checkpoint
    if spec.base_method == "full":
        kind, weights_uri = "model", _consolidate(best, config, store, run)
    else:
        kind, weights_uri = "adapter", f"{best.path}/adapter"
    history = final.get("loss_history", [])
    metrics = ["step", "epoch", "loss", "eval_loss", "best_eval_loss", "best_step"]
    metrics += ["best_task_metric", "best_task_step"]
    manifest = store.finish(
        {
            "run_id": run[-1],
            "dataset_id": dataset.id,
            "method": spec.method,
            "parent": spec.init_from,
            "kind": kind,
            "weights_uri": weights_uri,
            "best_checkpoint": best.path,
            "selected_on": {
                "split": "validation",
                "metric": "task_metric" if config.probe else "eval_loss",
                "examples": len(config.probe.examples)
                if config.probe
                else dataset.manifest["counts"]["validation"],
            },
            "metrics": {key: final.get(key) for key in metrics},
            "stopped_early": final.get("stopped_early"),
            "resumed_from": final.get("resumed_from", []),
            "loss_first": history[0][1] if history else None,
            "loss_last": history[-1][1] if history else None,
            "loss_history": history,
            "eval_history": final.get("eval_history", []),
            "task_history": final.get("task_history", []),
            "preference_accuracy_history": final.get("accuracy_history", []),
            "worker_nodes": final.get("worker_nodes", []),
            "wandb": config.wandb,
            "trial": record,
            "probe": config.probe.task if config.probe else None,
            "spec": spec.model_dump(mode="json"),
            # model.chat_template the model was taught with (None: the tokenizer's own)
            "chat_template": config.chat_template,
        },
        *run,
    )
    return RunRef(run[-1], store.uri(*run), manifest, False)


def _consolidate(checkpoint, config: LoopConfig, store: Store, run: tuple[str, ...]) -> str:
    """The best ZeRO checkpoint → <run folder>/model, on a Ray worker (it needs the memory),
    with the job's chat template in its tokenizer: the folder is self-contained."""
    import ray

    @ray.remote(num_cpus=1)
    def job(checkpoint, model_dir: str, chat_template: str | None) -> None:
        import tempfile

        with checkpoint.as_directory() as folder, tempfile.TemporaryDirectory() as out:
            consolidate(folder, model_dir, out, chat_template)
            store.put_dir(out, *run, "model")

    ray.get(job.remote(checkpoint, config.model_dir, config.chat_template))
    return store.uri(*run, "model")


def _wandb(
    spec: WandbSpec | None, project: str, store: Store, run: tuple[str, ...], trial: Trial | None
) -> dict | None:
    if spec is None:
        return None
    folder = store.path(*run) if store.is_local else tempfile.gettempdir()
    # a plain run is its own group: its evaluation joins it there
    group = trial.sweep_id if trial else run[-1]
    return wandb_settings(spec, project, run[-1], folder, group=group)


def _fault_injection(store: Store, run: tuple[str, ...], workers: int) -> FaultConfig | None:
    """A test seam: $FTRAY_INJECT_FAULT=STEP (passed to every Ray worker by
    `ftray.runtime`) kills the last worker once, right after STEP."""
    step = os.environ.get("FTRAY_INJECT_FAULT")
    if not step:
        return None
    marker = store.path(*run, "fault-injected.txt")
    return FaultConfig(step=int(step), rank=workers - 1, marker=marker)


class _RayContext:
    """`WorkerContext` over Ray Train: rank, dataset shards, DDP, checkpoint reports."""

    def __init__(self, cache_validation: bool = False):
        import ray
        import ray.train
        import ray.train.torch

        self._cache_validation = cache_validation
        self._validation: dict[int, list[dict]] = {}  # batch size -> this shard's batches

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.node_id = ray.get_runtime_context().get_node_id()
        self.device = str(ray.train.torch.get_device())  # "cpu", "cuda:0"

    def batches(self, split: str, batch_size: int, epoch: int) -> Iterator[dict]:
        if split == "validation" and self._cache_validation:
            if batch_size not in self._validation:
                self._validation[batch_size] = list(self._read(split, batch_size, epoch))
            return iter(self._validation[batch_size])
        return self._read(split, batch_size, epoch)

    def _read(self, split: str, batch_size: int, epoch: int) -> Iterator[dict]:
        import ray.train

        shard = ray.train.get_dataset_shard(split)
        shuffle = (
            {"local_shuffle_buffer_size": 1024, "local_shuffle_seed": epoch}
            if split == "train"
            else {}
        )
        yield from shard.iter_batches(
            batch_size=batch_size, batch_format="numpy", drop_last=split == "train", **shuffle
        )

    def wrap_model(self, model, move: bool = True):
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=move)

    @contextlib.contextmanager
    def restored(self) -> Iterator[str | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield folder

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


def _ray_worker(config: dict) -> dict:
    """The loop on a Ray Train worker; its final metrics reach the driver as the result's
    `return_value`."""
    loop = LoopConfig.model_validate(config)
    return train_loop(loop, _RayContext(cache_validation=loop.cache_validation))
