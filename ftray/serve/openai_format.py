"""OpenAI's response shapes: completions, chat completions, their streamed chunks, errors."""

from __future__ import annotations

import json
import time
import uuid

BASE_MODEL_NAME = "base"


def new_id(chat: bool, chunk: bool = False) -> tuple[str, str]:
    """A fresh response id and the response's `object` type."""
    if chat:
        return (
            f"chatcmpl-{uuid.uuid4().hex}",
            "chat.completion.chunk" if chunk else "chat.completion",
        )
    return f"cmpl-{uuid.uuid4().hex}", "text_completion"


def completion(model: str, answer: dict, prompt_tokens: int, chat: bool) -> dict:
    """A whole (chat) completion response for one engine answer."""
    ident, kind = new_id(chat)
    choice = {"index": 0, "finish_reason": answer["finish_reason"]}
    if chat:
        choice["message"] = {"role": "assistant", "content": answer["text"]}
    else:
        choice["text"] = answer["text"]
    return {
        "id": ident,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": answer["tokens"],
            "total_tokens": prompt_tokens + answer["tokens"],
        },
    }


def event(
    ident: str, kind: str, model: str | None, piece: str, finish, chat: bool, extra=None
) -> str:
    """One server-sent event holding a chunk of a streamed answer (and `extra` fields)."""
    choice = {"index": 0, "finish_reason": finish}
    if chat:
        choice["delta"] = {"content": piece} if piece or not finish else {}
    else:
        choice["text"] = piece
    chunk = {
        "id": ident,
        "object": kind,
        "created": int(time.time()),
        "model": model or BASE_MODEL_NAME,
        "choices": [choice],
        **(extra or {}),
    }
    return f"data: {json.dumps(chunk)}\n\n"


def error_event(message: str) -> str:
    """The server-sent event that ends a stream whose generation failed (OpenAI's clients
    raise it as an APIError)."""
    return f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
