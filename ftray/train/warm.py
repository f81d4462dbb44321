"""Warm starts (`train.init_from`): which registered model a run continues, checked on the
driver before any worker starts.

`pin_parent` resolves 'production' to the model id it means now and returns the train spec
with that id in `init_from`, so the parent is part of the run's (and a sweep's) identity: a
new production model makes a new run, the same parent reuses the finished one. Workers get
the parent's weights by URI (the registry's copy under `models/<model-id>/`), never as
tensors through Ray.

Pairings: an adapter parent continues as an adapter (lora, qlora, or dpo on either; the
same LoRA rank and target modules, since its weights are loaded into the new adapter), a
full model as a full fine-tune. An adapter cannot seed a full fine-tune (it is not merged)
and a full model cannot seed an adapter (the adapter would belong to that model, not to
`model.base`, which is what serving puts adapters on).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ftray.errors import UserError
from ftray.registry import get_model, production
from ftray.spec import ModelSpec, TrainSpec
from ftray.store import Store, download_dir


def pin_parent(spec: TrainSpec, model: ModelSpec, store: Store) -> TrainSpec:
    """`spec` with `init_from` resolved to a registered model id and checked against the
    spec; unchanged without `init_from`."""
    if spec.init_from is None:
        return spec
    model_id = production(store) if spec.init_from == "production" else spec.init_from
    if model_id is None:
        raise UserError(
            "train.init_from is 'production' but no model has been promoted yet in "
            f"{store.uri('models')}; remove train.init_from to train the first model from "
            "model.base, or set it to a model id (`ftray models list JOB.yaml`)."
        )
    try:
        card = get_model(store, model_id)
    except UserError as err:  # it says what is registered and how to list it
        raise UserError(f"train.init_from: {err}") from None
    _check(card, spec, model)
    return spec.model_copy(update={"init_from": model_id})


def parent_weights(spec: TrainSpec, store: Store) -> str | None:
    """The URI of the pinned parent's weights: its adapter folder or its model folder."""
    if spec.init_from is None:
        return None
    card = get_model(store, spec.init_from)
    return card[f"{card['kind']}_uri"]


@contextlib.contextmanager
def local_copy(uri: str | None) -> Iterator[str | None]:
    """The parent's weights folder on this machine: the store's own folder when the store
    is local, else a temporary copy (removed on exit: the engines load weights eagerly)."""
    if uri is None:
        yield None
        return
    import tempfile

    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="ftray-parent-") as folder:
        yield str(download_dir(uri, folder))


def _check(card: dict, spec: TrainSpec, model: ModelSpec) -> None:
    model_id, kind = card["model_id"], card["kind"]
    if card["base_model"] != model.base:
        raise UserError(
            f"train.init_from: {model_id} was tuned from {card['base_model']!r}, not model.base "
            f"{model.base!r}; set model.base: {card['base_model']} or pick a parent tuned from "
            f"{model.base!r}."
        )
    wants_adapter = spec.base_method != "full"
    if kind == "adapter" and not wants_adapter:
        raise UserError(
            f"train.init_from: {model_id} is a LoRA adapter and train.method full trains every "
            "weight of a whole model, which an adapter cannot seed; continue it with train."
            "method lora, qlora or dpo, or give a fully fine-tuned parent."
        )
    if kind == "model" and wants_adapter:
        raise UserError(
            f"train.init_from: {model_id} is a fully fine-tuned model and train.method "
            f"{spec.method} trains an adapter on model.base, which cannot start from it; use "
            "train.method full, or give an adapter parent."
        )
    shape = card.get("lora")
    if kind == "adapter" and shape is not None:
        asked = {"r": spec.lora.r, "target_modules": spec.lora.target_modules}
        had = {"r": shape["r"], "target_modules": shape["target_modules"]}
        if asked != had:
            raise UserError(
                f"train.init_from: {model_id}'s adapter has r={had['r']} and target_modules="
                f"{had['target_modules']}, train.lora asks for r={asked['r']} and "
                f"target_modules={asked['target_modules']}; its weights only load into an "
                f"adapter of the same shape: set train.lora.r: {had['r']} and "
                f"train.lora.target_modules: {had['target_modules']}, or remove train.init_from."
            )
