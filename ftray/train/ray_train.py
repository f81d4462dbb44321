"""The train stage: `train_loop` on Ray Train workers, data streamed as Ray Data shards."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ftray.data.prepare import DatasetRef
from ftray.errors import UserError
from ftray.models import resolve_model
from ftray.progress import Progress
from ftray.spec import ModelSpec, TrainSpec
from ftray.store import Store, content_id
from ftray.train.loop import train_loop

TRAIN_VERSION = 1


@dataclass(frozen=True)
class RunRef:
    """A finished training run: where its adapter is and what it measured."""

    run_id: str
    adapter_uri: str
    manifest: dict
    reused: bool


def train(
    spec: TrainSpec, model: ModelSpec, dataset: DatasetRef, store: Store, progress: Progress
) -> RunRef:
    """Train `spec.method` on the dataset's train split; reuse a finished identical run."""
    run_id = content_id(
        "run",
        dataset.dataset_id,
        model.model_dump(mode="json"),
        spec.model_dump(mode="json"),
        TRAIN_VERSION,
    )
    if store.is_complete("runs", run_id):
        manifest = store.manifest("runs", run_id)
        return RunRef(run_id, manifest["adapter_uri"], manifest, True)

    import ray.data
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    workers = spec.scaling.num_workers
    n_train = dataset.manifest["counts"]["train"]
    steps_per_epoch = (n_train // workers) // (spec.batch_size // workers)
    if steps_per_epoch < 1:
        raise UserError(
            f"train.batch_size: {spec.batch_size} is more than the {n_train} training examples "
            f"of dataset {dataset.dataset_id}; lower train.batch_size or add data."
        )
    config = {
        "train": spec.model_dump(mode="json"),
        "model_dir": resolve_model(model, store),
        "dtype": model.dtype,
        "steps_per_epoch": steps_per_epoch,
        "pack_length": dataset.manifest["spec"]["max_seq_len"],
    }
    store.write_json(config, "runs", run_id, "config.json")
    total = min(spec.max_steps or steps_per_epoch * spec.epochs, steps_per_epoch * spec.epochs)
    progress.note(
        f"{spec.method} on {workers} worker(s): {n_train} examples, {total} steps of "
        f"{spec.batch_size}"
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
        run_config=RunConfig(
            name=run_id,
            storage_path=store.uri("runs"),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    metrics = dict(result.metrics)
    history = metrics.pop("loss_history", [])
    nodes = metrics.pop("worker_nodes", [])
    manifest = store.finish(
        {
            "run_id": run_id,
            "dataset_id": dataset.dataset_id,
            "method": spec.method,
            "adapter_uri": result.checkpoint.path,
            "metrics": metrics,
            "loss_first": history[0][1] if history else None,
            "loss_last": history[-1][1] if history else None,
            "loss_history": history,
            "worker_nodes": nodes,
            "spec": spec.model_dump(mode="json"),
        },
        "runs",
        run_id,
    )
    return RunRef(run_id, manifest["adapter_uri"], manifest, False)


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

    def wrap_model(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


def _ray_worker(config: dict) -> None:
    train_loop(config, _RayContext())
