"""The Ray Serve application: one base model per replica, registry models routed per request.

The OpenAI `model` field (or Serve's multiplex header) picks the model: `base`, a registered
model id, `<base>:<model id>`, or `production` (whatever the registry has in production).
Adapters and full models load on demand through `@serve.multiplexed` (LRU per replica), only
from the registry, never from a path in a request (`ftray.serve.guard` checks every request
first). Concurrent requests are batched with `@serve.batch` across adapters; greedy answers
are cached. A model Serve's LRU evicts is unloaded once no request in flight uses it.

No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at
runtime inside the replica, where string annotations would not resolve. Whatever the
deployment class uses is defined above it: `@serve.ingress` pickles the app, and with it the
methods' globals, as the class is defined.
"""

import asyncio
import logging
import os
import tempfile
import time

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from ray import serve

from ftray.monitor.sampler import Sampler
from ftray.serve.cache import CompletionCache
from ftray.serve.engine import Engine
from ftray.serve.engine import Request as Completion
from ftray.serve.guard import (
    PRODUCTION,
    ChatRequest,
    CompletionRequest,
    FeedbackRequest,
    ModelLock,
    authorized,
    check_prompt,
    error_response,
    install_error_handlers,
    model_name,
    read_body,
)
from ftray.serve.metrics import ServeMetrics
from ftray.serve.openai_format import BASE_MODEL_NAME, completion, error_event, event, new_id
from ftray.store import Store, download_dir

api = FastAPI(title="ftray", description="OpenAI-compatible completions for ftray models")
install_error_handlers(api)
_log = logging.getLogger("ray.serve")
# Prompts up to this many characters are tokenized on the event loop (well under 1 ms).
INLINE_PROMPT_CHARS = 4096


def _replica_grpc_on_loopback() -> None:
    """Bind this replica's inter-deployment gRPC server to 127.0.0.1 on a loopback-only node.

    Ray Serve binds it to every interface (`"[::]:0"` in `ReplicaBase._on_initialized`, which
    runs after the deployment's constructor) and has no setting for the address. On a node
    whose IP is 127.0.0.1 (ftray's embedded Ray, `ray start --node-ip-address=127.0.0.1`) all
    callers come over loopback, so nothing else should reach it; on other nodes replicas on
    other machines call it, so it stays as Ray binds it.
    """
    import ray
    from ray.serve._private import replica

    if ray.util.get_node_ip_address() != "127.0.0.1":
        return
    bind = replica.add_port_to_grpc_server

    def on_loopback(server, address: str) -> int:
        return bind(server, address.replace("[::]", "127.0.0.1", 1))

    replica.add_port_to_grpc_server = on_loopback


class _Loaded:
    """A registry model in Serve's LRU. When the LRU evicts it, Serve calls `__del__` (in a
    worker thread, while requests may still use the model); the engine then unloads it once
    no request in flight uses it."""

    def __init__(self, engine: Engine, name: str, system_prompt: str | None):
        self.engine, self.name, self.system_prompt = engine, name, system_prompt
        self._retired = False

    def __del__(self):
        # Serve calls this on eviction and Python again on collection: retire only once, or
        # a collection after a reload would retire the reloaded model.
        if not self._retired:
            self._retired = True
            self.engine.retire(self.name)


