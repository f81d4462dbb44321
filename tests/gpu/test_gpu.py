"""GPU-only paths: bf16, NCCL, CUDA 4-bit, DeepSpeed on a GPU, inference placed on the GPU
(serve engine, evaluation generator, INT4 base) and the 1B benchmark's path. Skipped without
CUDA.

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


def _on_cuda(model) -> set[str]:
    return {p.device.type for p in model.parameters()}


def test_serve_engine_puts_the_model_and_its_adapters_on_the_gpu(tiny_dir, tmp_path):
    from ftray.serve.engine import Engine, Request
    from tests.unit.test_serve_engine import PROMPTS, random_adapter

    engine = Engine(tiny_dir, "auto", gpus=1)
    assert _on_cuda(engine.base) == {"cuda"}
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    assert {p.dtype for p in engine.base.parameters()} == {expected}  # model.dtype auto
    engine.load_adapter("a1", random_adapter(tiny_dir, tmp_path / "a1", 1))
    assert _on_cuda(engine.peft) == {"cuda"}
    answers = engine.generate([Request("a1", PROMPTS[0], 6), Request(None, PROMPTS[1], 6)])
    assert all(a["tokens"] >= 1 for a in answers)
    assert engine.memory()["device"] == "cuda"


def test_int4_base_is_quantized_on_the_gpu(tiny_dir):
    pytest.importorskip("bitsandbytes")
    from ftray.serve.engine import Engine, Request
    from ftray.spec import QloraSpec
    from tests.unit.test_serve_engine import PROMPTS

    engine = Engine(tiny_dir, "auto", QloraSpec(bits=4), gpus=1)
    q_proj = engine.base.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.weight.device.type == "cuda"
    assert _on_cuda(engine.base) == {"cuda"}
    assert engine.generate([Request(None, PROMPTS[0], 6)])[0]["tokens"] >= 1


def test_evaluation_generator_puts_every_arm_on_the_gpu(tiny_dir, tmp_path):
    import json

    from ftray.evaluate.generate import _Generate
    from tests.unit.test_serve_engine import random_adapter

    folder = random_adapter(tiny_dir, tmp_path / "candidate", 1)
    actor = _Generate(
        model_dir=tiny_dir,
        dtype="auto",
        gpus=1,
        attention="sdpa",
        quantization=None,
        arms={"base": {"kind": "base"}, "candidate": {"kind": "adapter", "uri": folder}},
        max_new_tokens=6,
        few_shot=[],
        temperature=0.0,
        samples=1,
        seed=0,
        probe_text="General text for the perplexity probe. " * 20,
    )
    assert _on_cuda(actor.base) == {"cuda"} and _on_cuda(actor.peft) == {"cuda"}
    messages = json.dumps([{"role": "user", "content": "hello"}])
    batch = actor({"messages": [messages, messages]})  # Ray Data's batch, without pandas
    assert all(t >= 1 for t in batch["candidate_tokens"])
    assert batch["base_general_ppl"][0] > 1


def test_bench_gpu_reports_tokens_per_second_and_mfu(tmp_path):
    from bench.gpu import main

    # a 2-layer model of the 1B's width: the script's whole path, in seconds
    out = tmp_path / "gpu.json"
    sizes = ["--layers", "2", "--batch", "4", "--prompt", "32", "--new-tokens", "8"]
    result = main([*sizes, "--seq", "128", "--steps", "1", "--out", str(out)])
    assert out.exists() and result["generate"]["device"] == ["cuda:0"]
    for part in ("generate", "prefill", "train_step"):
        assert result[part]["tokens_per_s"] > 0
