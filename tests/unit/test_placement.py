"""Where inference models go (resources → device, dtype) for serve, evaluate and assess, and
evaluation loading the base exactly as serving does; serving another configuration warns.

No Ray: the engine and the generation actor's class are built in this process, on CPU (a
GPU reserved here is refused: there is no CUDA). tests/gpu checks the CUDA side.
"""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest

from ftray import registry
from ftray.errors import UserError
from ftray.evaluate.generate import _Generate, generation_options
from ftray.models import resolve_model
from ftray.placement import generation_batch_size, place, serving_config
from ftray.serve.config import ReplicaConfig
from ftray.serve.engine import Engine, Request
from ftray.serve.stage import serving_warnings
from ftray.spec import ModelSpec
from ftray.specload import validate_spec
from ftray.store import Store

MESSAGES = [{"role": "user", "content": "where is my card?"}]


def _spec(**sections):
    data = {"sources": [{"path": "x.csv"}]}
    return validate_spec(
        {"project": "p", "model": {"base": "tiny"}, "data": data, **sections}, [], source="t"
    )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return resolve_model(ModelSpec(base="tiny"), Store(str(tmp_path_factory.mktemp("s")), "t"))


@pytest.mark.parametrize(
    ("gpus", "dtype", "bf16", "device", "expected_dtype", "device_map"),
    [
        (0, "auto", True, "cpu", "float32", None),  # no GPU reserved: CPU even on a GPU node
        (0, "bfloat16", True, "cpu", "bfloat16", None),
        (1, "auto", True, "cuda", "bfloat16", {"": "cuda:0"}),
        (0.5, "auto", False, "cuda", "float32", {"": "cuda:0"}),  # a shared pre-bf16 GPU
        (1, "float16", True, "cuda", "float16", {"": "cuda:0"}),
        (4, "auto", True, "cuda", "bfloat16", "auto"),  # sharded across the replica's GPUs
    ],
)
def test_resources_decide_device_and_dtype(gpus, dtype, bf16, device, expected_dtype, device_map):
    placement = place(gpus, dtype, cuda=True, bf16=bf16)
    assert (placement.device, placement.dtype, placement.device_map) == (
        device,
        expected_dtype,
        device_map,
    )
    assert placement.load_kwargs()["attn_implementation"] == "sdpa"


def test_a_reserved_gpu_without_cuda_and_flash_attention_where_it_cannot_run_are_refused():
    with pytest.raises(UserError, match="torch sees no CUDA"):
        place(1, cuda=False)
    with pytest.raises(UserError, match="runs only on a CUDA GPU"):
        place(0, attention="flash_attention_2")
    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(UserError, match="pip install flash-attn"):
            place(1, attention="flash_attention_2", cuda=True, bf16=True)
    with pytest.raises(UserError, match=r"model\.attention"):  # the spec names the choices
        _spec(model={"base": "tiny", "attention": "flash"})
    flash = {"base": "tiny", "attention": "flash_attention_2"}
    gpus = {"serve": {"gpus_per_replica": 1}, "train": {"scaling": {"use_gpu": True}}}
    with pytest.raises(UserError, match=r"eval\.gpus_per_worker is 0"):
        _spec(model=flash, **gpus)
    with pytest.raises(UserError, match=r"train\.scaling\.use_gpu and eval\.gpus_per_worker are"):
        _spec(model=flash, serve={"gpus_per_replica": 1})
    _spec(model=flash, eval={"gpus_per_worker": 1}, **gpus)


def test_serve_eval_and_assess_actors_take_their_resources_from_the_spec(tiny_dir):
    gpu = _spec(eval={"gpus_per_worker": 1}, serve={"gpus_per_replica": 2})
    cpu = _spec()
    # evaluate and assess build their actors from the same options
    options = generation_options(gpu.eval, gpu.model, serving_config(gpu))
    assert (options["gpus_per_worker"], options["batch_size"]) == (1, 64)
    options = generation_options(cpu.eval, cpu.model, serving_config(cpu))
    assert (options["gpus_per_worker"], options["batch_size"]) == (0, 16)
    assert generation_batch_size(None, 1, serving=True) == 32
    assert generation_batch_size(None, 0, serving=True) == 8
    assert generation_batch_size(5, 1) == 5

    # Each actor places its model with its own GPUs: none here, so a reserved one is refused
    # (on a GPU node the same call loads onto it: tests/gpu).
    replica = ReplicaConfig.of(gpu, Store("/tmp", "p"), tiny_dir)
    with pytest.raises(UserError, match="2 GPU"):
        Engine(tiny_dir, gpus=replica.serve.gpus_per_replica)
    with pytest.raises(UserError, match="1 GPU"):
        _actor(tiny_dir, {**options, "gpus_per_worker": 1})
    engine = Engine(tiny_dir, "auto")
    actor = _actor(tiny_dir, options)
    for model in (engine.base, actor.base):
        assert {(p.device.type, str(p.dtype)) for p in model.parameters()} == {
            ("cpu", "torch.float32")
        }