@serve.deployment
@serve.ingress(api)
class ChatModel:
    """One base model per replica; registry models on top, chosen per request."""

    def __init__(self, config: dict):
        self.config = config
        self.store = Store(config["storage"], config["project"])
        _replica_grpc_on_loopback()
        self.engine = Engine(
            config["model_dir"],
            config["dtype"],
            config["quantization"],
            timeout_s=config["generation_timeout_s"],
        )
        self.cache = CompletionCache(config["cache_entries"], config["cache_ttl_s"])
        self.metrics = ServeMetrics()
        self.sampler = Sampler(self.store, config["monitor"], tick=self._publish_checks)
        self.api_key = None
        if config.get("api_key_env"):
            self.api_key = os.environ.get(config["api_key_env"])
            if not self.api_key:
                raise RuntimeError(
                    f"serve.api_key_env is {config['api_key_env']!r} but that environment "
                    "variable is empty in the replica; set it (a Kubernetes secret, or the "
                    "shell running `ftray serve`)."
                )
        self.batching = {"batches": 0, "requests": 0, "largest": 0}
        self.lock = ModelLock()
        self._streams: set[asyncio.Task] = set()  # running streams, referenced until done

        # A closure, not the bound method: Serve keeps its LRU as an attribute of the
        # decorated function, and the size comes from the spec at run time.
        async def load(model_id: str) -> _Loaded:
            return await self._load(model_id)

        self.get_model = serve.multiplexed(
            max_num_models_per_replica=config["max_adapters_per_replica"]
        )(load)
        self.generate_batch.set_max_batch_size(config["max_batch_size"])
        self.generate_batch.set_batch_wait_timeout_s(config["batch_wait_timeout_s"])

    async def __del__(self):
        """Serve calls this before stopping the replica: write the buffered samples."""
        if hasattr(self, "sampler"):  # not when __init__ failed
            await self.sampler.drain()

    async def _load(self, model_id: str) -> _Loaded:
        """Serve's loader (`_route` has checked that the registry has `model_id`)."""
        card = await asyncio.to_thread(self.store.manifest, "models", model_id)
        if not self.engine.revive(model_id):  # evicted but still in use: keep it
            kind = card.get("kind", "adapter")
            # The weights are read into memory on load; the folder is not needed after.
            with tempfile.TemporaryDirectory(prefix="ftray-serve-") as folder:
                uri = self.store.uri("models", model_id, kind)
                await asyncio.to_thread(download_dir, uri, folder)
                async with self.lock:
                    self.engine.unload_retired()
                    if kind == "adapter":
                        await asyncio.to_thread(self.engine.load_adapter, model_id, folder)
                    else:
                        await asyncio.to_thread(
                            self.engine.load_full, model_id, folder, self.config["dtype"]
                        )
        return _Loaded(self.engine, model_id, card.get("system_prompt"))

    def _authorize(self, request: Request) -> None:
        if self.api_key and not authorized(request.headers.get("authorization"), self.api_key):
            raise HTTPException(401, "missing or wrong API key (Authorization: Bearer …)")

    def check_health(self) -> None:
        """Serve's health check: a replica whose model is stuck is replaced."""
        stuck = self.lock.stuck(self.config["generation_timeout_s"])
        if stuck:
            raise RuntimeError(stuck)

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @api.get("/ready")
    async def ready(self):
        """Ready once the base model is loaded and no generation is stuck (else 503); with
        memory, cache and batching figures."""
        stuck = self.lock.stuck(self.config["generation_timeout_s"])
        if stuck:
            return error_response(503, stuck)
        return {
            "status": "ready",
            "memory": self.engine.memory(),
            "cache": self.cache.stats(),
            "batching": self.batching,
            "sampling": self.sampler.stats(),
            "models": dict(self.engine.counts),
            "busy_s": round(self.lock.held_for(), 3),
        }

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "owned_by": "ftray"} for n in self._names()],
        }

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        self._authorize(request)
        body = await read_body(request, ChatRequest, self.config["max_request_bytes"])
        return await self._respond(body, chat=True)

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        self._authorize(request)
        body = await read_body(request, CompletionRequest, self.config["max_request_bytes"])
        return await self._respond(body, chat=False)

    async def _route(self, requested: str) -> tuple[str, _Loaded | None]:
        """(the model's name, its handle or None for the base model). The caller owns one
        use of a registry model (`engine.use`) and ends it with `engine.done`."""
        asked = serve.get_multiplexed_model_id() or requested
        name = model_name(asked, self.config["base_name"])
        if name == PRODUCTION:
            from ftray.registry import production

            name = await asyncio.to_thread(production, self.store)
            if name is None:
                raise HTTPException(
                    404, f"no model is in production yet; available: {self._names()}"
                )
        if name == BASE_MODEL_NAME:
            return BASE_MODEL_NAME, None
        # Checked before Serve's loader: an unknown id must not evict a loaded model.
        if name is None or not (
            self.engine.has(name) or await asyncio.to_thread(self.store.is_complete, "models", name)
        ):
            raise HTTPException(404, f"model {asked[:100]!r} not found; available: {self._names()}")
        loaded = await self.get_model(name)
        # No await between getting the handle and counting the use: an eviction in between
        # could unload the model before this request runs.
        self.engine.use(name)
        return name, loaded

    async def _respond(self, body, chat: bool):
        """Check limits, answer (cache, batch or stream), count and sample."""
        started = time.perf_counter()
        check_prompt(body.characters(), self.config["max_prompt_chars"])
        limit = body.max_tokens or self.config["max_new_tokens"]
        if limit > self.config["max_tokens_limit"]:
            raise HTTPException(
                400,
                f"max_tokens {limit} is over this server's limit of "
                f"{self.config['max_tokens_limit']} (serve.max_tokens_limit)",
            )
        model_id, loaded = await self._route(body.model)
        in_use = loaded.name if loaded else None
        try:
            # Long prompts are tokenized in a thread, not to block the event loop; short ones
            # in place, where it costs less than a thread hop (which waits for the GIL behind
            # a generating thread, and so would thin the batches).
            if body.characters() > INLINE_PROMPT_CHARS:
                prompt, said, prompt_tokens = await asyncio.to_thread(
                    self._prompt, body, loaded, chat
                )
            else:
                prompt, said, prompt_tokens = self._prompt(body, loaded, chat)
            if prompt_tokens > self.config["max_prompt_tokens"]:
                raise HTTPException(
                    400,
                    f"the prompt has {prompt_tokens} tokens; the limit is "
                    f"{self.config['max_prompt_tokens']} (serve.max_prompt_tokens)",
                )
            request = Completion(in_use, prompt, limit, body.temperature)
            if body.stream:
                pieces, task = self._start_stream(request)
                in_use = None  # the stream's task ends the use when its generation ends
                return StreamingResponse(
                    self._events(
                        pieces, task, request, model_id, chat, started, said, prompt_tokens
                    ),
                    media_type="text/event-stream",
                )
            key = self.cache.key(model_id, prompt, limit, body.temperature)
            answer = self.cache.get(key)
            self.metrics.cache(model_id, hit=answer is not None, cacheable=key is not None)
            if answer is None:
                answer = await self.generate_batch(request)
                self.cache.put(key, answer)
        finally:
            if in_use:
                self.engine.done(in_use)
        latency = time.perf_counter() - started
        self.metrics.done(model_id, latency, prompt_tokens, answer["tokens"])
        response = completion(body.model, answer, prompt_tokens, chat)
        self._sample(response["id"], model_id, chat, said, answer, prompt_tokens, latency)
        return response

    def _prompt(self, body, loaded: _Loaded | None, chat: bool) -> tuple[str, str, int]:
        """(what the model reads, template included; the user's own text, which is sampled;
        the tokens the model reads)."""
        if chat:
            system_prompt = loaded.system_prompt if loaded else self.config["system_prompt"]
            messages = [m.model_dump() for m in body.messages]
            if system_prompt and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": system_prompt})
            prompt = self.engine.render(messages)
            said = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        else:
            prompt = said = body.prompt
        return prompt, said, self.engine.count_tokens(prompt)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def generate_batch(self, requests: list[Completion]) -> list[dict]:
        """Concurrent requests, any mix of models, generated together."""
        self.batching["batches"] += 1
        self.batching["requests"] += len(requests)
        self.batching["largest"] = max(self.batching["largest"], len(requests))
        self.metrics.batch(len(requests))
        async with self.lock:
            # A request whose client left has ended its use, but it may still be in this
            # batch: keep this batch's models whatever their counts say.
            self.engine.unload_retired(keep={r.model for r in requests})
            return await asyncio.to_thread(self.engine.generate, requests)

    def _start_stream(self, request: Completion) -> tuple[asyncio.Queue, asyncio.Task]:
        """Generate `request` in a task that holds the lock only while generating and puts the
        pieces, then None, on a queue: a slow or gone client never holds the lock."""
        pieces: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def pump() -> None:
            try:
                for piece in self.engine.stream(request):
                    loop.call_soon_threadsafe(pieces.put_nowait, piece)
            except Exception as error:  # the client hears it now, not once the model is free
                loop.call_soon_threadsafe(pieces.put_nowait, error)
                raise

        async def generate() -> None:
            try:
                async with self.lock:
                    self.engine.unload_retired(keep={request.model})
                    try:
                        await asyncio.to_thread(pump)
                    finally:  # a timed-out generation runs on: the lock waits for its end
                        await asyncio.to_thread(self.engine.settle)
            finally:
                if request.model:
                    self.engine.done(request.model)
                pieces.put_nowait(None)

        task = asyncio.create_task(generate())
        self._streams.add(task)
        task.add_done_callback(self._stream_ended)
        return pieces, task

    def _stream_ended(self, task: asyncio.Task) -> None:
        self._streams.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("streamed generation failed", exc_info=task.exception())

    async def _events(
        self, pieces, task, request: Completion, model_id, chat: bool, started, said, prompt_tokens
    ):
        """Server-sent events in OpenAI's chunk format, ending with `[DONE]`; a failed
        generation ends with an `error` event (OpenAI's clients raise it)."""
        ident, kind = new_id(chat, chunk=True)
        text = []
        while (piece := await pieces.get()) is not None and not isinstance(piece, Exception):
            text.append(piece)
            yield event(ident, kind, request.model, piece, None, chat)
        if piece is None:
            await asyncio.wait({task})  # not `await task`: leaving early would cancel it
        error = piece if piece is not None else task.exception()
        if error is not None:  # logged by _stream_ended, with its traceback
            yield error_event(
                f"the generation stopped: {error}"
                if isinstance(error, TimeoutError)
                else "the generation failed; the replica's log has the details"
            )
            return
        tokens = self.engine.count_tokens("".join(text))  # at most max_tokens: quick
        finish = "length" if tokens >= request.max_tokens else "stop"
        yield event(ident, kind, request.model, "", finish, chat)
        yield "data: [DONE]\n\n"
        latency = time.perf_counter() - started
        self.metrics.done(model_id, latency, prompt_tokens, tokens)
        answer = {"text": "".join(text).strip(), "tokens": tokens, "finish_reason": finish}
        self._sample(ident, model_id, chat, said, answer, prompt_tokens, latency)

    def _sample(self, request_id, model_id, chat, said, answer, prompt_tokens, latency) -> None:
        self.sampler.record(
            {
                "request_id": request_id,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "model": model_id,
                "endpoint": "chat" if chat else "completions",
                "prompt": said,
                "output": answer["text"],
                "prompt_tokens": prompt_tokens,
                "completion_tokens": answer["tokens"],
                "latency_s": round(latency, 4),
                "finish_reason": answer["finish_reason"],
            }
        )

    @api.post("/v1/feedback")
    async def feedback(self, request: Request) -> dict:
        """A rating, a flag or a corrected answer for an earlier response (by its `id`)."""
        from ftray.monitor.feedback import decide, is_flagged, store_feedback

        self._authorize(request)
        body = await read_body(request, FeedbackRequest, self.config["max_request_bytes"])
        if body.rating is None and not body.flag and body.correction is None:
            raise HTTPException(400, "feedback needs a rating, a flag or a correction")
        known = self.sampler.recent.get(body.request_id, {})
        clean = self.sampler.clean
        record = {
            "request_id": body.request_id,
            "model": body.model or known.get("model"),
            "rating": body.rating,
            "flag": body.flag,
            "correction": clean(body.correction),
            "comment": clean(body.comment),
            "prompt": clean(body.prompt) or known.get("prompt"),
            "output": clean(body.output) or known.get("output"),
        }
        stored = await asyncio.to_thread(store_feedback, self.store, record)
        if record["correction"] and self.config["monitor"]["accept_corrections"] == "auto":
            await asyncio.to_thread(decide, self.store, stored["feedback_id"], "accept", by="auto")
        return {
            "id": stored["feedback_id"],
            "object": "feedback",
            "flagged": is_flagged(stored),
            "matched_request": bool(known),
        }

    def _publish_checks(self) -> None:
        """Export the latest `ftray monitor` results as gauges (read on each flush tick)."""
        if self.store.fs.exists(self.store.path("monitor", "latest.json")):
            self.metrics.checks(self.store.read_json("monitor", "latest.json")["checks"])

    def _names(self) -> list[str]:
        registered = [
            n for n in self.store.list_dirs("models") if self.store.is_complete("models", n)
        ]
        return [BASE_MODEL_NAME, *registered]


