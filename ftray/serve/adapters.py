"""A replica's registry models (adapters and full fine-tunes): which one a request names,
loaded on demand into Serve's per-replica LRU, counted while requests use them, unloaded once
evicted and unused. Models load only from the registry, by a name `guard.model_name` allows.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from typing import NamedTuple

from fastapi import HTTPException
from ray import serve

from ftray.placement import serving_mismatch
from ftray.serve.config import ReplicaConfig
from ftray.serve.engine import ServingEngine
from ftray.serve.guard import PRODUCTION, ModelLock, model_name
from ftray.serve.openai_format import BASE_MODEL_NAME
from ftray.serve.retrieval import retrieval_k
from ftray.store import Store, download_dir

_log = logging.getLogger("ray.serve")


class Loaded:
    """A registry model in Serve's LRU. When the LRU evicts it, Serve calls `__del__` (in a
    worker thread, while requests may still use the model); the engine then unloads it once
    no request in flight uses it."""

    def __init__(
        self, engine: ServingEngine, name: str, system_prompt: str | None, retrieval_k: int = 0
    ):
        self.engine, self.name, self.system_prompt = engine, name, system_prompt
        self.retrieval_k = retrieval_k  # chunks per request: its dataset's data.retrieval.k
        self._retired = False

    def __del__(self):
        # Serve calls this on eviction and Python again on collection: retire only once, or
        # a collection after a reload would retire the reloaded model.
        if not self._retired:
            self._retired = True
            self.engine.retire(self.name)


class Route(NamedTuple):
    """Where a request goes: `model` answers it, `split` says whether a canary or experiment
    chose it, `shadow` names the model that also answers it, unseen by the user (or None)."""

    model: str
    split: bool
    shadow: str | None


class Adapters:
    """The registry models on top of a replica's base model (serve.max_adapters_per_replica
    loaded at most), and the routing of requests to them."""

    def __init__(self, store: Store, engine: ServingEngine, lock: ModelLock, config: ReplicaConfig):
        self.store, self.engine, self.lock = store, engine, lock
        self.serving = config.serving
        self.base_name = config.model.base

        # A closure, not a bound method: Serve keeps its LRU as an attribute of the decorated
        # function, and the size comes from the spec at run time.
        async def load(model_id: str) -> Loaded:
            return await self._load(model_id)

        slots = config.serve.max_adapters_per_replica
        self._get = serve.multiplexed(max_num_models_per_replica=slots)(load)

    async def use(self, name: str) -> Loaded | None:
        """Registry model `name`, loaded if it is not, with one use counted: the caller ends
        it with `engine.done`; None for the base model."""
        if name == BASE_MODEL_NAME:
            return None
        loaded = await self._get(name)
        # No await between getting the handle and counting the use: an eviction in between
        # could unload the model before this request runs.
        self.engine.use(name)
        return loaded

    async def resolve(self, requested: str, user: str | None = None) -> Route:
        """Where a request goes (`Route`); 404 when no model answers it.
        `production` resolves per request: to the production model, or to one arm of an
        active split by `user`'s sticky hash, and to the active shadow for its share of users
        (`ftray.routing`); named models are never split or shadowed. Loads nothing, so what
        depends only on the answering model (the completion cache) can be looked up before
        it loads."""
        asked = serve.get_multiplexed_model_id() or requested
        name = model_name(asked, self.base_name)
        split, shadow = False, None
        if name == PRODUCTION:
            from ftray.registry import history
            from ftray.routing import resolve, shadow_for

            # Read per request: a promotion, rollback or split applies without a redeploy.
            events = await asyncio.to_thread(history, self.store)
            name, split = resolve(events, user)
            if name is None:
                raise HTTPException(
                    404, f"no model is in production yet; available: {self.names()}"
                )
            shadow = shadow_for(events, user, name)
        if name == BASE_MODEL_NAME:
            return Route(BASE_MODEL_NAME, False, shadow)
        # Checked before Serve's loader: an unknown id must not evict a loaded model.
        if name is None or not (
            self.engine.has(name) or await asyncio.to_thread(self.store.is_complete, "models", name)
        ):
            raise HTTPException(404, f"model {asked[:100]!r} not found; available: {self.names()}")
        return Route(name, split, shadow)

    def names(self) -> list[str]:
        """The names a request may use: the base model and every complete registry model."""
        registered = [
            n for n in self.store.list_dirs("models") if self.store.is_complete("models", n)
        ]
        return [BASE_MODEL_NAME, *registered]

    async def _load(self, model_id: str) -> Loaded:
        card = await asyncio.to_thread(self.store.manifest, "models", model_id)
        mismatch = serving_mismatch(model_id, card, self.serving)
        if mismatch:  # served all the same: someone deployed it so (`ftray serve` says it too)
            _log.warning(mismatch)
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
                        await asyncio.to_thread(self.engine.load_full, model_id, folder)
        k = await asyncio.to_thread(retrieval_k, self.store, card)
        return Loaded(self.engine, model_id, card.get("system_prompt"), k)
