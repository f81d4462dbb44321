"""The train stage: `train_loop` on Ray Train workers, data streamed as Ray Data shards.

Contract. In: a `DatasetRef` (its train and eval splits) and the job's model, train and
wandb sections. Out: a `RunRef` to `runs/<run-id>/` (or a sweep's trial folder): Ray Train's
checkpoints, `config.json`, the weights (an adapter or a full model, `weights_uri`) and the
manifest with the metrics. Side effects: a W&B run (offline without a key; its files in the
run folder on local storage); an unfinished run with the same id is resumed, not restarted.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from ftray.artifacts import DatasetRef, RunRef, reuse
from ftray.errors import UserError
from ftray.models import resolve_model
from ftray.progress import Progress
from ftray.spec import ModelSpec, TrainSpec, WandbSpec
from ftray.store import Store, content_id
from ftray.train.loop import train_loop
from ftray.train.methods import consolidate
from ftray.train.tracking import wandb_settings

TRAIN_VERSION = 2


def train(
    spec: TrainSpec,
    model: ModelSpec,
    dataset: DatasetRef,
    store: Store,
    progress: Progress,
    wandb: WandbSpec | None = None,
    project: str = "ftray",
    *,
    folder: tuple[str, ...] = ("runs",),
    trial: dict | None = None,
    callbacks: list | None = None,
    fault_step: str | None = None,
) -> RunRef:
    """Train `spec.method` on the dataset's train split, into `<folder>/<run-id>/`.

    A finished identical run is reused; an unfinished one (a crash, a stopped job) resumes
    from its latest checkpoint: Ray Train picks the run up by its name and storage path.
    A sweep passes its trial folder, `trial` ({"sweep_id", "trial_id", "params"}: part of
    the run id, the W&B group and config) and Tune's report callback. `fault_step` (a test
    hook, default $FTRAY_INJECT_FAULT) kills the last worker once after that step.
    """
    run_id = content_id(
        "run",
        dataset.dataset_id,
        model.model_dump(mode="json"),
        spec.model_dump(mode="json"),
        TRAIN_VERSION,
        trial or {},
    )
    if (manifest := reuse(store, *folder, run_id)) is not None:
        return RunRef(run_id, store.uri(*folder, run_id), manifest, True)

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

    workers = spec.scaling.num_workers
    n_train = dataset.manifest["counts"]["train"]
    steps_per_epoch = (n_train // workers) // (spec.batch_size // workers)
    if steps_per_epoch < 1:
        raise UserError(
            f"train.batch_size: {spec.batch_size} is more than the {n_train} training examples "
            f"of dataset {dataset.dataset_id}; lower train.batch_size or add data."
        )
    total = min(spec.max_steps or steps_per_epoch * spec.epochs, steps_per_epoch * spec.epochs)
    config = {
        "run_id": run_id,
        "train": spec.model_dump(mode="json"),
        "model_dir": resolve_model(model, store),
        "dtype": model.dtype,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "pack_length": dataset.manifest["spec"]["max_seq_len"],
        "wandb": _wandb(wandb, project, store, (*folder, run_id), trial),
        "fault": _fault_injection(store, (*folder, run_id), workers, fault_step),
        "trial": trial,
    }
    store.write_json(config, *folder, run_id, "config.json")
    progress.note(
        f"{spec.method} on {workers} worker(s): {n_train} examples, {total} steps of "
        f"{spec.batch_size} ({spec.per_worker_batch} per worker × {spec.accumulation} "
        "accumulated)"
    )
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=spec.scaling.use_gpu,
            resources_per_worker={"CPU": spec.scaling.cpus_per_worker},
            placement_strategy=spec.scaling.placement_strategy,
        ),
        torch_config=TorchConfig(backend="nccl" if spec.scaling.use_gpu else "gloo"),
        datasets={
            split: ray.data.read_parquet(f"{dataset.uri}/{split}", columns=["input_ids", "labels"])
            for split in ("train", "eval")
        },
        # Same order every epoch on every attempt: a resumed run skips what it consumed.
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
        run_config=RunConfig(
            name=run_id,
            storage_path=store.uri(*folder),
            callbacks=callbacks or [],
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=spec.keep_checkpoints,
                checkpoint_score_attribute="eval_loss",
                checkpoint_score_order="min",
            ),
        ),
    )
    result = trainer.fit()
    final = result.return_value or {}
    best = result.get_best_checkpoint("eval_loss", "min") or result.checkpoint
    if spec.method == "full":
        kind, weights_uri = (
            "model",
            _consolidate(best, config["model_dir"], store, (*folder, run_id)),
        )
    else:
        kind, weights_uri = "adapter", f"{best.path}/adapter"
    history = final.get("loss_history", [])
    manifest = store.finish(
        {
            "run_id": run_id,
            "dataset_id": dataset.dataset_id,
            "method": spec.method,
            "kind": kind,
            "weights_uri": weights_uri,
            "best_checkpoint": best.path,
            "metrics": {
                key: final.get(key)
                for key in ("step", "epoch", "loss", "eval_loss", "best_eval_loss", "best_step")
            },
            "stopped_early": final.get("stopped_early"),
            "resumed_from": final.get("resumed_from", []),
            "loss_first": history[0][1] if history else None,
            "loss_last": history[-1][1] if history else None,
            "loss_history": history,
            "eval_history": final.get("eval_history", []),
            "worker_nodes": final.get("worker_nodes", []),
            "wandb": config["wandb"],
            "trial": trial,
            "spec": spec.model_dump(mode="json"),
        },
        *folder,
        run_id,
    )
    return RunRef(run_id, store.uri(*folder, run_id), manifest, False)


def _consolidate(checkpoint, model_dir: str, store: Store, run: tuple[str, ...]) -> str:
    """The best ZeRO checkpoint → <run folder>/model, on a Ray worker (it needs the memory)."""
    import ray

    @ray.remote(num_cpus=1)
    def job(checkpoint, model_dir: str) -> None:
        import tempfile

        with checkpoint.as_directory() as folder, tempfile.TemporaryDirectory() as out:
            consolidate(folder, model_dir, out)
            store.put_dir(out, *run, "model")

    ray.get(job.remote(checkpoint, model_dir))
    return store.uri(*run, "model")


def _wandb(
    spec: WandbSpec | None, project: str, store: Store, run: tuple[str, ...], trial: dict | None
) -> dict | None:
    if spec is None:
        return None
    folder = store.path(*run) if store.is_local else tempfile.gettempdir()
    # a plain run is its own group: its evaluation joins it there
    group = trial["sweep_id"] if trial else run[-1]
    return wandb_settings(spec, project, run[-1], folder, group=group)


def _fault_injection(
    store: Store, run: tuple[str, ...], workers: int, step: str | None
) -> dict | None:
    """$FTRAY_INJECT_FAULT=STEP kills the last worker once, right after STEP (tests)."""
    step = step or os.environ.get("FTRAY_INJECT_FAULT")
    if not step:
        return None
    marker = store.path(*run, "fault-injected.txt")
    return {"step": int(step), "rank": workers - 1, "marker": marker}


class _RayContext:
    """`WorkerContext` over Ray Train: rank, dataset shards, DDP, checkpoint reports."""

    def __init__(self):
        import ray
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.node_id = ray.get_runtime_context().get_node_id()
        self.device = ray.train.torch.get_device()

    def batches(self, split: str, batch_size: int, epoch: int) -> Iterator[dict]:
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
    return train_loop(config, _RayContext())