def build_app(args: dict):
    """Serve config entry point (RayService `serveConfigV2`, or `serve run`).

    args: `job_spec` (path of the job spec, relative to the working dir), optional `set` (a
    list of KEY=VALUE overrides). E.g. `serve run ftray.serve.app:build_app
    job_spec=jobs/quickstart.yaml`. Requests pick a registered model by its id.
    """
    from ftray.errors import UserError
    from ftray.models import resolve_model
    from ftray.specload import load_spec

    if not args.get("job_spec"):
        raise UserError("build_app needs the arg `job_spec`: the path of a job spec YAML")
    spec = load_spec(args["job_spec"], list(args.get("set") or []), check_files=False)
    store = Store(spec.storage, spec.project)
    return deployment_for(spec, store, resolve_model(spec.model, store))


def deployment_for(spec, store: Store, model_dir: str, env: dict | None = None):
    """The bound ChatModel deployment for a job spec (`env`: variables for the replicas)."""
    serving = spec.serve
    config = {
        "storage": store.storage,
        "project": spec.project,
        "model_dir": model_dir,
        "dtype": spec.model.dtype,
        "base_name": spec.model.base,
        "system_prompt": spec.data.system_prompt,
        **serving.model_dump(
            include={
                "quantization",
                "max_new_tokens",
                "max_tokens_limit",
                "max_prompt_tokens",
                "max_prompt_chars",
                "max_request_bytes",
                "generation_timeout_s",
                "max_adapters_per_replica",
                "max_batch_size",
                "batch_wait_timeout_s",
                "cache_entries",
                "cache_ttl_s",
                "api_key_env",
            }
        ),
        "monitor": spec.monitor.model_dump(
            include={
                "sample_rate",
                "redact_pii",
                "flush_rows",
                "flush_interval_s",
                "accept_corrections",
            }
        ),
    }
    scaling = (
        {"autoscaling_config": serving.autoscaling.model_dump()}
        if serving.autoscaling
        else {"num_replicas": serving.num_replicas}
    )
    actor = {"num_cpus": serving.cpus_per_replica, "num_gpus": serving.gpus_per_replica}
    if env:
        actor["runtime_env"] = {"env_vars": env}
    return ChatModel.options(
        ray_actor_options=actor,
        max_ongoing_requests=max(32, 4 * serving.max_batch_size),
        **scaling,
    ).bind(config)
