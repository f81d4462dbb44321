"""The Ray Serve application: one base model per replica, registry models routed per request.

The OpenAI `model` field (or Serve's multiplex header) picks the model: `base`, a registered
model id, `<base>:<model id>`, or `production` (whatever the registry has in production, or
one arm of its canary or experiment per user: `ftray.routing`); the response's `model` names
the model that answered. A shadow model gets its share of `production` requests after the
answer is ready, and the pair is recorded.
Adapters and full models load on demand through `@serve.multiplexed` (LRU per replica,
`ftray.serve.adapters`), only from the registry, never from a path in a request
(`ftray.serve.guard` checks every request first). Concurrent requests are batched with
`@serve.batch` across adapters; greedy answers are cached; answers are counted and sampled
by `ftray.serve.exchange`. The replica's settings are a `ftray.serve.config.ReplicaConfig`.

No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at
runtime inside the replica, where string annotations would not resolve. Whatever the
deployment class uses is defined above it: `@serve.ingress` pickles the app, and with it the
methods' globals, as the class is defined.
"""

import asyncio
import functools
import logging
import time
from typing import cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from ftray.placement import generation_batch_size
from ftray.rag.context import Chunk, with_context
from ftray.serve.adapters import Adapters, Loaded
from ftray.serve.cache import CompletionCache
from ftray.serve.config import ReplicaConfig
from ftray.serve.engine import Engine
from ftray.serve.engine import Request as Completion
from ftray.serve.exchange import Exchange, ExchangeLog
from ftray.serve.guard import (
    ChatRequest,
    CompletionRequest,
    FeedbackRequest,
    Guard,
    ModelLock,
    error_response,
    install_error_handlers,
)
from ftray.serve.metrics import ServeMetrics
from ftray.serve.openai_format import completion, error_event, event, new_id
from ftray.serve.retrieval import ServedIndex
from ftray.serve.vllm_engine import VllmEngine
from ftray.store import Store

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


def _engine_for(config: ReplicaConfig) -> Engine | VllmEngine:
    """The replica's engine, as serve.engine names it."""
    if config.serve.engine == "vllm":
        return VllmEngine(config)
    return Engine(
        config.model_dir,
        config.model.dtype,
        config.quantization,
        gpus=config.serve.gpus_per_replica,
        attention=config.model.attention,
        timeout_s=config.serve.generation_timeout_s,
        chat_template=config.model.chat_template,
    )


def _batch_size(serving) -> int:
    """The replica's dynamic batch: serve.max_batch_size, or its device's default."""
    return generation_batch_size(serving.max_batch_size, serving.gpus_per_replica, serving=True)


def _cited(retriever, chunks) -> dict:
    """The response's retrieval fields (extra fields: OpenAI's clients keep them, unread):
    the index version and the chunks the answer was asked with; none without retrieval."""
    if retriever is None:
        return {}
    sources = [{"id": c.id, "source": c.source, "score": round(c.score, 6)} for c in chunks]
    return {"index_id": retriever.index_id, "sources": sources}


