"""Traffic splits of the `production` alias: canaries and A/B experiments between registry
models, recorded as registry events, and the per-request choice of an arm.

A split is a `canary` event (a candidate takes `percent` of production traffic, the
production model the rest) or an `experiment` event (model B takes `percent`, model A the
rest, whichever is in production), in the registry's log beside promotions and rollbacks
(`ftray.registry`). A new event with the same arms changes the percent; `end_split`, a
promotion or a rollback ends it.

Each request with a user key (the `X-Ftray-User` header, else the OpenAI `user` field) goes
to an arm by a hash of the key into [0, 100): below `percent` the candidate, else the
control. The hash is salted with the two arms, so one user keeps one arm for the split's
life, a user in a 10% canary stays in it at 20%, and each new split draws its own users.
A request with no key draws an arm at random.

A `shadow` event mirrors `percent` of production's users (the same sticky hash, salted with
the shadow model) to a shadow model: the user gets the production answer, the replica then
asks the shadow model the same question and records the pair (`ftray.serve.exchange`). A
shadow runs beside a split; `end_shadow` or the shadow model's promotion ends it.
"""

from __future__ import annotations

import hashlib
import random

from ftray.errors import UserError
from ftray.registry import (
    active_shadow,
    active_split,
    get_model,
    history,
    make_event,
    production_in,
    split_summary,
)
from ftray.store import Store


def canary(
    store: Store, model_id: str, *, percent: float, reason: str, auto: dict | None = None
) -> dict:
    """Send `percent` of production traffic to `model_id`, the rest to the production
    model; on an active canary of the same model, change its percent. `auto`: the
    `serve.rollout` rules by which `ftray.rollout.watch` promotes or rolls it back, recorded
    in the event."""
    _check_percent(percent, "--percent")
    _check_servable(store, model_id)

    def event(events: list[dict]) -> dict:
        current = production_in(events)
        if current is None:
            raise UserError(
                "no model is in production, so there is no traffic to split: promote one "
                "first (`ftray models promote`), or compare two models with "
                "`ftray models experiment`."
            )
        if current == model_id:
            raise UserError(
                f"{model_id} is already the production model; a canary needs another model."
            )
        _check_replaces(active_split(events), "canary", current, model_id, percent)
        details = {"auto": True, "rules": auto} if auto else {}
        return make_event(
            "canary",
            model_id,
            previous=None,
            reason=reason,
            control=current,
            percent=percent,
            **details,
        )

    return store.append_event(event, "registry")


def experiment(store: Store, a: str, b: str, *, percent: float = 50, reason: str) -> dict:
    """Split production traffic between models `a` (100 - `percent`) and `b` (`percent`),
    whichever model is in production; on an active experiment of the same two models,
    change the percent."""
    _check_percent(percent, "--split")
    if a == b:
        raise UserError(f"an experiment needs two different models; both arms are {a}.")
    for model_id in (a, b):
        _check_servable(store, model_id)

    def event(events: list[dict]) -> dict:
        _check_replaces(active_split(events), "experiment", a, b, percent)
        return make_event("experiment", b, previous=None, reason=reason, control=a, percent=percent)

    return store.append_event(event, "registry")


def end_split(store: Store, *, reason: str) -> dict:
    """End the active canary or experiment: production's traffic all goes to the
    production model again."""

    def event(events: list[dict]) -> dict:
        split = active_split(events)
        if split is None:
            raise UserError("no canary or experiment is active; `ftray models list` shows.")
        return make_event(
            "end_split",
            split["model_id"],
            previous=None,
            reason=reason,
            ended_split=split_summary(split),
        )

    return store.append_event(event, "registry")


def shadow(store: Store, model_id: str, *, percent: float, reason: str) -> dict:
    """Mirror `percent` of production traffic to `model_id` (its answers are recorded, never
    returned); on an active shadow of the same model, change its percent."""
    _check_percent(percent, "--percent")
    card = get_model(store, model_id)  # unknown or incomplete: its own clear error
    if card["stage"] == "rejected":
        raise UserError(f"the gate rejected {model_id}; a shadow of it would teach nothing new.")

    def event(events: list[dict]) -> dict:
        if production_in(events) == model_id:
            raise UserError(f"{model_id} is the production model; shadow another model.")
        active = active_shadow(events)
        if active and active["model_id"] != model_id:
            raise UserError(
                f"a shadow of {active['model_id']} is active ({active['percent']:g}%): end it "
                "first with `ftray models end-shadow JOB.yaml`."
            )
        if active and active["percent"] == percent:
            raise UserError(f"the shadow of {model_id} already mirrors {percent:g}%.")
        return make_event("shadow", model_id, previous=None, reason=reason, percent=percent)

    return store.append_event(event, "registry")


