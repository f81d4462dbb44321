"""The model registry: model cards linking weights, dataset, run, spec, code and eval, and
an append-only log of promotions, rejections, rollbacks and traffic splits that says which
model is in production (and which share of its traffic a canary or experiment takes:
`ftray.routing`).

Cards never change once written. A model's stage is read from the log: `production` (the
current one), `archived` (was production), `rejected` (the gate said no), `canary` or
`experiment` (an arm of the active split, unless it is production), `shadow` (mirrored by the
active shadow), or `candidate`.
Events live one per file under `registry/`, numbered in log order (`Store.append_event`):
each decision is checked against the log it extends, so of two concurrent promotions neither
is lost, and the second is decided again with the first in place. The writers' clocks play
no part in the order.
"""

from __future__ import annotations

from ftray.errors import UserError
from ftray.store import Store, code_version, content_id, current_user, utc_stamp


def register(
    store: Store,
    *,
    run_id: str,
    weights_uri: str,
    kind: str,
    dataset_id: str,
    eval_id: str,
    metrics: dict,
    gate: dict,
    spec_hash: str,
    base_model: str,
    system_prompt: str | None,
    parent: str | None = None,
    lora: dict | None = None,
    chat_template: str | None = None,
    serving: dict | None = None,
) -> dict:
    """Copy the run's weights into `models/<model-id>/<kind>` (an adapter, or a full model)
    and write its model card. `parent`: the model the run started from (`train.init_from`);
    `lora`: an adapter's rank and target modules (what a warm start from it must match);
    `chat_template`: the model.chat_template it was trained with (None: the tokenizer's own).
    `serving`: the base quantization and dtype its evaluation loaded (what the gate approved).

    The model id is derived from the run and the evaluation, so registering the same pair
    again returns the existing card.
    """
    model_id = content_id("model", run_id, eval_id)
    if store.is_complete("models", model_id):
        return store.manifest("models", model_id)
    import fsspec

    fs_src, src = fsspec.core.url_to_fs(weights_uri)
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
        "base_model": base_model,
        "parent": parent,
        "dataset_id": dataset_id,
        "run_id": run_id,
        "eval_id": eval_id,
        "spec_hash": spec_hash,
        "code_version": code_version(),
        "metrics": metrics,
        "gate": gate,
        "system_prompt": system_prompt,
        "kind": kind,
        f"{kind}_uri": store.uri("models", model_id, kind),
        "lora": lora,
        "chat_template": chat_template,
        "serving": serving,
    }
    return store.finish(card, "models", model_id)


def list_models(store: Store) -> list[dict]:
    """Every registered model card with its current `stage` and `gate`, oldest first."""
    stages = _stages(store)
    return [_as_now(store, card, stages) for card in store.manifests("models")]


def get_model(store: Store, model_id: str) -> dict:
    """One model card; a clear error listing what exists when there is no such model."""
    if not store.is_complete("models", model_id):
        known = [card["model_id"] for card in list_models(store)] or ["(none yet)"]
        raise UserError(
            f"no model {model_id!r} in {store.uri('models')}; registered: {', '.join(known)}. "
            "`ftray models list JOB.yaml` shows them."
        )
    return _as_now(store, store.manifest("models", model_id), _stages(store))


def lineage(store: Store, model_id: str) -> list[str]:
    """The chain a model was trained along: its id, its parent's, and so on, then the base
    model's name."""
    chain, card = [model_id], get_model(store, model_id)
    while card.get("parent"):
        if card["parent"] in chain:  # cards are content-addressed; a loop means corruption
            raise UserError(f"model {card['parent']} is its own ancestor: {' → '.join(chain)}")
        chain.append(card["parent"])
        card = get_model(store, card["parent"])
    return [*chain, card["base_model"]]


def _as_now(store: Store, card: dict, stages: dict[str, str]) -> dict:
    """The card with its `stage` from the log and its gate's verdict as its evaluation now
    holds it: a changed `eval.gate` re-applied to the stored evaluation replaces the one the
    card was registered with."""
    gate = card.get("gate")
    if store.is_complete("evals", card["eval_id"]):
        gate = store.manifest("evals", card["eval_id"])["gate"]
    return {**card, "gate": gate, "stage": stages.get(card["model_id"], "candidate")}


