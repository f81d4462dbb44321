"""The serving engine without Ray: mixed-adapter batches, quantized bases, streaming (and its
failures), the in-use counts that keep an evicted adapter until its last request, the
completion cache."""

from __future__ import annotations

import threading
import time

import pytest

from ftray.models import resolve_model
from ftray.serve.cache import CompletionCache
from ftray.serve.engine import Engine, Request
from ftray.spec import ModelSpec, QloraSpec
from ftray.store import Store

PROMPTS = [
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nwhere is my card?<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return resolve_model(ModelSpec(base="tiny"), Store(str(tmp_path_factory.mktemp("s")), "t"))


def random_adapter(model_dir: str, folder, seed: int) -> str:
    """A LoRA adapter with random A and B (peft's init makes B zero: a no-op adapter)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ftray.models import load_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=4,
        lora_alpha=32,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(load_model(model_dir), config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def adapters(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: random_adapter(tiny_dir, root / name, seed) for name, seed in (("a1", 1), ("a2", 2))
    }


def _texts(engine, requests):
    return [answer["text"] for answer in engine.generate(requests)]


def test_a_mixed_batch_answers_like_one_model_at_a_time(tiny_dir, adapters):
    engine = Engine(tiny_dir, "float32")
    alone = {None: _texts(engine, [Request(None, p, 12) for p in PROMPTS])}
    for name, folder in adapters.items():
        engine.load_adapter(name, folder)
    for name in adapters:
        alone[name] = _texts(engine, [Request(name, p, 12) for p in PROMPTS])
    assert len({tuple(texts) for texts in alone.values()}) == 3, "the adapters change answers"
    mixed = [Request(model, prompt, 12) for model in (None, "a1", "a2") for prompt in PROMPTS]
    answers = _texts(engine, list(reversed(mixed)))[::-1]
    assert answers == [*alone[None], *alone["a1"], *alone["a2"]]
    # per-request token limits inside one batch
    short = engine.generate([Request("a1", PROMPTS[0], 3), Request("a2", PROMPTS[0], 12)])
    assert short[0]["tokens"] <= 3 and short[0]["finish_reason"] in ("length", "stop")


def test_streaming_gives_the_greedy_answer(tiny_dir, adapters):
    engine = Engine(tiny_dir, "float32")
    engine.load_adapter("a1", adapters["a1"])
    pieces = list(engine.stream(Request("a1", PROMPTS[1], 12)))
    assert "".join(pieces).strip() == _texts(engine, [Request("a1", PROMPTS[1], 12)])[0]


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_base_with_an_adapter_answers_and_uses_less_memory(tiny_dir, adapters, bits):
    full = Engine(tiny_dir, "float32")
    small = Engine(tiny_dir, "float32", QloraSpec(bits=bits))
    small.load_adapter("a1", adapters["a1"])
    answers = small.generate(
        [Request("a1", p, 6) for p in PROMPTS] + [Request(None, PROMPTS[0], 6)]
    )
    assert all(a["tokens"] >= 1 for a in answers)
    memory = small.memory()
    assert memory["quantization"] == f"int{bits}" and memory["adapters"] == ["a1"]
    assert memory["device"] == "cpu"  # no GPU reserved: the embedded default
    assert memory["base_bytes"] < full.memory()["base_bytes"]


def test_unloading_keeps_other_adapters(tiny_dir, adapters):
    engine = Engine(tiny_dir, "float32")
    for name, folder in adapters.items():
        engine.load_adapter(name, folder)
    engine.unload("a1")
    assert engine.memory()["adapters"] == ["a2"]
    assert _texts(engine, [Request("a2", PROMPTS[0], 4)])


def test_an_adapter_that_fails_to_load_is_not_left_on_the_model(tiny_dir, adapters, tmp_path):
    """peft adds an adapter's layers before it reads the weights: a broken weights file must
    not leave the name loaded with initial weights (it would answer as if it had loaded)."""
    import shutil

    engine = Engine(tiny_dir, "float32")
    engine.load_adapter("a1", adapters["a1"])
    broken = shutil.copytree(adapters["a2"], tmp_path / "broken")
    (broken / "adapter_model.safetensors").write_bytes(b"not weights")
    with pytest.raises(Exception, match="header"):
        engine.load_adapter("broken", str(broken))
    assert not engine.has("broken") and engine.memory()["adapters"] == ["a1"]
    engine.load_adapter("a2", adapters["a2"])  # the next load is unaffected
    assert engine.memory()["adapters"] == ["a1", "a2"]


def _within(seconds: float, work):
    """`work()`'s result, failing (not hanging) when it takes longer than `seconds`."""
    outcome = {}

    def run():
        try:
            outcome["value"] = work()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)  # a hung one must not block the exit
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_a_failed_stream_raises_instead_of_hanging(tiny_dir):
    engine = Engine(tiny_dir, "float32")
    # An empty prompt makes `generate` fail in its thread; the stream once waited forever.
    with pytest.raises(RuntimeError, match="reshape"):
        _within(60, lambda: list(engine.stream(Request(None, "", 4))))
    assert list(engine.stream(Request(None, PROMPTS[0], 4)))  # the engine still answers


