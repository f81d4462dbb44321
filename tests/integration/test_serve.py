"""`ftray serve` on the session's local Ray, driven by the real `openai` client and raw HTTP:
routing of the base model and registry adapters, a canary's share of users, adapters evicted
while in use, streaming, errors, auth, batching under load, the cache, Prometheus metrics, a
quantized replica, hostile requests, Serve's direct ingress, and sockets on loopback only."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import re
import shutil
import statistics
import subprocess
import time
import urllib.parse

import httpx
import openai
import pytest
import yaml

from ftray import registry, routing
from ftray.data.tokenize import render_prompt
from ftray.models import resolve_model
from ftray.serve.engine import Engine, Request
from ftray.spec import ModelSpec
from ftray.store import Store
from tests.conftest import BIN, ROOT, free_port
from tests.unit.test_serve_engine import random_adapter

KEY = "test-key-123"
DOCS = {
    "fees.md": "A replacement Quillbank card costs 12 QB$ and arrives in 6 working days.",
    "hours.md": "The Harrow Street branch opens at 08:30 and closes at 17:00 on weekdays.",
}
SYSTEM = "Answer briefly."


@pytest.fixture(scope="module")
def registry_store(tmp_path_factory):
    """A store holding three registered adapters (random LoRA weights), the second in
    production, and a job spec serving it with auth."""
    root = tmp_path_factory.mktemp("serve")
    (root / "unused.csv").write_text("prompt,completion\nhi,hello\n")  # the spec must name data
    store = Store(str(root / "store"), "serving")
    model_dir = resolve_model(ModelSpec(base="tiny"), store)
    ids = [
        _register(store, random_adapter(model_dir, root / f"adapter-{seed}", seed), str(seed))
        for seed in (1, 2, 3)
    ]
    registry.promote(store, ids[1], reason="test")
    (root / "docs").mkdir()
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text)
    spec = {
        "project": "serving",
        "storage": str(root / "store"),
        "model": {"base": "tiny"},
        "data": {"sources": [{"path": str(root / "unused.csv")}], "system_prompt": SYSTEM},
        "serve": {
            "port": free_port(),
            "max_new_tokens": 8,
            "max_tokens_limit": 16,
            "max_prompt_tokens": 400,
            "max_batch_size": 8,
            "api_key_env": "FTRAY_KEY",
            "example_prompt": "hello",
            "retrieval": {"refresh_s": 1},
            # every mirrored request of the shadow test is answered (none skipped)
            "shadow_max_in_flight": 64,
        },
        "index": {"sources": [str(root / "docs")], "chunk_size": 40, "chunk_overlap": 5},
        "monitor": {"flush_interval_s": 5},  # shadow pairs reach the store within seconds
    }
    path = root / "serve.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, spec, store, model_dir, ids


def _register(store: Store, folder: str, name: str, dataset_id: str = "ds") -> str:
    """Register the adapter in `folder` (gate passed) as run `run-<name>`; its model id."""
    return registry.register(
        store,
        run_id=f"run-{name}",
        weights_uri=folder,
        kind="adapter",
        dataset_id=dataset_id,
        eval_id=f"eval-{name}",
        metrics={},
        gate={"passed": True, "rules": []},
        spec_hash="0" * 64,
        base_model="tiny",
        system_prompt=SYSTEM,
        # as the job's defaults serve it (the quantized replica below warns)
        serving={"quantization": "none", "bitsandbytes": None, "dtype": "auto"},
    )["model_id"]


def _start(ray_address, path, *overrides):
    process = subprocess.Popen(
        [str(BIN / "ftray"), "serve", str(path), "--keep-serving", *overrides],
        cwd=ROOT,
        env={**os.environ, "RAY_ADDRESS": ray_address, "FTRAY_KEY": KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "until Ctrl-C" in line:
            return process, "".join(lines)
    raise AssertionError("ftray serve stopped:\n" + "".join(lines))


def _stop(process) -> str:
    process.terminate()
    out, _ = process.communicate(timeout=120)
    return out


@pytest.fixture(scope="module")
def served(ray_address, registry_store):
    path, spec, *_ = registry_store
    process, out = _start(ray_address, path)
    url = f"http://127.0.0.1:{spec['serve']['port']}"
    yield url, out
    assert "stopping" in _stop(process)


def _expected(model_dir, adapters: dict[str, str | None], store, prompts, max_tokens=8):
    """What the engine answers in this process, for each (model, prompt); `adapters` maps each
    requested name to its registry model (an adapter or a full fine-tune) or None (base)."""
    engine = Engine(model_dir, "auto")
    for name in set(filter(None, adapters.values())):
        kind = store.manifest("models", name).get("kind", "adapter")
        load = engine.load_full if kind == "full" else engine.load_adapter
        load(name, str(store.path("models", name, kind)))
    tokenizer = engine.tokenizer
    requests = [
        Request(
            adapters[m],
            render_prompt(
                tokenizer, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}]
            ),
            max_tokens,
        )
        for m, p in prompts
    ]
    return [a["text"] for a in engine.generate(requests)]


def test_quantized_replica_serves_the_adapters(ray_address, registry_store):
    """First in the module: one Serve app at a time runs on the cluster."""
    path, *_ = registry_store
    port = free_port()
    process, out = _start(
        ray_address,
        path,
        "--set",
        "serve.quantization=int4",
        "--set",
        f"serve.port={port}",
        "--model",
        registry_store[4][0],
    )
    try:
        ready = httpx.get(f"http://127.0.0.1:{port}/ready").json()
        assert ready["memory"]["quantization"] == "int4"
        assert "(quantization: int4, float32 on cpu)" in out
        assert "its gate approved it with quantization none, dtype auto" in out
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
        reply = client.chat.completions.create(
            model=registry_store[4][1], messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.usage.completion_tokens >= 1
    finally:
        _stop(process)


def test_evicted_adapters_serve_their_requests_to_the_end(ray_address, registry_store):
    """One adapter slot per replica, concurrent requests for three adapters (some streamed):
    each request evicts adapters others are using, and every answer is still the one each
    adapter gives alone. Its own app, before `served` starts: one app at a time."""
    path, _, store, model_dir, ids = registry_store
    port = free_port()
    process, _ = _start(
        ray_address,
        path,
        "--set",
        "serve.max_adapters_per_replica=1",
        "--set",
        f"serve.port={port}",
    )
    try:
        _ask_three_adapters_at_once(f"http://127.0.0.1:{port}", store, model_dir, ids)
    finally:
        _stop(process)


def test_direct_ingress_answers_at_the_replica_on_loopback(ray_address, registry_store):
    """`serve.direct_ingress`: the replica answers on its own port (printed), on loopback like
    every other socket, plain and streamed, with the API key still required; the proxy still
    serves, and the port closes when `ftray serve` stops. Its own app, before `served`."""
    path, *_ = registry_store
    port = free_port()
    process, out = _start(
        ray_address, path, "--set", "serve.direct_ingress=true", "--set", f"serve.port={port}"
    )
    try:
        direct = re.search(r"one replica, directly: (http://127\.0\.0\.1:(\d+))/v1", out)
        assert direct, out
        url, direct_port = direct[1], int(direct[2])
        assert direct_port != port
        assert ("127.0.0.1", direct_port) in {(ip, p) for ip, p, _ in _listening(ray_address)}
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        messages = [{"role": "user", "content": "direct"}]
        first = client.chat.completions.create(model="base", messages=messages)
        hits = httpx.get(f"{url}/ready").json()["cache"]["hits"]
        again = client.chat.completions.create(model="base", messages=messages)
        assert again.choices[0].message.content == first.choices[0].message.content
        assert httpx.get(f"{url}/ready").json()["cache"]["hits"] == hits + 1
        chunks = list(client.chat.completions.create(model="base", messages=messages, stream=True))
        assert len(chunks) > 2 and chunks[-1].choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        proxy = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
        assert proxy.chat.completions.create(model="base", messages=messages).choices
    finally:
        assert "stopping" in _stop(process)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/ready")


def _ask_three_adapters_at_once(url, store, model_dir, ids):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
    prompts = [(ids[i % 3], f"eviction {i}") for i in range(36)]
    expected = _expected(model_dir, {name: name for name in ids}, store, prompts)
    before = httpx.get(f"{url}/ready").json()["models"]

    def ask(index: int) -> str:
        model, prompt = prompts[index]
        messages = [{"role": "user", "content": prompt}]
        if index % 4 == 0:
            stream = client.chat.completions.create(model=model, messages=messages, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream).strip()
        reply = client.chat.completions.create(model=model, messages=messages)
        return reply.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, range(len(prompts))))
    assert answers == expected
    after = httpx.get(f"{url}/ready").json()["models"]
    assert after["evicted_in_use"] > before["evicted_in_use"], (before, after)


def test_routes_base_adapters_aliases_and_streams(served, registry_store):
    url, out = served
    _, _, store, model_dir, (first, second, third) = registry_store
    assert re.search(r"answer from production: '.*'", out), out
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)
    assert {m.id for m in client.models.list()} == {"base", first, second, third}
    names = {
        "base": None,
        first: first,
        second: second,
        f"tiny:{first}": first,
        "production": second,
    }
    prompts = [(name, "where is my card?") for name in names]
    expected = _expected(model_dir, names, store, prompts)
    answers = [
        client.chat.completions.create(model=m, messages=[{"role": "user", "content": p}])
        .choices[0]
        .message.content
        for m, p in prompts
    ]
    assert answers == expected
    assert len({answers[0], answers[1], answers[2]}) == 3, "each model answers differently"
    stream = client.chat.completions.create(
        model=first, messages=[{"role": "user", "content": "where is my card?"}], stream=True
    )
    chunks = [c.choices[0].delta.content or "" for c in stream]
    assert "".join(chunks).strip() == answers[1] and len(chunks) > 2
    text = client.completions.create(model=second, prompt="hello", max_tokens=4).choices[0]
    assert text.finish_reason in ("length", "stop")
    # the multiplex header picks the model too
    header = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "base", "messages": [{"role": "user", "content": "where is my card?"}]},
        headers={"Authorization": f"Bearer {KEY}", "serve_multiplexed_model_id": first},
    )
    assert header.json()["choices"][0]["message"]["content"] == answers[1]


def test_errors_are_openai_errors(served):
    url, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)
    message = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError, match=r"available: .*base"):
        client.chat.completions.create(model="model-000000000000", messages=message)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="../../etc/passwd", messages=message)
    with pytest.raises(openai.BadRequestError, match="over this server's limit of 16"):
        client.chat.completions.create(model="base", messages=message, max_tokens=100)
    with pytest.raises(openai.BadRequestError, match="the limit is 400"):
        client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "word " * 500}]
        )
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="base", messages=[])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong").models.list()
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}


def test_two_hundred_requests_at_concurrency_sixteen(served, registry_store, ray_cluster):
    url, _ = served
    _, _, store, model_dir, (first, second, _) = registry_store
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    models = ["base", first, second]
    prompts = [(models[i % 3], f"query number {i // 3}") for i in range(200)]
    names = {"base": None, first: first, second: second}
    expected = _expected(model_dir, names, store, prompts)

    def ask(item):
        model, prompt = item
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}]
        )
        return reply.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, prompts))
    assert answers == expected, "batched answers match one-at-a-time answers, per model"
    batching = httpx.get(f"{url}/ready").json()["batching"]
    assert batching["largest"] > 1 and batching["requests"] / batching["batches"] > 1.5, batching
    # a repeated request is a hit: the same answer and usage, and nothing generated
    model, prompt = prompts[5]
    first_reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}]
    )
    before = httpx.get(f"{url}/ready").json()
    assert ask(prompts[5]) == expected[5] == first_reply.choices[0].message.content
    again = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}]
    )
    after = httpx.get(f"{url}/ready").json()
    assert after["cache"]["hits"] == before["cache"]["hits"] + 2
    assert after["batching"]["requests"] == before["batching"]["requests"], "not generated"
    assert again.usage == first_reply.usage and again.model == model
    assert again.id != first_reply.id  # a hit is its own response (feedback refers to it)
    # Ray's metrics agent exports the app's metrics beside Serve's own
    deadline, text = time.time() + 90, ""
    while time.time() < deadline:
        text = httpx.get(ray_cluster["metrics"], timeout=10).text
        if f'model="{first}"' in text and "ray_ftray_cache_hits" in text:
            break
        time.sleep(3)
    assert re.search(rf'ray_ftray_requests_total{{[^}}]*model="{first}"[^}}]*}} \d+', text), text[
        :2000
    ]
    assert "ray_ftray_request_latency_s_bucket" in text and "ray_ftray_batch_size" in text
    assert "ray_serve_" in text


def test_a_canary_answers_its_share_of_users_and_keeps_them(served, registry_store, ray_cluster):
    """`production` with a 20% canary: 1,000 distinct users (the `user` field or the
    X-Ftray-User header) split 20/80 as the registry's hash says, one user always on one arm,
    the cache keyed on the arm, the arm counted in Prometheus; ending the canary sends
    everyone to production again."""
    url, _ = served
    _, _, store, _, (_, production, candidate) = registry_store
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    message = [{"role": "user", "content": "where is my card?"}]

    def ask(user: str, max_tokens: int = 1, model: str = "production") -> tuple[str, str]:
        # half the users in the body's `user`, half in the header (the same key either way)
        by_header = sum(map(ord, user)) % 2 == 0
        reply = client.chat.completions.create(
            model=model,
            messages=message,
            max_tokens=max_tokens,
            **({"extra_headers": {"X-Ftray-User": user}} if by_header else {"user": user}),
        )
        return reply.model, reply.choices[0].message.content

    routing.canary(store, candidate, percent=20, reason="test")
    try:
        users = [f"user-{i}" for i in range(1000)]
        events = registry.history(store)
        expected = {user: routing.resolve(events, user)[0] for user in users}
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answered = dict(zip(users, (m for m, _ in pool.map(ask, users)), strict=True))
        assert answered == expected, "each user answered by the arm its hash gives"
        share = list(answered.values()).count(candidate) / len(users)
        assert 0.17 <= share <= 0.23, share
        assert {ask("user-7")[0] for _ in range(20)} == {expected["user-7"]}
        # longer answers: each arm's own (the cache is keyed on the model that answered)
        in_canary = next(u for u in users if expected[u] == candidate)
        in_production = next(u for u in users if expected[u] == production)
        named = {m: ask("anyone", 8, model=m)[1] for m in (production, candidate)}
        assert named[production] != named[candidate]
        assert ask(in_production, 8) == (production, named[production])
        assert ask(in_canary, 8) == (candidate, named[candidate])
        stream = client.chat.completions.create(
            model="production", messages=message, stream=True, user=in_canary
        )
        assert {chunk.model for chunk in stream} == {candidate}
        # named models are never split
        assert ask(in_canary, model=production)[0] == production
    finally:
        routing.end_split(store, reason="test over")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        after = {m for m, _ in pool.map(ask, users[:100])}
    assert after == {production}
    # the canary's requests, counted under its model with split="true"
    canary_users = list(expected.values()).count(candidate)
    deadline, counted = time.time() + 90, 0.0
    while time.time() < deadline and counted < canary_users:
        text = httpx.get(ray_cluster["metrics"], timeout=10).text
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("ray_ftray_requests_total{")
            and f'model="{candidate}"' in line
            and 'split="true"' in line
        )
        time.sleep(2)
    assert counted >= canary_users, (counted, canary_users)


def test_a_shadow_answers_unseen_and_its_pairs_are_kept(served, registry_store, ray_cluster):
    """A 50% shadow: every user gets production's answer; the shadow model answers its
    users' requests too, and each pair (production's answer beside the shadow's) is kept and
    reported, and counted in Prometheus; mirrored users wait at most a bounded time more."""
    from ftray.monitor.samples import load_samples
    from ftray.serve.shadow import agree, shadow_report

    url, _ = served
    _, _, store, _, (_, production, shadow) = registry_store
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    message = [{"role": "user", "content": "is my transfer done?"}]

    def ask(user: str, model: str = "production") -> tuple[str, str]:
        reply = client.chat.completions.create(
            model=model, messages=message, max_tokens=8, user=user
        )
        return reply.model, reply.choices[0].message.content

    def seconds(users: list[str]) -> float:
        """The median time of uncached answers to `users`, one after another."""
        times = []
        for user in users:
            started = time.perf_counter()
            client.completions.create(
                model="production", prompt=f"{user} {time.time_ns()}", user=user
            )
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    named = {m: ask("anyone", model=m)[1] for m in (production, shadow)}
    assert named[production] != named[shadow]
    before = seconds([f"timed-{i}" for i in range(3)])
    routing.shadow(store, shadow, percent=50, reason="test")
    try:
        users = [f"shadowed-{i}" for i in range(40)]
        events = registry.history(store)
        mirrored = {u for u in users if routing.shadow_for(events, u, production)}
        assert 10 <= len(mirrored) <= 30, len(mirrored)
        # the user never waits for the shadow: it starts once the answer is out, so only the
        # next request can queue behind it (at most serve.shadow_max_in_flight of them)
        timed = [
            u
            for u in (f"timed-{i}" for i in range(40))
            if routing.shadow_for(events, u, production)
        ]
        assert seconds(timed[:3]) < 4 * before + 0.5, before
        expected = len(mirrored) + 3 + 1  # the users, the timed ones, a stream (below)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = set(pool.map(ask, users))
        assert answers == {(production, named[production])}, "users see production only"
        # a streamed request is mirrored too, once its answer has been streamed
        stream = client.chat.completions.create(
            model="production", messages=message, max_tokens=8, user=min(mirrored), stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert streamed.strip() == named[production].strip()
        deadline, report = time.time() + 60, {}
        while time.time() < deadline:
            report = shadow_report(store, hours=1)["models"].get(shadow, {})
            if report.get("pairs", 0) >= expected:
                break
            time.sleep(2)
    finally:
        routing.end_shadow(store, reason="test over")
    # every pair of the chat prompt disagrees as the two models' own answers do; the three
    # timed prompts are arbitrary, and two random tiny models may agree on one
    samples, _ = load_samples(store, time.time() - 3600)
    pairs = samples[(samples["model"] == shadow) & samples["shadow_of"].notna()]
    chat = pairs[pairs["prompt"] == message[0]["content"]]
    assert len(pairs) == report["pairs"] == expected and len(chat) == expected - 3, report
    assert set(zip(chat["control_output"], chat["output"], strict=True)) == {
        (named[production], named[shadow])
    }
    assert not chat["agreed"].astype(bool).any()
    agreed = [agree(a, b) for a, b in zip(pairs["control_output"], pairs["output"], strict=True)]
    assert list(pairs["agreed"].astype(bool)) == agreed
    assert report["agreement"] == round(sum(agreed) / expected, 4) <= 3 / expected, report
    deadline, counted = time.time() + 90, 0.0
    while time.time() < deadline and counted < expected:
        text = httpx.get(ray_cluster["metrics"], timeout=10).text
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("ray_ftray_shadow_requests_total{") and f'model="{shadow}"' in line
        )
        time.sleep(2)
    assert counted == expected, (counted, expected)

    # the user never waits for the shadow: it starts once the answer is out, so only a next
    # request can queue behind it (at most serve.shadow_max_in_flight of them)
    routing.shadow(store, shadow, percent=50, reason="timed")
    try:
        events = registry.history(store)
        timed = [f"timed-{i}" for i in range(40)]
        timed = [u for u in timed if routing.shadow_for(events, u, production)][:3]
        assert seconds(timed) < 4 * before + 0.5, before
    finally:
        routing.end_shadow(store, reason="test over")


def test_an_automatic_canary_that_fails_is_rolled_back(served, registry_store, tmp_path, capsys):
    """A canary whose weights cannot load answers 500s; `ftray models watch` on the
    replica's online counts rolls it back by itself, and everyone gets production again."""
    from ftray.cli import main

    url, _ = served
    path, _, store, model_dir, (_, production, _) = registry_store
    folder = random_adapter(model_dir, tmp_path / "broken", 9)
    (tmp_path / "broken" / "adapter_model.safetensors").write_bytes(b"not weights")
    broken = _register(store, folder, "broken")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)

    def ask(user: str) -> str:
        try:
            return client.completions.create(
                model="production", prompt="hello", max_tokens=1, user=user
            ).model
        except openai.InternalServerError:
            return "500"

    assert main(["models", "canary", str(path), broken, "--percent", "50", "--auto"]) == 0
    users = [f"auto-{i}" for i in range(80)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answered = list(pool.map(ask, users))
    assert set(answered) == {production, "500"} and answered.count("500") >= 25, answered
    capsys.readouterr()
    # the replica writes its counts every monitor.flush_interval_s (5 s here)
    assert main(["models", "watch", str(path), "--every", "2", "--for", "60"]) == 0
    out = capsys.readouterr().out
    assert f"end_split: {broken} (rolled back: auto: 5xx rate 1.000" in out, out
    assert registry.production(store) == production and routing.split_of(store) is None
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert set(pool.map(ask, users)) == {production}


def test_a_model_trained_with_retrieval_answers_with_sources_from_the_latest_index(
    served, registry_store, tmp_path, run_cli
):
    """A registry model whose dataset was prepared with data.retrieval is asked with its
    chunks (the response names them); re-indexing a changed document changes what it is
    asked, with no restart and no retraining. Other models are asked plainly."""
    url, _ = served
    path, _, store, model_dir, (_, production, _) = registry_store
    run_cli("index", str(path))
    (first,) = (m["index_id"] for m in store.manifests("indexes"))
    store.finish({"retrieval": {"index_id": first, "k": 1}}, "datasets", "ds-rag")
    rag = _register(store, random_adapter(model_dir, tmp_path / "rag", 4), "rag", "ds-rag")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    question = [{"role": "user", "content": "How much does a replacement card cost?"}]

    def ask(model: str):
        return client.chat.completions.create(model=model, messages=question, max_tokens=4)

    plain, reply = ask(production), ask(rag)
    assert "sources" not in (plain.model_extra or {})
    assert reply.model_extra["index_id"] == first
    (source,) = reply.model_extra["sources"]
    assert source["source"] == "fees.md" and source["score"] > 0
    assert reply.usage.prompt_tokens > plain.usage.prompt_tokens + 10, "the chunk is in"
    # streamed: the last chunk (the one with the finish reason) names the same sources
    stream = client.chat.completions.create(model=rag, messages=question, max_tokens=4, stream=True)
    *_, last = stream
    assert last.choices[0].finish_reason in ("stop", "length")
    assert last.model_extra["index_id"] == first
    assert last.model_extra["sources"] == reply.model_extra["sources"]
    # the fee changes: a new index version, served within serve.retrieval.refresh_s
    (path.parent / "docs" / "fees.md").write_text("A replacement Quillbank card now costs 25 QB$.")
    run_cli("index", str(path))
    second = next(m["index_id"] for m in store.manifests("indexes") if m["index_id"] != first)
    deadline, again = time.time() + 30, reply
    while time.time() < deadline and again.model_extra["index_id"] != second:
        time.sleep(1)
        again = ask(rag)
    assert again.model_extra["index_id"] == second
    (changed,) = again.model_extra["sources"]
    assert changed["source"] == "fees.md" and changed["id"] != source["id"]
    assert again.usage.prompt_tokens != reply.usage.prompt_tokens, "the new text is in"


AUTH = {"Authorization": f"Bearer {KEY}"}


def _answer_time(client, tag: str) -> float:
    """The median seconds of three uncached requests to the base model."""
    times = []
    for i in range(3):
        started = time.perf_counter()
        reply = client.completions.create(model="base", prompt=f"{tag} {i} {time.time_ns()}")
        times.append(time.perf_counter() - started)
        assert reply.usage.completion_tokens >= 1
    return statistics.median(times)


def test_model_names_outside_the_registry_are_404s(served, registry_store):
    url, _ = served
    path, _, store, _, (first, *_) = registry_store
    # A complete registered model outside the registry, where `../../../somewhere` leads from
    # the models folder: such a name once loaded and served it.
    outside = path.parent / "somewhere"
    shutil.copytree(store.path("models", first), outside, dirs_exist_ok=True)
    up = os.path.relpath(outside, store.path("models"))
    assert up == "../../../somewhere"
    names = [
        up,
        f"tiny:{up}",
        f"base:{up}",
        str(outside),
        f"{first}/../{up}",
        f"{first}/adapter",
        f"./{first}",
        "..",
        urllib.parse.quote(up, safe=""),
        urllib.parse.quote(f"tiny:{up}"),
        up.replace("/", "%2F").replace(".", "%2e"),
    ]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    for name in names:
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
        raw = httpx.post(
            f"{url}/v1/completions", json={"model": name, "prompt": "hi"}, headers=AUTH
        )
        assert raw.status_code == 404 and raw.json()["error"]["type"] == "not_found_error", name
        header = httpx.post(
            f"{url}/v1/completions",
            json={"model": "base", "prompt": "hi"},
            headers={**AUTH, "serve_multiplexed_model_id": name},
        )
        assert header.status_code == 404, (name, header.text)
    # the answer is the same whether the folder exists or not: it reveals nothing
    messages = [
        httpx.post(f"{url}/v1/completions", json={"model": n, "prompt": "hi"}, headers=AUTH)
        .json()["error"]["message"]
        .replace(repr(n), "NAME")
        for n in (up, f"{up}-absent")
    ]
    assert messages[0] == messages[1] and "available: " in messages[0]
    memory = httpx.get(f"{url}/ready").json()["memory"]
    registered = set(store.list_dirs("models"))  # other tests of this app register more
    assert set(memory["adapters"]) <= registered and not memory["full_models"]


def test_empty_prompts_are_400s_and_the_replica_keeps_answering(served):
    url, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
    baseline = _answer_time(client, "before")
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError, match="the prompt is empty"):
            client.completions.create(model="base", prompt="", stream=stream)
        with pytest.raises(openai.BadRequestError, match="every message is empty"):
            client.chat.completions.create(
                model="production", messages=[{"role": "user", "content": ""}], stream=stream
            )
    # as reported: more streamed empty prompts than it took to hang every request
    for _ in range(10):
        response = httpx.post(
            f"{url}/v1/completions",
            json={"model": "base", "prompt": "", "stream": True},
            headers=AUTH,
            timeout=60,
        )
        assert response.status_code == 400
    after = _answer_time(client, "after")
    assert after < 20 * baseline, (baseline, after)
    ready = httpx.get(f"{url}/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_oversized_and_unsupported_requests_are_refused(served):
    url, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
    baseline = _answer_time(client, "before")
    headers = {**AUTH, "Content-Type": "application/json"}
    huge = json.dumps({"model": "base", "prompt": "x" * 10_000_000})
    response = httpx.post(f"{url}/v1/completions", content=huge, headers=headers, timeout=120)
    assert response.status_code == 413, response.text
    assert "serve.max_request_bytes" in response.json()["error"]["message"]

    def chunked():  # no Content-Length: counted as it arrives
        yield b'{"model": "base", "prompt": "'
        for _ in range(40):
            yield b"x" * 100_000
        yield b'"}'

    response = httpx.post(f"{url}/v1/completions", content=chunked(), headers=headers, timeout=120)
    assert response.status_code == 413, response.text
    with pytest.raises(openai.APIStatusError) as refused:
        client.completions.create(model="base", prompt="x" * 2_000_000)
    assert refused.value.status_code == 413
    with pytest.raises(
        openai.BadRequestError, match=r"the limit is 65536 \(serve.max_prompt_chars"
    ):
        client.completions.create(model="base", prompt="word " * 20_000)
    with pytest.raises(openai.BadRequestError, match="one answer per request"):
        client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "hi"}], n=2
        )
    feedback = httpx.post(
        f"{url}/v1/feedback",
        json={"request_id": "x", "flag": True, "comment": "y" * 3000},
        headers=AUTH,
    )
    assert feedback.status_code == 400 and "comment" in feedback.json()["error"]["message"]
    after = _answer_time(client, "after")
    assert after < 20 * baseline, (baseline, after)


def test_serve_listens_on_loopback_only(served, ray_address):
    """Every socket the session's Ray processes and `ftray serve` listen on is on loopback
    (the replica's gRPC server included). Other Rays on the machine are not looked at."""
    url, _ = served
    listening = _listening(ray_address)
    assert ("127.0.0.1", int(url.rsplit(":", 1)[1])) in {(ip, port) for ip, port, _ in listening}


def _listening(ray_address) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every socket the session's Ray processes and this
    process's children listen on, after checking that all are on loopback."""
    import psutil

    from tests.conftest import ENV, ray_processes

    ours = ray_processes(ENV["RAY_TMPDIR"], int(ray_address.rsplit(":", 1)[1]))
    ours.update({p.pid: p for p in psutil.Process().children(recursive=True)})
    listening = [
        (c.laddr.ip, c.laddr.port, ours[c.pid].name())
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in ours
    ]
    exposed = [s for s in listening if not _loopback(s[0])]
    assert not exposed, f"listening beyond loopback: {exposed}"
    return listening


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    # gRPC binds 127.0.0.1 on an IPv6 socket, listed as ::ffff:127.0.0.1
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback
