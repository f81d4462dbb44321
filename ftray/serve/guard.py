"""What a request must pass before it reaches a model, and the watch on the model's lock.

Runs without Ray. A request body is read up to `serve.max_request_bytes` and validated here;
the `model` it names must be one of the names the registry can produce (never a path); the
prompt's length is checked in characters before anything tokenizes it. `Guard` holds a
replica's API key and `serve.*` limits. Errors leave in
OpenAI's `{"error": {...}}` shape, 500s without a traceback or a path.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ftray.serve.openai_format import BASE_MODEL_NAME
from ftray.spec import ServeSpec

PRODUCTION = "production"
# The header that names the user a `production` request is assigned an arm for (over the
# body's `user`): a gateway in front can set it from its own authentication.
USER_HEADER = "x-ftray-user"
USER_CHARS = 256
# The ids `ftray.registry.register` gives models: content_id("model", ...).
MODEL_ID = re.compile(r"model-[0-9a-f]{12}")
# How long the model lock may be held, in units of serve.generation_timeout_s, before the
# replica counts as stuck: a generation stops itself after one unit, a load takes less.
STUCK_AFTER = 2

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
}
_log = logging.getLogger("ray.serve")
_Body = TypeVar("_Body", bound=BaseModel)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class _Common(BaseModel):
    model: str = Field(
        max_length=256,
        description="'base', a registered model id, '<base>:<model id>' or 'production'.",
    )
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0, le=2)
    stream: bool = False
    user: str | None = Field(
        default=None,
        max_length=USER_CHARS,
        description="The end user (OpenAI's field); keeps one arm of a canary or experiment.",
    )
    n: int = Field(default=1, description="Answers per request: only 1 is supported.")
    guided: bool = Field(
        default=True,
        description="false: the vllm engine does not constrain this answer to "
        "data.output_schema (an extra body field, not OpenAI's).",
    )

    @field_validator("n")
    @classmethod
    def _one_answer(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"this server gives one answer per request; send {n} requests")
        return n


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)

    @model_validator(mode="after")
    def _not_blank(self) -> ChatRequest:
        if not any(m.content.strip() for m in self.messages):
            raise ValueError("every message is empty: send some text to answer")
        return self

    def characters(self) -> int:
        return sum(len(m.content) for m in self.messages)

    def asked(self) -> tuple:
        """The request's text as a cache key: its (role, content) pairs."""
        return tuple((m.role, m.content) for m in self.messages)

    def said(self) -> str:
        """The user's own text (what is sampled): the last user message."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")


class CompletionRequest(_Common):
    prompt: str

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("the prompt is empty: send some text to complete")
        return prompt

    def characters(self) -> int:
        return len(self.prompt)

    def asked(self) -> str:
        """The request's text as a cache key: its prompt."""
        return self.prompt

    def said(self) -> str:
        """The user's own text (what is sampled): the prompt."""
        return self.prompt


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
    model: str | None = Field(default=None, max_length=256)


async def read_body(request: Request, schema: type[_Body], max_bytes: int) -> _Body:
    """The request's JSON body as `schema`; 413 past `max_bytes` (stops reading there), 400
    when it is not valid."""
    too_large = HTTPException(
        413, f"the request body is larger than {max_bytes} bytes (serve.max_request_bytes)"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    try:
        return schema.model_validate_json(bytes(body))
    except ValidationError as error:
        raise HTTPException(400, f"invalid request: {describe(error.errors())}") from None


class Guard:
    """A replica's checks on a request: its bearer token and the `serve.*` limits, in the
    order a request meets them."""

    def __init__(self, limits: ServeSpec):
        self.limits = limits
        self.api_key = os.environ.get(limits.api_key_env) if limits.api_key_env else None
        if limits.api_key_env and not self.api_key:
            raise RuntimeError(
                f"serve.api_key_env is {limits.api_key_env!r} but that environment variable "
                "is empty in the replica; set it (a Kubernetes secret, or the shell running "
                "`ftray serve`)."
            )

    def authorize(self, request: Request) -> None:
        """401 unless the request carries the API key (when there is one)."""
        if self.api_key and not authorized(request.headers.get("authorization"), self.api_key):
            raise HTTPException(401, "missing or wrong API key (Authorization: Bearer …)")

    async def read(self, request: Request, schema: type[_Body]) -> _Body:
        """The authorized request's body as `schema` (see `read_body`), its `user` replaced
        by the `X-Ftray-User` header when there is one."""
        self.authorize(request)
        body = await read_body(request, schema, self.limits.max_request_bytes)
        user = request.headers.get(USER_HEADER)
        if user and "user" in schema.model_fields:
            if len(user) > USER_CHARS:
                raise HTTPException(
                    400, f"the {USER_HEADER} header is over {USER_CHARS} characters"
                )
            body = body.model_copy(update={"user": user})
        return body

    def max_tokens(self, body: ChatRequest | CompletionRequest) -> int:
        """The tokens `body` may generate; 400 for a prompt over serve.max_prompt_chars or
        a `max_tokens` over serve.max_tokens_limit."""
        check_prompt(body.characters(), self.limits.max_prompt_chars)
        limit = body.max_tokens or self.limits.max_new_tokens
        if limit > self.limits.max_tokens_limit:
            raise HTTPException(
                400,
                f"max_tokens {limit} is over this server's limit of "
                f"{self.limits.max_tokens_limit} (serve.max_tokens_limit)",
            )
        return limit

    def check_prompt_tokens(self, tokens: int) -> None:
        """400 for a prompt over serve.max_prompt_tokens (chat template included)."""
        check_prompt(tokens, self.limits.max_prompt_tokens, "tokens", "serve.max_prompt_tokens")


def describe(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's errors as `field: problem; ...` (nested fields dotted)."""
    problems = []
    for error in errors:
        place = ".".join(str(p) for p in error["loc"])
        problems.append(f"{place}: {error['msg']}" if place else error["msg"])
    return "; ".join(problems)


def check_prompt(
    size: int, limit: int, unit: str = "characters", setting: str = "serve.max_prompt_chars"
) -> None:
    """400 when the prompt has more than `limit` `unit`s (characters: before it is
    tokenized)."""
    if size > limit:
        raise HTTPException(400, f"the prompt has {size} {unit}; the limit is {limit} ({setting})")


def model_name(requested: str, base_name: str) -> str | None:
    """What a request's `model` names: 'base', 'production' or a registry model id; None
    when it is none of these (then nothing may be looked up with it)."""
    bases = sorted({BASE_MODEL_NAME, base_name}, key=len, reverse=True)
    if requested in bases:
        return BASE_MODEL_NAME
    for base in bases:
        if requested.startswith(f"{base}:"):
            requested = requested.removeprefix(f"{base}:")
            break
    if requested == PRODUCTION or MODEL_ID.fullmatch(requested):
        return requested
    return None


def authorized(header: str | None, api_key: str) -> bool:
    """Whether the Authorization header carries `api_key`, compared in constant time."""
    return hmac.compare_digest((header or "").encode(), f"Bearer {api_key}".encode())


def install_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape, so clients raise their usual exception types."""

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail))

    app.add_middleware(_InternalErrors)


def error_response(status: int, message: str) -> JSONResponse:
    """An error in OpenAI's shape: `{"error": {"message", "type"}}` with `status`."""
    body = {"message": message, "type": _ERROR_TYPES.get(status, "server_error")}
    return JSONResponse({"error": body}, status_code=status)


class _InternalErrors:
    """Any other error before the response starts: a 500 in OpenAI's shape. The traceback
    goes to the replica's log, never to the client (it names files). Unlike Starlette's own
    500 handler this does not raise again, so Serve sees an answered request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        started = False

        async def watched(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            if scope["type"] != "http" or started:
                raise
            _log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            response = error_response(500, "internal error; the replica's log has the details")
            await response(scope, receive, send)


class ModelLock:
    """The replica's lock on its engine (one generation or load at a time), which knows how
    long it has been held."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._lock = asyncio.Lock()
        self._clock = clock
        self._since: float | None = None

    async def __aenter__(self) -> None:
        await self._lock.acquire()
        self._since = self._clock()

    async def __aexit__(self, *exc) -> None:
        self._since = None
        self._lock.release()

    def held_for(self) -> float:
        """Seconds the current holder has held the lock (0 when free)."""
        return 0.0 if self._since is None else self._clock() - self._since

    def stuck(self, timeout_s: float) -> str | None:
        """Why the replica counts as stuck, or None: the lock held past STUCK_AFTER times
        `timeout_s` (serve.generation_timeout_s)."""
        held = self.held_for()
        if held <= STUCK_AFTER * timeout_s:
            return None
        return (
            f"the model has been busy for {held:.0f} s, over {STUCK_AFTER} x "
            f"serve.generation_timeout_s ({timeout_s:g} s): a generation or load is stuck"
        )