def test_a_stream_with_no_token_for_the_timeout_stops(tiny_dir, monkeypatch):
    engine = Engine(tiny_dir, "float32", timeout_s=0.5)
    real = engine.base.generate

    def stalled(**kwargs):  # a forward pass that hangs (for longer than the test waits)
        time.sleep(10)
        return real(**kwargs)

    monkeypatch.setattr(engine.base, "generate", stalled)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no token for 0\.5 s"):
        _within(60, lambda: list(engine.stream(Request(None, PROMPTS[0], 4))))
    assert time.monotonic() - started < 8, "gave up after the timeout, not after the stall"
    streams = [t for t in threading.enumerate() if t.name == "ftray-stream"]
    assert any(t.is_alive() for t in streams), "the stalled generation still runs"
    engine.settle()  # what the Serve app waits for before the model serves anything else
    assert not any(t.is_alive() for t in streams)


def test_an_evicted_adapter_stays_until_its_last_request_ends(tiny_dir, adapters):
    engine = Engine(tiny_dir, "float32")
    for name, folder in adapters.items():
        engine.load_adapter(name, folder)
    before = _texts(engine, [Request("a1", PROMPTS[0], 6)])
    engine.use("a1")
    engine.use("a1")
    engine.retire("a1")  # Serve's LRU evicted it while two requests use it
    assert engine.unload_retired() == [] and engine.has("a1")
    engine.done("a1")
    assert engine.unload_retired() == []
    assert _texts(engine, [Request("a1", PROMPTS[0], 6)]) == before
    engine.done("a1")
    assert engine.unload_retired(keep={"a1"}) == []  # its batch is about to run
    assert engine.unload_retired() == ["a1"] and not engine.has("a1")
    assert engine.memory()["adapters"] == ["a2"]
    # evicted, then asked for again before it was unloaded: it stays, no second load
    engine.retire("a2")
    assert engine.revive("a2") and engine.unload_retired() == [] and engine.has("a2")
    # the only adapter left stays on the base (peft needs one) until another is loaded
    engine.retire("a2")
    assert engine.unload_retired() == [] and engine.has("a2")
    engine.load_adapter("a1", adapters["a1"])
    assert engine.unload_retired() == ["a2"] and engine.memory()["adapters"] == ["a1"]
    assert _texts(engine, [Request("a1", PROMPTS[0], 6)]) == before
    assert engine.counts == {"loads": 3, "unloads": 2, "evicted_in_use": 1}


def test_cache_lru_ttl_and_counts():
    now = [0.0]
    cache = CompletionCache(max_entries=2, ttl_s=10, clock=lambda: now[0])
    keys = [CompletionCache.key(m, "p", 8, 0.0) for m in ("a", "b", "c")]
    assert CompletionCache.key("a", "p", 8, 0.7) is None  # sampled answers are not cached
    cache.put(keys[0], ({"text": "A"}, 3))
    cache.put(keys[1], ({"text": "B"}, 3))
    assert cache.get(keys[0]) == ({"text": "A"}, 3)  # a is now the most recent
    cache.put(keys[2], ({"text": "C"}, 3))  # evicts b
    assert cache.get(keys[1]) is None
    now[0] = 11
    assert cache.get(keys[0]) is None  # expired
    assert cache.stats() == {"entries": 1, "hits": 1, "misses": 2}
