"""`ftray serve` with serve.engine: vllm on the session's local Ray, driven by the real `openai`
client: the base model and two registry adapters routed, greedy answers equal to the
transformers engine's, streaming, concurrent requests, JSON answers constrained to the job's
output schema (and a request that opts out), and hostile requests refused while the replica
keeps answering. One served app for the module: starting vLLM takes minutes on CPU.

Runs in .venv-vllm (`make test-vllm`); skipped where vLLM is not installed.
"""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import jsonschema
import openai
import pytest
import yaml

pytest.importorskip("vllm")

from ftray import registry
from ftray.models import _TINY_CONFIG, resolve_model
from ftray.spec import ModelSpec
from ftray.store import Store
from tests.conftest import free_port
from tests.integration.test_serve import KEY, SYSTEM, _expected, _start, _stop
from tests.unit.test_serve_engine import random_adapter

pytestmark = pytest.mark.vllm

AUTH = {"Authorization": f"Bearer {KEY}"}
SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "blue"]}},
    "required": ["color"],
    "additionalProperties": False,
}
QUESTION = [{"role": "user", "content": "where is my card?"}]


def _tiny_for_vllm(store: Store, folder) -> str:
    """The integration tests' tiny model with 2 attention heads of 32 dimensions instead of 4
    of 16: vLLM's CPU attention has no kernel for 16 (tokenizer and everything else alike)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(ModelSpec(base="tiny"), store))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        **{**_TINY_CONFIG, "num_attention_heads": 2, "num_key_value_heads": 1},
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def vllm_store(tmp_path_factory):
    """Two registered adapters (random LoRA weights), the second in production, and a job
    serving them with vLLM, auth and a JSON output schema."""
    root = tmp_path_factory.mktemp("serve-vllm")
    (root / "unused.csv").write_text('prompt,completion\nhi,"{""color"": ""red""}"\n')
    store = Store(str(root / "store"), "serving")
    model_dir = _tiny_for_vllm(store, root / "tiny32")
    ids = []
    for seed in (1, 2):
        card = registry.register(
            store,
            run_id=f"run-{seed}",
            weights_uri=random_adapter(model_dir, root / f"adapter-{seed}", seed),
            kind="adapter",
            dataset_id="ds",
            eval_id=f"eval-{seed}",
            metrics={},
            gate={"passed": True, "rules": []},
            spec_hash="0" * 64,
            base_model=model_dir,
            system_prompt=SYSTEM,
            serving={"quantization": "none", "bitsandbytes": None, "dtype": "auto"},
        )
        ids.append(card["model_id"])
    registry.promote(store, ids[1], reason="test")
    full = registry.register(
        store,
        run_id="run-full",
        weights_uri=_full_copy(model_dir, root / "full"),
        kind="full",
        dataset_id="ds",
        eval_id="eval-full",
        metrics={},
        gate={"passed": True, "rules": []},
        spec_hash="0" * 64,
        base_model=model_dir,
        system_prompt=SYSTEM,
        serving={"quantization": "none", "bitsandbytes": None, "dtype": "auto"},
    )["model_id"]
    spec = {
        "project": "serving",
        "storage": str(root / "store"),
        "model": {"base": model_dir},
        "data": {
            "sources": [{"path": str(root / "unused.csv")}],
            "system_prompt": SYSTEM,
            "output_schema": SCHEMA,
        },
        "serve": {
            "engine": "vllm",
            "vllm": {"cpu_kv_cache_gib": 1, "max_lora_rank": 8},
            "port": free_port(),
            "max_new_tokens": 8,
            "max_tokens_limit": 32,
            "max_prompt_tokens": 200,
            "cpus_per_replica": 2,
            "api_key_env": "FTRAY_KEY",
            "example_prompt": "hello",
        },
    }
    path = root / "serve.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, store, model_dir, ids, full


def _full_copy(model_dir: str, folder) -> str:
    """A "fully fine-tuned" model: the base with every weight nudged (seeded)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def served(ray_address, vllm_store):
    path, *_ = vllm_store
    process, out = _start(ray_address, path)
    port = yaml.safe_load(path.read_text())["serve"]["port"]
    yield f"http://127.0.0.1:{port}", out
    assert "stopping" in _stop(process)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=300)