def history(store: Store) -> list[dict]:
    """Every registry event (promote, reject, rollback, canary, experiment, end_split,
    shadow, end_shadow), oldest first."""
    return store.read_events("registry")


def production(store: Store) -> str | None:
    """The production model's id, or None before the first promotion."""
    return production_in(history(store))


def active_split(events: list[dict]) -> dict | None:
    """The `canary` or `experiment` event whose split of `production` traffic is in force
    after `events` (the latest one: a percent change is a new event), or None. An
    `end_split`, a promotion or a rollback ends a split, and so does the gate rejecting one
    of its arms (a rejected model takes no production traffic)."""
    split = None
    for event in events:
        if event["action"] in SPLITS:
            split = event
        elif event["action"] in ("promote", "rollback", "end_split") or (
            event["action"] == "reject"
            and split is not None
            and event["model_id"] in (split["model_id"], split["control"])
        ):
            split = None
    return split


def active_shadow(events: list[dict]) -> dict | None:
    """The `shadow` event in force after `events`, or None: `end_shadow` ends it, and so
    does the shadow model's promotion (it answers for real then)."""
    found = None
    for event in events:
        if event["action"] == "shadow":
            found = event
        elif found is not None and (
            event["action"] == "end_shadow"
            or (event["action"] == "promote" and event["model_id"] == found["model_id"])
        ):
            found = None
    return found


def promote(store: Store, model_id: str, *, reason: str, force: bool = False) -> dict:
    """Make `model_id` the production model; the gate's rejection stands unless `force`."""
    card = get_model(store, model_id)
    if production(store) == model_id:
        raise UserError(f"{model_id} is already the production model.")
    gate = card.get("gate") or {}
    if gate and not gate.get("passed") and not force:
        failed = "; ".join(r["rule"] for r in gate["rules"] if not r["passed"])
        raise UserError(
            f"the gate rejected {model_id} (failed: {failed}). Promote it anyway with "
            "`ftray models promote --force`, after reading its report."
        )

    def event(events: list[dict]) -> dict:
        current = production_in(events)
        if current == model_id:  # a concurrent promotion of the same model won
            raise UserError(f"{model_id} is already the production model.")
        split = active_split(events)  # ended by the promotion: the event says which
        ended = {"ended_split": split_summary(split)} if split else {}
        return make_event("promote", model_id, previous=current, reason=reason, **ended)

    return store.append_event(event, "registry")


def reject(store: Store, model_id: str, *, reason: str) -> dict:
    """Record that the gate turned `model_id` down; production is unchanged."""

    def event(events: list[dict]) -> dict:
        return make_event("reject", model_id, previous=production_in(events), reason=reason)

    return store.append_event(event, "registry")


def rollback(store: Store, *, to: str | None = None, reason: str) -> dict:
    """Put back the model that was production before the current one (or `to`, any earlier
    production model still below it), and record it. While a canary or experiment is
    active, end it instead (an `end_split` event saying it was rolled back): all of
    `production`'s traffic goes back to the production model, which stays."""

    def event(events: list[dict]) -> dict:
        split = active_split(events)
        if split and to:
            raise UserError(
                f"a {split['action']} of {split['model_id']} is active: roll it back first "
                "(`ftray models rollback` without --to), then roll production back."
            )
        if split:
            return make_event(
                "end_split",
                split["model_id"],
                previous=None,
                reason=f"rolled back: {reason}",
                ended_split=split_summary(split),
            )
        stack = _production_stack(events)
        if len(stack) < 2:
            only = f"{stack[0]} is the only model ever promoted" if stack else ""
            raise UserError(f"nothing to roll back to: {only or 'no model has been promoted yet'}.")
        target = to or stack[-2]
        if target not in stack[:-1]:
            raise UserError(
                f"{target} was not production before {stack[-1]}; roll back to one of: "
                + ", ".join(reversed(stack[:-1]))
            )
        return make_event("rollback", target, previous=stack[-1], reason=reason)

    return store.append_event(event, "registry")


