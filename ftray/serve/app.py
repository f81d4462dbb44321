"""The Ray Serve application: one base model per replica, registry models routed per request.

The OpenAI `model` field (or Serve's multiplex header) picks the model: `base`, a registered
model id, `<base>:<model id>`, or `production` (whatever the registry has in production).
Adapters and full models load on demand through `@serve.multiplexed` (LRU per replica), only
from the registry, never from a path in a request. Concurrent requests are batched with
`@serve.batch` across adapters; greedy answers are cached.

No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at
runtime inside the replica, where string annotations would not resolve.
"""

import asyncio
import os
import tempfile
import time
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from ray import serve

from ftray.data.tokenize import render_prompt
from ftray.errors import UserError
from ftray.monitor.sampler import Sampler
from ftray.serve.cache import CompletionCache
from ftray.serve.engine import Engine
from ftray.serve.engine import Request as Completion
from ftray.serve.metrics import ServeMetrics
from ftray.serve.openai_format import BASE_MODEL_NAME, completion, event, new_id
from ftray.store import Store, check_name, download_dir

PRODUCTION = "production"


# Above ChatModel on purpose: Serve pickles the class when it is decorated, with only the
# module globals defined by then.
def _is_id(name: str) -> bool:
    """Whether a requested model name can be a model id (never a path like '../x')."""
    try:
        check_name(name)
    except UserError:
        return False
    return True


api = FastAPI(title="ftray", description="OpenAI-compatible completions for ftray models")


@api.exception_handler(HTTPException)
async def _openai_error(request: Request, error: HTTPException):
    """Errors in the OpenAI shape, so clients raise their usual exception types."""
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
    body = {"message": error.detail, "type": kind.get(error.status_code, "server_error")}
    return JSONResponse({"error": body}, status_code=error.status_code)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, error: RequestValidationError):
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in error.errors()
    )
    body = {"message": f"invalid request: {problems}", "type": "invalid_request_error"}
    return JSONResponse({"error": body}, status_code=400)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class _Common(BaseModel):
    model: str = Field(
        description="'base', a registered model id, '<base>:<model id>' or 'production'."
    )
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0, le=2)
    stream: bool = False


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Common):
    prompt: str


class FeedbackRequest(BaseModel):
    request_id: str = Field(min_length=1, max_length=200, description="The response's `id`.")
    rating: int | None = Field(default=None, ge=1, le=5, description="1 (bad) to 5 (good).")
    flag: bool = Field(default=False, description="Ask a person to look at this answer.")
    correction: str | None = Field(default=None, max_length=20_000, description="The right answer.")
    comment: str | None = Field(default=None, max_length=2000)
    prompt: str | None = Field(
        default=None,
        max_length=20_000,
        description="Only needed when the request is no longer known to the replica.",
    )
    output: str | None = Field(default=None, max_length=20_000)
    model: str | None = None


class _Loaded:
    """A loaded registry model. Serve's LRU drops it by deleting it; the engine unloads it
    at the next safe point (never in the middle of a generation)."""

    def __init__(self, owner: "ChatModel", name: str, system_prompt: str | None):
        self.owner, self.name, self.system_prompt = owner, name, system_prompt

    def __del__(self):
        self.owner.pending_unload.append(self.name)


