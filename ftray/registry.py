"""The model registry: model cards linking adapter, dataset, run, spec, code and eval."""

from __future__ import annotations

from ftray.errors import UserError
from ftray.store import Store, code_version, content_id


def register(
    store: Store,
    *,
    run_id: str,
    weights_uri: str,
    kind: str,
    dataset_id: str,
    eval_id: str,
    metrics: dict,
    spec_hash: str,
    base_model: str,
    system_prompt: str | None,
) -> dict:
    """Copy the run's weights into `models/<model-id>/<kind>` (an adapter, or a full model)
    and write its model card.

    The model id is derived from the run and the evaluation, so registering the same pair
    again returns the existing card.
    """
    model_id = content_id("model", run_id, eval_id)
    if store.is_complete("models", model_id):
        return store.manifest("models", model_id)
    fs_src, src = _fs(weights_uri)
    target = store.path("models", model_id, kind)
    store.fs.makedirs(target, exist_ok=True)
    for path in fs_src.find(src):
        relative = path[len(src.rstrip("/")) :].lstrip("/")
        with (
            fs_src.open(path, "rb") as reader,
            store.fs.open(f"{target}/{relative}", "wb") as writer,
        ):
            writer.write(reader.read())
    card = {
        "model_id": model_id,
        "stage": "candidate",
        "base_model": base_model,
        "dataset_id": dataset_id,
        "run_id": run_id,
        "eval_id": eval_id,
        "spec_hash": spec_hash,
        "code_version": code_version(),
        "metrics": metrics,
        "system_prompt": system_prompt,
        "kind": kind,
        f"{kind}_uri": store.uri("models", model_id, kind),
    }
    return store.finish(card, "models", model_id)


def list_models(store: Store) -> list[dict]:
    """Every registered model card, oldest first."""
    return store.manifests("models")


def get_model(store: Store, model_id: str) -> dict:
    """One model card; a clear error listing what exists when there is no such model."""
    if not store.is_complete("models", model_id):
        known = [card["model_id"] for card in list_models(store)] or ["(none yet)"]
        raise UserError(
            f"no model {model_id!r} in {store.uri('models')}; registered: {', '.join(known)}. "
            "`ftray models list JOB.yaml` shows them."
        )
    return store.manifest("models", model_id)


def _fs(uri: str):
    import fsspec

    return fsspec.core.url_to_fs(uri)