def apply_verdict(
    store: Store, model_id: str, gate: dict, *, eval_id: str, auto_promote: bool
) -> str:
    """Apply the gate's verdict on a registered candidate to the registry, once.

    An undecided model is rejected when the gate fails, and promoted when it passes and
    `auto_promote` (`eval.gate.promote`). A decided one follows a changed gate only upward:
    a rejected model that now passes is promoted (with `auto_promote`); production is never
    taken down automatically, since that changes what is served.

    Returns what happened, for the caller to tell the user: 'pending' (a human rule awaits
    ratings; nothing recorded), 'promoted', 'rejected', 'unchanged', 'now_passes' (rejected,
    the changed gate passes it, left for `ftray models promote`) or 'rejects_production'
    (the changed gate rejects the production model, left in production).
    """
    if gate.get("pending"):
        return "pending"
    if not was_decided(store, model_id):
        if not gate["passed"]:
            failed = [r["rule"] for r in gate["rules"] if not r["passed"]]
            reject(store, model_id, reason="gate failed: " + "; ".join(failed))
            return "rejected"
        if auto_promote:
            promote(store, model_id, reason=f"gate passed in {eval_id}")
            return "promoted"
        return "unchanged"
    stage = _stages(store).get(model_id, "candidate")
    if gate["passed"] and stage == "rejected":
        if not auto_promote:
            return "now_passes"
        promote(store, model_id, reason=f"gate re-applied to {eval_id}: passed")
        return "promoted"
    if not gate["passed"] and stage == "production":
        return "rejects_production"
    return "unchanged"


def was_decided(store: Store, model_id: str) -> bool:
    """Whether a decision (promote, reject, rollback) names `model_id`; a traffic split is
    no decision on the model."""
    return any(
        model_id in (e["model_id"], e.get("previous"))
        for e in history(store)
        if e["action"] in DECISIONS
    )


# The actions that decide production; traffic splits (`ftray.routing`) only share it.
DECISIONS = ("promote", "reject", "rollback")
SPLITS = ("canary", "experiment")


def make_event(action: str, model_id: str, *, previous, reason: str, **details) -> dict:
    """One registry event; `at` is for people, the log's order is its sequence."""
    return {
        "action": action,
        "model_id": model_id,
        "previous": previous,
        "reason": reason,
        **details,
        "at": utc_stamp(),
        "by": current_user(),
    }


def split_summary(split: dict) -> dict:
    """What a promotion or rollback records of the split it ended."""
    return {key: split[key] for key in ("action", "model_id", "control", "percent")}


def _production_stack(events: list[dict]) -> list[str]:
    """Replays the log: a promotion pushes, a rollback pops down to its target."""
    stack: list[str] = []
    for event in events:
        if event["action"] == "promote":
            stack.append(event["model_id"])
        elif event["action"] == "rollback":
            while stack and stack[-1] != event["model_id"]:
                stack.pop()
    return stack


def production_in(events: list[dict]) -> str | None:
    """The production model's id after `events`, or None before the first promotion."""
    stack = _production_stack(events)
    return stack[-1] if stack else None


def _stages(store: Store) -> dict[str, str]:
    events = history(store)
    stages: dict[str, str] = {}
    for event in events:
        if event["action"] == "reject":
            stages.setdefault(event["model_id"], "rejected")
        elif event["action"] in DECISIONS:
            stages[event["model_id"]] = "archived"
            if event.get("previous"):
                stages[event["previous"]] = "archived"
    stack = _production_stack(events)
    if stack:
        stages[stack[-1]] = "production"
    split = active_split(events)
    if split:
        for arm in (split["model_id"], split["control"]):
            if stages.get(arm) != "production":  # `canary` or `experiment` while it runs
                stages[arm] = split["action"]
    mirrored = active_shadow(events)
    if mirrored and stages.get(mirrored["model_id"]) in (None, "archived"):
        stages[mirrored["model_id"]] = "shadow"
    return stages