# Everything ChatModel's methods call is defined above it: the class is pickled by value when
# it is decorated, with the module's names as they are then (a helper defined below it is a
# NameError in the replica).
@serve.deployment
@serve.ingress(api)
class ChatModel:
    """One base model per replica; registry models on top, chosen per request."""

    def __init__(self, raw: dict):
        self.config = config = ReplicaConfig.model_validate(raw)
        self.store = Store(config.storage, config.project)
        _replica_grpc_on_loopback()
        self.guard = Guard(config.serve)
        self.engine = _engine_for(config)
        self.cache = CompletionCache(config.serve.cache_entries, config.serve.cache_ttl_s)
        self.metrics = ServeMetrics()
        self.exchanges = ExchangeLog(self.store, config.monitor, self.metrics, config.output_schema)
        self.batching = {"batches": 0, "requests": 0, "largest": 0}
        self.lock = ModelLock()
        self.adapters = Adapters(self.store, self.engine, self.lock, config)
        self.index = ServedIndex(self.store, config.serve.retrieval)
        self._tasks: set[asyncio.Task] = set()  # streams and shadows, referenced until done
        self._shadows = 0  # shadow generations running (serve.shadow_max_in_flight)
        # `@serve.batch` adds these setters to the method
        self.generate_batch.set_max_batch_size(_batch_size(config.serve))  # type: ignore[attr-defined]
        self.generate_batch.set_batch_wait_timeout_s(config.serve.batch_wait_timeout_s)  # type: ignore[attr-defined]

    async def __del__(self):
        """Serve calls this before stopping the replica: write the buffered samples."""
        if hasattr(self, "exchanges"):  # not when __init__ failed
            await self.exchanges.drain()
        if hasattr(self, "engine"):
            self.engine.close()

    def check_health(self) -> None:
        """Serve's health check: a replica whose model is stuck is replaced."""
        stuck = self.lock.stuck(self.config.serve.generation_timeout_s) or self.engine.failure()
        if stuck:
            raise RuntimeError(stuck)

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @api.get("/ready")
    async def ready(self):
        """Ready once the base model is loaded and no generation is stuck (else 503); with
        memory, cache and batching figures."""
        stuck = self.lock.stuck(self.config.serve.generation_timeout_s)
        if stuck:
            return error_response(503, stuck)
        return {
            "status": "ready",
            "memory": self.engine.memory(),
            "cache": self.cache.stats(),
            "batching": self.batching,
            "sampling": self.exchanges.sampler.stats(),
            "models": dict(self.engine.counts),
            "busy_s": round(self.lock.held_for(), 3),
        }

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self.guard.authorize(request)
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "owned_by": "ftray"} for n in self.adapters.names()
            ],
        }

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        return await self._respond(await self.guard.read(request, ChatRequest), chat=True)

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._respond(await self.guard.read(request, CompletionRequest), chat=False)

    @api.post("/v1/feedback")
    async def feedback(self, request: Request) -> dict:
        """A rating, a flag or a corrected answer for an earlier response (by its `id`)."""
        return await self.exchanges.feedback(await self.guard.read(request, FeedbackRequest))

    async def _respond(self, body, chat: bool):
        """Check limits, answer (cache, batch or stream), count and sample."""
        started = time.perf_counter()
        limit = self.guard.max_tokens(body)
        route = await self.adapters.resolve(body.model, body.user)
        model_id, split, in_use = route.model, route.split, None
        try:
            loaded = await self.adapters.use(model_id)  # a model that fails to load: counted
            in_use = loaded.name if loaded else None
            retriever, k = await self._retriever(loaded, chat)
            # A hit is answered here, before the prompt is rendered, tokenized or queued.
            # Streams are not cached, nor an answer that opted out of the engine's JSON schema
            # (the cached answers are the constrained ones).
            schema = self.engine.schema if body.guided else None
            key = (
                None
                if body.stream or schema != self.engine.schema
                else self.cache.key(
                    f"{model_id}@{retriever.index_id}" if retriever else model_id,
                    body.asked(),
                    limit,
                    body.temperature,
                )
            )
            cached = self.cache.get(key)
            self.metrics.cache(model_id, hit=cached is not None, cacheable=key is not None)
            if cached is None:
                chunks = await self._retrieve(retriever, body, k, model_id)
                prompt, prompt_tokens = await self._prompt(body, loaded, chat, chunks)
                request = Completion(in_use, prompt, limit, body.temperature, schema)
                if body.stream:
                    pieces, task = self._start_stream(request)
                    in_use = None  # the stream's task ends the use when its generation ends
                    exchange = Exchange(model_id, chat, body.said(), prompt_tokens, started, split)
                    mirror = functools.partial(self._mirror, route.shadow, body, chat, limit)
                    events = self._events(
                        pieces, task, request, exchange, _cited(retriever, chunks), mirror
                    )
                    return StreamingResponse(
                        events,
                        media_type="text/event-stream",
                    )
                cached = (await self._generate(request), prompt_tokens, chunks)
                self.cache.put(key, cached)
        except Exception as error:
            self.exchanges.failed(model_id, split, error)
            raise
        finally:
            if in_use:
                self.engine.done(in_use)
        answer, prompt_tokens, chunks = cached
        response = completion(model_id, answer, prompt_tokens, chat)
        response.update(_cited(retriever, chunks))
        exchange = Exchange(model_id, chat, body.said(), prompt_tokens, started, split)
        self.exchanges.answered(exchange, response["id"], answer)
        self._mirror(route.shadow, body, chat, limit, response["id"], answer)
        return JSONResponse(response)  # a plain dict: FastAPI's encoder pass is not needed

    def _mirror(self, shadow: str | None, body, chat: bool, limit: int, request_id: str, answer):
        """Start asking `shadow` (if any) in the background, once the answer is ready (the
        user never waits for it); beyond serve.shadow_max_in_flight, count it skipped."""
        if shadow is None:
            return
        if self._shadows < self.config.serve.shadow_max_in_flight:
            self._shadows += 1
            self._in_background(self._shadow(shadow, body, chat, limit, request_id, answer))
        else:
            self.metrics.shadow_skipped(shadow)

    async def _shadow(self, model: str, body, chat: bool, limit: int, request_id: str, answer):
        """Ask shadow `model` what production answered with `answer`, and record the pair.
        It queues with the other requests (a shadow costs generation time); a failure is
        counted and logged, never seen by the user."""
        started = time.perf_counter()
        try:
            loaded = await self.adapters.use(model)  # never the base model (`routing.shadow`)
            try:
                retriever, k = await self._retriever(loaded, chat)
                chunks = await self._retrieve(retriever, body, k, model)
                prompt, tokens = await self._prompt(body, loaded, chat, chunks)
                schema = self.engine.schema if body.guided else None
                request = Completion(model, prompt, limit, body.temperature, schema)
                mirrored = await self._generate(request)
            finally:
                self.engine.done(model)
        except Exception as error:
            self.metrics.shadow_failed(model)
            _log.warning("shadow %s failed on request %s: %r", model, request_id, error)
            return
        finally:
            self._shadows -= 1
        said = Exchange(model, chat, body.said(), tokens, started)
        self.exchanges.shadowed(said, request_id, answer, mirrored)

    async def _retriever(self, loaded: Loaded | None, chat: bool):
        """(the retriever, chunks per request) for a request to `loaded` (None: the base
        model); (None, 0) without retrieval. Completions (a raw prompt) get none."""
        k = (loaded.retrieval_k if loaded else self.config.serve.retrieval.base_k) if chat else 0
        return (await self.index.current(), k) if k else (None, 0)

    async def _retrieve(self, retriever, body, k: int, model: str) -> list[Chunk]:
        """The `k` chunks for the request's last user turn (none without a retriever)."""
        if retriever is None:
            return []
        started = time.perf_counter()
        question = next(m.content for m in reversed(body.messages) if m.role == "user")
        chunks = await self.index.search(retriever, question, k)
        self.metrics.retrieval(model, time.perf_counter() - started)
        return chunks

    async def _prompt(
        self, body, loaded: Loaded | None, chat: bool, chunks: list[Chunk]
    ) -> tuple[str, int]:
        """(what the model reads, template included; its tokens), within
        serve.max_prompt_tokens."""
        # Long prompts are tokenized in a thread, not to block the event loop; short ones
        # in place, where it costs less than a thread hop (which waits for the GIL behind
        # a generating thread, and so would thin the batches).
        if body.characters() > INLINE_PROMPT_CHARS:
            prompt, tokens = await asyncio.to_thread(self._render, body, loaded, chat, chunks)
        else:
            prompt, tokens = self._render(body, loaded, chat, chunks)
        self.guard.check_prompt_tokens(tokens)
        return prompt, tokens

    def _render(self, body, loaded: Loaded | None, chat: bool, chunks: list[Chunk]):
        """(the prompt the model reads, its tokens): the chat template over the messages,
        the system prompt first, the chunks before the last user turn (`with_context`)."""
        if chat:
            system_prompt = loaded.system_prompt if loaded else self.config.system_prompt
            messages = [m.model_dump() for m in body.messages]
            if system_prompt and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": system_prompt})
            prompt = self.engine.render(with_context(messages, chunks))
        else:
            prompt = body.prompt
        return prompt, self.engine.count_tokens(prompt)

    async def _generate(self, request: Completion) -> dict:
        """One answer: from the engine directly when it batches by itself, else through the
        batch queue."""
        if isinstance(self.engine, VllmEngine):
            return await self.engine.complete(request)
        return await self.generate_batch(request)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def generate_batch(self, requests: list[Completion]) -> list[dict]:
        """Concurrent requests, any mix of models, generated together."""
        self.batching["batches"] += 1
        self.batching["requests"] += len(requests)
        self.batching["largest"] = max(self.batching["largest"], len(requests))
        self.metrics.batch(len(requests))
        engine = cast("Engine", self.engine)  # the only engine batched here (`_generate`)
        async with self.lock:
            # A request whose client left has ended its use, but it may still be in this
            # batch: keep this batch's models whatever their counts say.
            engine.unload_retired(keep={r.model for r in requests})
            return await asyncio.to_thread(engine.generate, requests)

    def _start_stream(self, request: Completion) -> tuple[asyncio.Queue, asyncio.Task]:
        """Generate `request` in a task that puts the pieces, then None, on a queue: a slow or
        gone client never holds the model."""
        pieces: asyncio.Queue = asyncio.Queue()
        engine = self.engine

        async def generate() -> None:
            try:
                if isinstance(engine, VllmEngine):
                    await self._stream_continuous(engine, request, pieces)
                else:
                    await self._stream_locked(engine, request, pieces)
            finally:
                if request.model:
                    engine.done(request.model)
                pieces.put_nowait(None)

        return pieces, self._in_background(generate())

    async def _stream_locked(self, engine: Engine, request: Completion, pieces) -> None:
        """Stream from the transformers engine in a thread, holding the lock only while
        generating."""
        loop = asyncio.get_running_loop()

        def pump() -> None:
            try:
                for piece in engine.stream(request):
                    loop.call_soon_threadsafe(pieces.put_nowait, piece)
            except Exception as error:  # the client hears it now, not once the model is free
                loop.call_soon_threadsafe(pieces.put_nowait, error)
                raise

        async with self.lock:
            engine.unload_retired(keep={request.model})
            try:
                await asyncio.to_thread(pump)
            finally:  # a timed-out generation runs on: the lock waits for its end
                await asyncio.to_thread(engine.settle)

    @staticmethod
    async def _stream_continuous(engine: VllmEngine, request: Completion, pieces) -> None:
        """Stream from vLLM, with no lock: it runs streams and other requests side by side."""
        try:
            async for piece in engine.stream(request):
                pieces.put_nowait(piece)
        except Exception as error:
            pieces.put_nowait(error)
            raise

    def _in_background(self, work) -> asyncio.Task:
        """Run coroutine `work` as a task the replica holds until it ends."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_ended)
        return task

    def _task_ended(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("streamed generation failed", exc_info=task.exception())

    async def _events(
        self, pieces, task, request: Completion, exchange: Exchange, cited: dict, mirror
    ):
        """Server-sent events in OpenAI's chunk format, ending with `[DONE]`; the last chunk
        (with the finish reason) carries `cited` (the index and sources); a failed generation
        ends with an `error` event (OpenAI's clients raise it). A finished answer is then
        `mirror(request id, answer)`ed to the route's shadow, as a plain one is."""
        ident, kind = new_id(exchange.chat, chunk=True)
        text = []
        while (piece := await pieces.get()) is not None and not isinstance(piece, Exception):
            text.append(piece)
            yield event(ident, kind, request.model, piece, None, exchange.chat)
        if piece is None:
            await asyncio.wait({task})  # not `await task`: leaving early would cancel it
        error = piece if piece is not None else task.exception()
        if error is not None:  # logged by _task_ended, with its traceback
            self.exchanges.failed(exchange.model, exchange.split, error)
            yield error_event(
                f"the generation stopped: {error}"
                if isinstance(error, TimeoutError)
                else "the generation failed; the replica's log has the details"
            )
            return
        tokens = self.engine.count_tokens("".join(text))  # at most max_tokens: quick
        finish = "length" if tokens >= request.max_tokens else "stop"
        yield event(ident, kind, request.model, "", finish, exchange.chat, cited)
        yield "data: [DONE]\n\n"
        answer = {"text": "".join(text).strip(), "tokens": tokens, "finish_reason": finish}
        self.exchanges.answered(exchange, ident, answer)
        mirror(ident, answer)


def build_app(args: dict):
    """Serve config entry point (RayService `serveConfigV2`, or `serve run`).

    args: `job_spec` (path of the job spec, relative to the working dir), optional `set` (a
    list of KEY=VALUE overrides). E.g. `serve run ftray.serve.app:build_app
    job_spec=jobs/quickstart.yaml`. Requests pick a registered model by its id.
    """
    from ftray.errors import UserError
    from ftray.models import resolve_model
    from ftray.serve.vllm_engine import check_engine
    from ftray.specload import load_spec

    if not args.get("job_spec"):
        raise UserError("build_app needs the arg `job_spec`: the path of a job spec YAML")
    spec = load_spec(args["job_spec"], list(args.get("set") or []), check_files=False)
    check_engine(spec.serve.engine)
    store = Store(spec.storage, spec.project)
    return deployment_for(spec, store, resolve_model(spec.model, store))


def deployment_for(spec, store: Store, model_dir: str, env: dict | None = None):
    """The bound ChatModel deployment for a job spec (`env`: variables for the replicas)."""
    serving = spec.serve
    scaling = (
        {"autoscaling_config": serving.autoscaling.model_dump()}
        if serving.autoscaling
        else {"num_replicas": serving.num_replicas}
    )
    actor = {"num_cpus": serving.cpus_per_replica, "num_gpus": serving.gpus_per_replica}
    if env:
        actor["runtime_env"] = {"env_vars": env}
    return ChatModel.options(  # type: ignore[attr-defined]  # `@serve.deployment` made it one
        ray_actor_options=actor,
        max_ongoing_requests=max(32, 4 * _batch_size(serving)),
        **scaling,
    ).bind(ReplicaConfig.of(spec, store, model_dir).model_dump(mode="json"))