def test_a_qlora_job_is_evaluated_on_the_4bit_base_it_is_served_on(tiny_dir):
    pytest.importorskip("bitsandbytes")
    qlora = {"method": "qlora", "qlora": {"quant_type": "fp4", "double_quant": False}}
    spec = _spec(train=qlora)  # serve.quantization 'auto': the base as trained
    serving = serving_config(spec)
    assert serving["quantization"] == "int4"
    assert serving["bitsandbytes"]["quant_type"] == "fp4"
    assert serving_config(_spec(serve={"quantization": "int4"}))["bitsandbytes"]["quant_type"] == (
        "nf4"
    )
    assert (
        serving_config(_spec(train=qlora, serve={"quantization": "none"}))["bitsandbytes"] is None
    )

    replica = ReplicaConfig.of(spec, Store("/tmp", "p"), tiny_dir)
    engine = Engine(tiny_dir, spec.model.dtype, replica.quantization)
    actor = _actor(tiny_dir, generation_options(spec.eval, spec.model, serving))
    for model in (engine.base, actor.base):
        config = model.config.quantization_config
        assert (config.load_in_4bit, config.bnb_4bit_quant_type) == (True, "fp4")
        assert not config.bnb_4bit_use_double_quant
        assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    # the same weights, so the same greedy answer: the gate judges what is served
    served = engine.generate([Request(None, engine.render(MESSAGES), 8)])[0]["text"]
    batch = actor(pd.DataFrame({"messages": [json.dumps(MESSAGES)]}))
    assert batch["base_output"][0] == served


def test_serving_with_another_configuration_than_the_gate_approved_warns(tmp_path):
    store = Store(str(tmp_path / "store"), "p")
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "adapter_config.json").write_text("{}")
    approved = serving_config(_spec(serve={"quantization": "int4"}))
    card = registry.register(
        store,
        run_id="run-a",
        weights_uri=str(weights),
        kind="adapter",
        dataset_id="ds",
        eval_id="eval-a",
        metrics={},
        gate={"passed": True, "rules": []},
        spec_hash="0" * 64,
        base_model="tiny",
        system_prompt=None,
        serving=approved,
    )
    model_id = card["model_id"]
    assert registry.get_model(store, model_id)["serving"] == approved
    assert serving_warnings(_spec(serve={"quantization": "int4"}), store, model_id) == []
    assert serving_warnings(_spec(), store, "base") == []
    zephyr = {"base": "tiny", "chat_template": "zephyr"}
    (warning,) = serving_warnings(
        _spec(model=zephyr, serve={"quantization": "int4"}), store, model_id
    )
    assert "chat template zephyr, but its gate approved it" in warning
    assert "chat template the tokenizer's own: its evaluation judged a different model" in warning
    (warning,) = serving_warnings(
        _spec(model={"base": "tiny", "dtype": "float16"}), store, model_id
    )
    assert model_id in warning
    assert "with quantization none, dtype float16" in warning  # what is served now
    assert "approved it with quantization int4 (quant_type nf4" in warning  # what was judged


def _actor(model_dir: str, options: dict) -> _Generate:
    """The evaluation's generation actor, built as Ray Data builds it (`generate`)."""
    return _Generate(
        model_dir=model_dir,
        dtype=options["dtype"],
        gpus=options["gpus_per_worker"],
        attention=options["attention"],
        quantization=options["quantization"],
        arms={"base": {"kind": "base"}},
        max_new_tokens=8,
        few_shot=[],
        temperature=0.0,
        samples=1,
        seed=0,
        probe_text=None,
    )