def end_shadow(store: Store, *, reason: str) -> dict:
    """End the active shadow: no more mirrored requests."""

    def event(events: list[dict]) -> dict:
        active = active_shadow(events)
        if active is None:
            raise UserError("no shadow is active; `ftray models history` shows the log.")
        return make_event("end_shadow", active["model_id"], previous=None, reason=reason)

    return store.append_event(event, "registry")


def shadow_for(events: list[dict], user: str | None, answered_by: str) -> str | None:
    """The model that also gets a `production` request from `user` answered by
    `answered_by`, or None: the active shadow for its share of users (a request with no key
    at random), never the model that already answered."""
    active = active_shadow(events)
    if active is None or active["model_id"] == answered_by:
        return None
    salt = f"shadow:{active['model_id']}"
    point = bucket(salt, user) if user else random.uniform(0, 100)
    return active["model_id"] if point < active["percent"] else None


def split_of(store: Store) -> dict | None:
    """The active canary or experiment event (see `ftray.registry.active_split`), or None."""
    return active_split(history(store))


def resolve(events: list[dict], user: str | None) -> tuple[str | None, bool]:
    """The model that answers a `production` request from `user` (a key, or None: a random
    arm), and whether a split chose it; None when nothing is in production."""
    split = active_split(events)
    if split is None:
        return production_in(events), False
    point = bucket(_salt(split), user) if user else random.uniform(0, 100)
    return (split["model_id"] if point < split["percent"] else split["control"]), True


def bucket(salt: str, user: str) -> float:
    """The user's place in [0, 100) for the split salted `salt`: the same for the same
    pair, uniform over users."""
    digest = hashlib.sha256(f"{salt}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def describe(split: dict) -> str:
    """One line on the split, for people."""
    rest = 100 - split["percent"]
    role = "canary" if split["action"] == "canary" else "B"
    control = "production" if split["action"] == "canary" else "A"
    return (
        f"{split['action']}: {split['model_id']} ({role}) {split['percent']:g}%, "
        f"{split['control']} ({control}) {rest:g}% of `production` traffic, since "
        f"{split['at']} by {split['by']}"
    )


def _salt(split: dict) -> str:
    # The arms, not the event: a percent change (a new event) keeps every user's place.
    return f"{split['action']}:{split['control']}/{split['model_id']}"


def _check_percent(percent: float, option: str) -> None:
    if not 0 < percent < 100:
        raise UserError(
            f"{option} {percent:g} is out of range: give a share strictly between 0 and 100 "
            "(`ftray models promote` sends a model all the traffic, `ftray models end-split` "
            "none)."
        )


def _check_servable(store: Store, model_id: str) -> None:
    """UserError unless `model_id` is a complete model whose gate passed."""
    card = get_model(store, model_id)  # unknown or incomplete: its own clear error
    gate = card.get("gate") or {}
    if gate.get("pending"):
        raise UserError(
            f"{model_id}'s gate awaits human review: settle it first (`ftray review decide`)."
        )
    if card["stage"] == "rejected" or (gate and not gate.get("passed")):
        failed = "; ".join(r["rule"] for r in gate.get("rules", []) if not r["passed"])
        raise UserError(
            f"the gate rejected {model_id} (failed: {failed or 'see its report'}); it takes no "
            "production traffic. `ftray models show` has its verdict."
        )


def _check_replaces(active: dict | None, kind: str, control: str, model_id: str, percent: float):
    """UserError unless a new `kind` split may replace `active`: only a percent change of
    the same split."""
    if active is None:
        return
    if (active["action"], active["control"], active["model_id"]) != (kind, control, model_id):
        raise UserError(
            f"a {active['action']} of {active['model_id']} is active ({active['percent']:g}%): "
            "end it first with `ftray models end-split JOB.yaml`."
        )
    if active["percent"] == percent:
        raise UserError(f"the {kind} of {model_id} already has {percent:g}% of the traffic.")
