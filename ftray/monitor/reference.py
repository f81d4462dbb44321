"""What each served model's sampled traffic is checked against (`ftray monitor`).

A registry model's reference is its own: the train split of the dataset its card names
(prompts and completions) and its answers to the held-out set in its evaluation (answer
lengths). The base model was trained on nothing of the job's: it is checked against the
job's newest dataset (no answer lengths), labelled as such. Samples that name no model
(files written before the sampler recorded it) are checked together, as before monitoring
went per model, against the production model's reference. A model the registry does not
know has no reference: only the checks that need none run for it.
"""

from __future__ import annotations

from ftray.errors import UserError
from ftray.serve.openai_format import BASE_MODEL_NAME
from ftray.store import Store

REFERENCE_ROWS = 2000
UNRECORDED = "unrecorded"  # the `model` of samples from files without that column
NONE: dict = {"dataset_id": None, "prompts": [], "labels": [], "lengths": []}


def references(store: Store, models: list[str], production: str | None) -> dict[str, dict]:
    """{model: its reference}: `label` (for people), `dataset_id`, training `prompts` and
    `labels` (completions), held-out answer `lengths` (tokens)."""
    trains: dict[str, tuple[list, list]] = {}  # one read per dataset, shared by its models
    found = {}
    for model in models:
        if model == BASE_MODEL_NAME:
            found[model] = _newest(store, trains, "the base model has no training set of its own")
        elif model == UNRECORDED:
            found[model] = (
                _registered(store, trains, production, "the production model's")
                if production
                else _newest(store, trains, "no production model")
            )
        else:
            found[model] = _registered(store, trains, model, "its own")
    return found


def _registered(store: Store, trains: dict, model_id: str, whose: str) -> dict:
    import pyarrow.parquet as pq

    from ftray.registry import get_model

    try:
        card = get_model(store, model_id)
    except UserError:  # deleted, or a name the registry never had: no reference to compare
        return {**NONE, "label": f"none ({model_id} is not in the registry)"}
    outputs = store.uri("evals", card["eval_id"], "outputs")
    lengths = pq.read_table(outputs, columns=["candidate_tokens"]).column(0).to_pylist()
    dataset_id = card["dataset_id"]
    return {
        "label": f"{whose}: dataset {dataset_id}, evaluation {card['eval_id']}",
        **_train(store, trains, dataset_id),
        "lengths": lengths,
    }


def _newest(store: Store, trains: dict, why: str) -> dict:
    datasets = store.manifests("datasets")
    if not datasets:
        return {**NONE, "label": "none (no dataset yet)"}
    dataset_id = datasets[-1]["dataset_id"]
    return {
        "label": f"the newest dataset {dataset_id} ({why})",
        **_train(store, trains, dataset_id),
        "lengths": [],
    }


def _train(store: Store, trains: dict, dataset_id: str) -> dict:
    import pyarrow.parquet as pq

    if dataset_id not in trains:
        uri = store.uri("datasets", dataset_id, "train")
        train = pq.read_table(uri, columns=["prompt", "completion"]).to_pandas()
        train = train.head(REFERENCE_ROWS)
        trains[dataset_id] = (list(train["prompt"]), list(train["completion"]))
    prompts, labels = trains[dataset_id]
    return {"dataset_id": dataset_id, "prompts": prompts, "labels": labels}
