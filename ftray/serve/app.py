"""The Ray Serve application: one base model per replica, registry adapters routed per request.

The OpenAI `model` field picks the adapter: a registered model id, or the base model's name.
Adapters load on demand through `@serve.multiplexed` (LRU per replica), and only from the
registry, never from a path in a request.

No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at
runtime inside the replica, where string annotations would not resolve.
"""

import asyncio
import tempfile
import time
import uuid
from typing import Literal

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from ray import serve

from ftray.data.tokenize import render_prompt
from ftray.models import generate_texts, load_model, load_tokenizer
from ftray.store import Store, download_dir

BASE_MODEL_NAME = "base"

api = FastAPI(title="ftray", description="OpenAI-compatible chat completions for ftray models")


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model: str = Field(description="A registered model id, or 'base' for the base model.")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=4096)


class _Adapter:
    """A loaded adapter; Serve drops it from the LRU by deleting it, which unloads it."""

    def __init__(self, owner: "ChatModel", name: str, system_prompt: str | None):
        self.owner, self.name, self.system_prompt = owner, name, system_prompt

    def __del__(self):
        self.owner.unload(self.name)


@serve.deployment
@serve.ingress(api)
class ChatModel:
    """One base model per replica; adapters from the registry on top, chosen per request."""

    def __init__(self, config: dict):
        self.store = Store(config["storage"], config["project"])
        self.tokenizer = load_tokenizer(config["model_dir"])
        self.base = load_model(config["model_dir"], config["dtype"])
        self.base.eval()
        self.peft = None
        self.max_new_tokens = config["max_new_tokens"]
        self.base_system_prompt = config.get("system_prompt")
        self._lock = asyncio.Lock()
        self._folders: dict[str, tempfile.TemporaryDirectory] = {}

    @serve.multiplexed(max_num_models_per_replica=8)
    async def get_adapter(self, model_id: str) -> _Adapter:
        from peft import PeftModel

        if not self.store.is_complete("models", model_id):
            known = [BASE_MODEL_NAME, *self._registered()]
            raise HTTPException(404, f"model {model_id!r} not found; available: {known}")
        card = self.store.manifest("models", model_id)
        if card.get("kind", "adapter") != "adapter":
            raise HTTPException(400, f"model {model_id!r} is a full fine-tune, not an adapter")
        folder = tempfile.TemporaryDirectory(prefix="ftray-serve-")
        download_dir(self.store.uri("models", model_id, "adapter"), folder.name)
        async with self._lock:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base, folder.name, adapter_name=model_id)
            else:
                self.peft.load_adapter(folder.name, adapter_name=model_id)
            self.peft.eval()
        self._folders[model_id] = folder
        return _Adapter(self, model_id, card.get("system_prompt"))

    def unload(self, name: str) -> None:
        if (
            self.peft is not None
            and name in self.peft.peft_config
            and len(self.peft.peft_config) > 1
        ):
            self.peft.delete_adapter(name)
        folder = self._folders.pop(name, None)
        if folder is not None:
            folder.cleanup()

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self) -> dict:
        names = [BASE_MODEL_NAME, *self._registered()]
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "owned_by": "ftray"} for name in names],
        }

    @api.post("/v1/chat/completions")
    async def chat(self, request: ChatRequest) -> dict:
        adapter = (
            None if request.model == BASE_MODEL_NAME else await self.get_adapter(request.model)
        )
        system_prompt = adapter.system_prompt if adapter else self.base_system_prompt
        messages = [m.model_dump() for m in request.messages]
        if system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system_prompt})
        prompt = render_prompt(self.tokenizer, messages)
        limit = request.max_tokens or self.max_new_tokens
        async with self._lock:
            result = await asyncio.to_thread(self._generate, adapter, prompt, limit)
        prompt_tokens = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result["text"]},
                    "finish_reason": "length" if result["tokens"] >= limit else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": result["tokens"],
                "total_tokens": prompt_tokens + result["tokens"],
            },
        }

    def _generate(self, adapter: _Adapter | None, prompt: str, limit: int) -> dict:
        if adapter is not None:
            self.peft.set_adapter(adapter.name)
            return generate_texts(self.peft, self.tokenizer, [prompt], limit)[0]
        if self.peft is None:
            return generate_texts(self.base, self.tokenizer, [prompt], limit)[0]
        with self.peft.disable_adapter():
            return generate_texts(self.peft, self.tokenizer, [prompt], limit)[0]

    def _registered(self) -> list[str]:
        return [
            name
            for name in self.store.list_dirs("models")
            if self.store.is_complete("models", name)
        ]


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
    spec = load_spec(args["job_spec"], list(args.get("set") or []))
    store = Store(spec.storage, spec.project)
    return deployment_for(spec, store, resolve_model(spec.model, store))


def deployment_for(spec, store: Store, model_dir: str):
    """The bound ChatModel deployment for a job spec."""
    config = {
        "storage": store.storage,
        "project": spec.project,
        "model_dir": model_dir,
        "dtype": spec.model.dtype,
        "max_new_tokens": spec.serve.max_new_tokens,
        "system_prompt": spec.data.system_prompt,
    }
    return ChatModel.options(ray_actor_options={"num_cpus": spec.serve.cpus_per_replica}).bind(
        config
    )
