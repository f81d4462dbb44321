"""GPU-only paths: bf16, NCCL, CUDA 4-bit, DeepSpeed on a GPU. Skipped without CUDA.

Run on a GPU machine with `pytest -m gpu tests/gpu` or `tests/gpu/run.sh` (no Ray needed:
the loop runs in-process through `LocalContext`).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from ftray.models import resolve_model
    from ftray.spec import ModelSpec
    from ftray.store import Store

    return resolve_model(ModelSpec(base="tiny"), Store(str(tmp_path_factory.mktemp("s")), "t"))


@pytest.fixture
def nccl_group():
    import torch.distributed as dist

    from tests.conftest import free_port

    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    torch.cuda.set_device(0)
    yield
    dist.destroy_process_group()


class _DdpContext:
    """LocalContext on cuda:0 whose model is wrapped in DDP over the NCCL group."""

    def __new__(cls, *args, **kwargs):
        from ftray.train.context import LocalContext

        ctx = LocalContext(*args, device="cuda:0", **kwargs)

        def wrap(model, move=True):
            model = model.to("cuda:0") if move else model
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])

        ctx.wrap_model = wrap
        return ctx


def _train(tiny_dir, tmp_path, ctx_factory, **overrides):
    from ftray.models import load_tokenizer
    from ftray.train.loop import train_loop
    from tests.unit.test_train_loop import _config, _dataset, _spec

    _dataset(tmp_path / "ds", load_tokenizer(tiny_dir), 32)
    ctx = ctx_factory(str(tmp_path / "ds"), str(tmp_path / "ckpt"))
    spec = _spec(**overrides)
    config = {**_config(tiny_dir, spec, steps_per_epoch=4), "dtype": "auto"}
    final = train_loop(config, ctx)
    history = final["loss_history"]
    assert history[-1][1] < history[0][1], history
    return final


def test_lora_bf16_under_nccl_ddp(tiny_dir, tmp_path, nccl_group):
    from ftray.models import torch_dtype

    assert torch_dtype("auto") == torch.bfloat16, "auto picks bf16 on a capable GPU"
    _train(tiny_dir, tmp_path, _DdpContext, micro_batch_size=4)


def test_qlora_4bit_on_cuda(tiny_dir, tmp_path, nccl_group):
    pytest.importorskip("bitsandbytes")
    final = _train(tiny_dir, tmp_path, _DdpContext, method="qlora")
    assert final["best_eval_loss"] is not None
    assert torch.cuda.max_memory_allocated() > 0


def test_full_zero3_bf16_on_cuda(tiny_dir, tmp_path, nccl_group, monkeypatch):
    pytest.importorskip("deepspeed")
    from ftray.train.context import LocalContext

    monkeypatch.setenv("LOCAL_RANK", "0")
    factory = lambda *a: LocalContext(*a, device="cuda:0")  # noqa: E731
    _train(tiny_dir, tmp_path, factory, method="full", lr=1e-3, deepspeed={"stage": 3})