@serve.deployment
@serve.ingress(api)
class ChatModel:
    """One base model per replica; registry models on top, chosen per request."""

    def __init__(self, config: dict):
        self.config = config
        self.store = Store(config["storage"], config["project"])
        self.engine = Engine(config["model_dir"], config["dtype"], config["quantization"])
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
        self.pending_unload: list[str] = []
        self._lock = asyncio.Lock()
        self._folders: dict[str, tempfile.TemporaryDirectory] = {}

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
        if not _is_id(model_id) or not self.store.is_complete("models", model_id):
            raise HTTPException(404, f"model {model_id!r} not found; available: {self._names()}")
        card = self.store.manifest("models", model_id)
        kind = card.get("kind", "adapter")
        folder = tempfile.TemporaryDirectory(prefix="ftray-serve-")
        await asyncio.to_thread(download_dir, self.store.uri("models", model_id, kind), folder.name)
        async with self._lock:
            if kind == "adapter":
                await asyncio.to_thread(self.engine.load_adapter, model_id, folder.name)
            else:
                await asyncio.to_thread(
                    self.engine.load_full, model_id, folder.name, self.config["dtype"]
                )
        self._folders[model_id] = folder
        return _Loaded(self, model_id, card.get("system_prompt"))

    def _authorize(self, request: Request) -> None:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            raise HTTPException(401, "missing or wrong API key (Authorization: Bearer …)")

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @api.get("/ready")
    async def ready(self) -> dict:
        """Ready once the base model is loaded; with memory and cache figures."""
        return {
            "status": "ready",
            "memory": self.engine.memory(),
            "cache": self.cache.stats(),
            "batching": self.batching,
            "sampling": self.sampler.stats(),
        }

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "owned_by": "ftray"} for n in self._names()],
        }

    @api.post("/v1/chat/completions")
    async def chat(self, body: ChatRequest, request: Request):
        self._authorize(request)
        model_id, loaded = await self._route(body.model)
        system_prompt = loaded.system_prompt if loaded else self.config.get("system_prompt")
        messages = [m.model_dump() for m in body.messages]
        if system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system_prompt})
        prompt = render_prompt(self.engine.tokenizer, messages)
        said = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        return await self._respond(body, model_id, loaded, prompt, said, chat=True)

    @api.post("/v1/completions")
    async def completions(self, body: CompletionRequest, request: Request):
        self._authorize(request)
        model_id, loaded = await self._route(body.model)
        return await self._respond(body, model_id, loaded, body.prompt, body.prompt, chat=False)

    async def _route(self, requested: str) -> tuple[str, _Loaded | None]:
        """(the concrete model name, its loaded handle or None for the base model)."""
        name = serve.get_multiplexed_model_id() or requested
        prefix, _, rest = name.rpartition(":")
        if prefix in (BASE_MODEL_NAME, self.config["base_name"]) and rest:
            name = rest
        if name == PRODUCTION:
            from ftray.registry import production

            name = production(self.store)
            if name is None:
                raise HTTPException(
                    404, f"no model is in production yet; available: {self._names()}"
                )
        if name in (BASE_MODEL_NAME, self.config["base_name"]):
            return BASE_MODEL_NAME, None
        return name, await self.get_model(name)

    async def _respond(self, body, model_id: str, loaded, prompt: str, said: str, chat: bool):
        """Check limits, answer (cache, batch or stream), count and sample. `prompt` is what
        the model reads (template included), `said` the user's own text (what is sampled)."""
        started = time.perf_counter()
        limit = body.max_tokens or self.config["max_new_tokens"]
        if limit > self.config["max_tokens_limit"]:
            raise HTTPException(
                400,
                f"max_tokens {limit} is over this server's limit of "
                f"{self.config['max_tokens_limit']} (serve.max_tokens_limit)",
            )
        prompt_tokens = len(self.engine.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if prompt_tokens > self.config["max_prompt_tokens"]:
            raise HTTPException(
                400,
                f"the prompt has {prompt_tokens} tokens; the limit is "
                f"{self.config['max_prompt_tokens']} (serve.max_prompt_tokens)",
            )
        request = Completion(loaded.name if loaded else None, prompt, limit, body.temperature)
        if body.stream:
            return StreamingResponse(
                self._events(request, model_id, loaded, chat, started, said, prompt_tokens),
                media_type="text/event-stream",
            )
        key = self.cache.key(model_id, prompt, limit, body.temperature)
        answer = self.cache.get(key)
        self.metrics.cache(model_id, hit=answer is not None, cacheable=key is not None)
        if answer is None:
            answer = await self.generate_batch((request, loaded))
            self.cache.put(key, answer)
        latency = time.perf_counter() - started
        self.metrics.done(model_id, latency, prompt_tokens, answer["tokens"])
        response = completion(body.model, answer, prompt_tokens, chat)
        self._sample(response["id"], model_id, chat, said, answer, prompt_tokens, latency)
        return response

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def generate_batch(self, items: list[tuple]) -> list[dict]:
        """Concurrent requests, any mix of models, generated together. Each item carries its
        model's handle so the LRU cannot unload it while the item waits."""
        self.batching["batches"] += 1
        self.batching["requests"] += len(items)
        self.batching["largest"] = max(self.batching["largest"], len(items))
        self.metrics.batch(len(items))
        async with self._lock:
            self._unload_pending()
            return await asyncio.to_thread(self.engine.generate, [r for r, _ in items])

    async def _events(
        self, request: Completion, model_id: str, loaded, chat: bool, started, said, prompt_tokens
    ):
        """Server-sent events in OpenAI's chunk format, ending with `[DONE]`."""
        ident, kind = new_id(chat, chunk=True)
        pieces = []
        async with self._lock:
            self._unload_pending()
            stream = self.engine.stream(request)
            while (piece := await asyncio.to_thread(next, stream, None)) is not None:
                pieces.append(piece)
                yield event(ident, kind, request.model, piece, None, chat)
        del loaded  # held until here so the LRU cannot unload the model mid-stream
        tokens = len(self.engine.tokenizer("".join(pieces), add_special_tokens=False)["input_ids"])
        finish = "length" if tokens >= request.max_tokens else "stop"
        yield event(ident, kind, request.model, "", finish, chat)
        yield "data: [DONE]\n\n"
        latency = time.perf_counter() - started
        self.metrics.done(model_id, latency, prompt_tokens, tokens)
        answer = {"text": "".join(pieces).strip(), "tokens": tokens, "finish_reason": finish}
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
    async def feedback(self, body: FeedbackRequest, request: Request) -> dict:
        """A rating, a flag or a corrected answer for an earlier response (by its `id`)."""
        from ftray.monitor.feedback import decide, is_flagged, store_feedback

        self._authorize(request)
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

    def _unload_pending(self) -> None:
        while self.pending_unload:
            name = self.pending_unload.pop()
            self.engine.unload(name)
            folder = self._folders.pop(name, None)
            if folder is not None:
                folder.cleanup()

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
    from ftray.models import resolve_model
    from ftray.specload import load_spec

    if not args.get("job_spec"):
        raise UserError("build_app needs the arg `job_spec`: the path of a job spec YAML")
    spec = load_spec(args["job_spec"], list(args.get("set") or []))
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