def _ask(client, model: str, **options) -> str:
    reply = client.chat.completions.create(model=model, messages=QUESTION, **options)
    return reply.choices[0].message.content


def test_base_and_adapters_answer_as_the_transformers_engine(served, vllm_store):
    url, out = served
    _, store, model_dir, (first, second), full = vllm_store
    assert "replica ready (vllm engine)" in out, out
    client = _client(url)
    assert {m.id for m in client.models.list()} == {"base", first, second, full}
    # the full fine-tune last: an engine of its own in the replica
    names = {"base": None, first: first, second: second, "production": second, full: full}
    free = {"extra_body": {"guided": False}}  # the transformers engine does not constrain
    answers = [_ask(client, m, **free) for m in names]
    expected = _expected(model_dir, names, store, [(m, QUESTION[0]["content"]) for m in names])
    assert answers == expected
    assert len(set(answers[:3])) == 3, "each model answers differently"
    # concurrent requests for all three models (vLLM batches them) answer the same
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        together = list(pool.map(lambda m: _ask(client, m, **free), list(names)[:3] * 3))
    assert together == answers[:3] * 3
    stream = client.chat.completions.create(model=first, messages=QUESTION, stream=True, **free)
    chunks = [c.choices[0].delta.content or "" for c in stream]
    assert "".join(chunks).strip() == answers[1] and len(chunks) > 2
    assert answers[4] != answers[0], "the full fine-tune answers differently from its base"
    ready = httpx.get(f"{url}/ready").json()
    assert ready["memory"]["engine"] == "vllm"
    assert set(ready["memory"]["adapters"]) == {first, second}


def test_json_answers_follow_the_output_schema_unless_a_request_opts_out(served, vllm_store):
    url, _ = served
    _, _, _, (first, _), _ = vllm_store
    client = _client(url)
    for model in ("base", first):
        answer = _ask(client, model, max_tokens=32)
        jsonschema.validate(json.loads(answer), SCHEMA)
    stream = client.chat.completions.create(
        model=first, messages=QUESTION, max_tokens=32, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream)
    jsonschema.validate(json.loads(streamed), SCHEMA)
    text = client.completions.create(model="base", prompt="colour:", max_tokens=32)
    jsonschema.validate(json.loads(text.choices[0].text), SCHEMA)
    # opted out: the untrained model's own text, which is no JSON at all
    free = _ask(client, first, max_tokens=32, extra_body={"guided": False})
    with pytest.raises(json.JSONDecodeError):
        json.loads(free)


def test_hostile_requests_get_clear_4xx_and_the_replica_keeps_answering(served):
    url, _ = served
    client = _client(url)
    before = _ask(client, "base", extra_body={"guided": False})
    message = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError, match=r"available: .*base"):
        client.chat.completions.create(model="model-000000000000", messages=message)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="../../etc/passwd", messages=message)
    with pytest.raises(openai.BadRequestError, match="over this server's limit of 32"):
        client.chat.completions.create(model="base", messages=message, max_tokens=100)
    with pytest.raises(openai.BadRequestError, match="the limit is 200"):
        client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "word " * 300}]
        )
    with pytest.raises(openai.BadRequestError, match="the limit is 65536"):
        client.completions.create(model="base", prompt="word " * 20_000)
    with pytest.raises(openai.BadRequestError, match="one answer per request"):
        client.chat.completions.create(model="base", messages=message, n=2)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError, match="the prompt is empty"):
            client.completions.create(model="base", prompt="", stream=stream)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="base", messages=message, temperature=5)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    headers = {**AUTH, "Content-Type": "application/json"}
    broken = httpx.post(f"{url}/v1/completions", content=b'{"model": "base", "pro', headers=headers)
    assert broken.status_code == 400, broken.text
    huge = json.dumps({"model": "base", "prompt": "x" * 2_000_000})
    oversized = httpx.post(f"{url}/v1/completions", content=huge, headers=headers, timeout=60)
    assert oversized.status_code == 413, oversized.text
    assert _ask(client, "base", extra_body={"guided": False}) == before
    ready = httpx.get(f"{url}/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
