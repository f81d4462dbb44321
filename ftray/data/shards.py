"""Deduplication and the held-out split on key-owning shard actors, off the driver.

As the checked records pass through one Ray Data stage (`route`), each record's keys go to
the shard that owns them (a stable hash of the key, modulo the number of shards): its
normalised-text hash (exact), its prompt (conflicts), each LSH band (near), the record itself
with its MinHash signature, and its stratum (the split). Each shard applies `dedup`'s
vectorised block functions to the groups it owns, in rounds; a round's outputs are partitioned
by the owner of the next key and handed as object references to the next round, so records
and verdicts move between shards and never through the driver. Rounds:

  exact     per text: duplicates → verdicts to their records' owners; dropped ids to all
  conflict  per prompt: losers → verdicts; winners moved to a held-out split; lost ids to all
  near      per band: candidate pairs → the owner of the later record (its signature) → the
            owner of the earlier (its signature, the similarity) → the loser's owner (its
            best match, the verdict)
  split     per stratum: train records not taken, ranked by a salted prompt hash (`held_out`)

The driver keeps the actor handles and one small summary per shard (the validation rule
needs every stratum). `_assign` in prepare asks each record's owner for its outcome. The
verdicts do not depend on the number of shards: every group a rule needs lies whole in one
shard. Shards hold memory, not cores (`num_cpus=0`): their rounds run while nothing else
does.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict

import numpy as np
import pandas as pd

from ftray.data import dedup as rules
from ftray.data.checks import exact_key, prompt_key
from ftray.spec import DataSpec

# One shard per this many records read, unless data.dedup.shards says otherwise: a shard
# holds ~1.7 KB per record it owns (columns, a 512-byte signature, 16 band keys).
RECORDS_PER_SHARD = 500_000
# The columns of a checked record that `route` reads.
ROUTED = [*rules.COLUMNS[:-1], "exact_key", "band_keys", "signature", "messages", "completion"]
ROUTED += ["prompt"]
_OUTCOME = ["order", "rule", "reason", "split"]


def shard_count(data: DataSpec, records: int) -> int:
    """data.dedup.shards, else one shard per `RECORDS_PER_SHARD` lines read and at least as
    many as check actors (the rounds then use the cores the checks used)."""
    return data.dedup.shards or max(data.num_workers, math.ceil(records / RECORDS_PER_SHARD))


def owners(keys: pd.Series, shards: int) -> np.ndarray:
    """The shard owning each key: the same in every process (Python's `hash` is not)."""
    if keys.dtype.kind in "iu":
        return keys.to_numpy().astype(np.int64) % shards
    hashed = pd.util.hash_pandas_object(keys.reset_index(drop=True), index=False).to_numpy()
    return (hashed % np.uint64(shards)).astype(np.int64)


def by_owner(frame: pd.DataFrame, column: str, shards: int) -> list[pd.DataFrame]:
    """`frame` cut into one frame per shard, by the owner of `column`."""
    if frame.empty:
        return [frame] * shards
    owner = owners(frame[column], shards)
    return [frame[owner == k].reset_index(drop=True) for k in range(shards)]


def bucket(seed: int, prompt: str) -> int:
    """A prompt's rank key for the held-out split: salted, stable across runs, case and
    spacing ignored."""
    key = f"{seed}:{' '.join(prompt.lower().split())}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def route(block: pd.DataFrame, pool, data: dict, precedence: dict[str, int]) -> pd.DataFrame:
    """Ray Data stage: send each passing record's keys to their shards; returns a count."""
    spec = DataSpec.model_validate(data)
    dedup, k = spec.dedup, pool.size
    block = block.reset_index(drop=True)
    rows = block[rules.COLUMNS[:-1]].copy()
    rows["precedence"] = block["source"].map(precedence).astype("int64")
    parts: dict[str, list[pd.DataFrame]] = {}
    if dedup.exact:
        parts["exact"] = by_owner(rows.assign(exact_key=block["exact_key"]), "exact_key", k)
    if dedup.conflicts:
        prompts = rows.assign(
            prompt_key=[prompt_key(messages) for messages in block["messages"]],
            completion_key=[exact_key(completion) for completion in block["completion"]],
        )
        parts["prompt"] = by_owner(prompts, "prompt_key", k)
    if dedup.near:
        bands = block[["order", "band_keys"]].explode("band_keys").dropna()
        bands = bands.rename(columns={"band_keys": "band_key"}).astype({"order": "int64"})
        parts["band"] = by_owner(bands, "band_key", k)
        parts["record"] = by_owner(rows.assign(signature=block["signature"]), "order", k)
    train = block["origin"] == "train"
    split = pd.DataFrame(
        {
            "order": block.loc[train, "order"].astype("int64"),
            "bucket": np.array(
                [bucket(spec.seed, prompt) for prompt in block.loc[train, "prompt"]],
                dtype=np.uint64,
            ),
            "stratum": block.loc[train, "completion"] if spec.labels else "",
        }
    )
    parts["split"] = by_owner(split, "stratum", k)
    pool.wait(pool.call("add", [({kind: p[i] for kind, p in parts.items()},) for i in range(k)]))
    return pd.DataFrame({"routed": [len(block)]})


class Shard:
    """One shard's tables and rounds. A Ray actor in prepare; a plain object in unit tests.

    Rounds that pass data on return one frame per shard (the owner of the next key), plus
    the ids the other shards need to know as a last item where noted."""

    def __init__(self, shards: int, data: dict):
        self.shards = shards
        self.spec = DataSpec.model_validate(data)
        self.tables: dict[str, list[pd.DataFrame]] = defaultdict(list)
        self.outcomes: list[pd.DataFrame] = []
        self.lookup_table: pd.DataFrame | None = None

    def add(self, parts: dict[str, pd.DataFrame]) -> None:
        for kind, frame in parts.items():
            if len(frame):
                self.tables[kind].append(frame)

    def _table(self, kind: str, unique: list[str]) -> pd.DataFrame:
        frames = self.tables.get(kind)
        if not frames:
            return pd.DataFrame()
        # a retried Ray Data task may have sent its batch twice
        return pd.concat(frames, ignore_index=True).drop_duplicates(unique)

    def _out(self, *items):
        return items if len(items) > 1 else items[0]

    def exact(self):
        """Duplicates of a text: verdicts by owner, then every dropped id."""
        table = self._table("exact", ["order"])
        verdicts = rules.verdicts(rules.exact_block(table)) if len(table) else _no_verdicts()
        return self._out(*by_owner(verdicts, "order", self.shards), verdicts["order"].to_numpy())

    def conflicts(self, *dropped: np.ndarray):
        """Records losing a prompt's conflict: verdicts by owner, moves (a winner taking a
        held-out record's place) by owner, then every lost id and every moved id."""
        table = self._table("prompt", ["order"])
        moves = pd.DataFrame({"order": pd.Series(dtype="int64"), "split": pd.Series(dtype=str)})
        verdicts = _no_verdicts()
        if len(table):
            table = table[~table["order"].isin(_ids(dropped))]
            losers = rules.conflict_block(table)
            if len(losers):
                decided = [rules.conflict_verdict(row) for row in losers.to_dict("records")]
                verdicts = pd.DataFrame(
                    {
                        "order": losers["order"].astype("int64").to_numpy(),
                        "rule": [rule for rule, _ in decided],
                        "reason": [reason for _, reason in decided],
                    }
                )
                moved = losers[losers["winner_split"] != losers["match_origin"]]
                moves = pd.DataFrame(
                    {"order": moved["match_order"].astype("int64"), "split": moved["winner_split"]}
                ).drop_duplicates("order")
        return self._out(
            *by_owner(verdicts, "order", self.shards),
            *by_owner(moves, "order", self.shards),
            verdicts["order"].to_numpy(),
            moves["order"].to_numpy(),
        )

    def candidates(self):
        """Pairs of records sharing a band bucket, by the owner of the later record."""
        table = self._table("band", ["order", "band_key"])
        pairs = rules.distinct_pairs(rules.pairs_block(table)) if len(table) else _no_pairs()
        return self._out(*by_owner(pairs, "later", self.shards))

    def _records(self) -> pd.DataFrame:
        """The records this shard owns, their strings as categories (a join repeats a
        record once per pair: codes, not copies of its source path)."""
        records = self._table("record", ["order"])
        return (
            records.astype({"origin": "category", "source": "category"})
            if len(records)
            else records
        )

    def _with(self, pairs: pd.DataFrame, side: str, records: pd.DataFrame) -> pd.DataFrame:
        """Pairs joined with `records`' columns (not the signature) on `side`."""
        names = {c: f"{side}_{c}" for c in rules.COLUMNS}
        columns = records[rules.COLUMNS].rename(columns=names)
        joined = pairs.merge(columns, left_on=side, right_on=names["order"])
        return joined.drop(columns=[names["order"]])  # `side` holds the id

    def with_later(self, *parts: pd.DataFrame):
        """Pairs whose later record this shard owns, with its columns, by the owner of the
        earlier; then, by the same owners, the signature of each of those later records
        once, however many pairs it is in."""
        pairs = rules.distinct_pairs(pd.concat([_no_pairs(), *parts], ignore_index=True))
        if pairs.empty:
            return self._out(*[pairs] * self.shards, *[_no_signatures()] * self.shards)
        records = self._records()
        out = by_owner(self._with(pairs, "later", records), "earlier", self.shards)
        signatures = records[["order", "signature"]].set_index("order")["signature"]
        later = [signatures.loc[part["later"].unique()].reset_index() for part in out]
        return self._out(*out, *later)

    def judge(self, count: int, *args):
        """Pairs (the first `count` args) and their later records' signatures (the next
        `count`), completed with their earlier record, kept when similar; each as the record
        that loses it, by that record's owner. The other args: ids dropped (exact) and lost
        (conflicts)."""
        parts, signed, excluded = args[:count], args[count : 2 * count], args[2 * count :]
        pairs = pd.concat([frame for frame in parts if len(frame)] or [_no_pairs()])
        if pairs.empty:
            return self._out(*[pd.DataFrame()] * self.shards)
        later = pd.concat(signed, ignore_index=True).drop_duplicates("order")
        records = self._records()
        earlier = records[records["order"].isin(pairs["earlier"])]
        num_perm = self.spec.dedup.num_perm
        pairs = pairs.assign(
            similarity=rules.pair_similarity(
                rules.signature_matrix(later["signature"], num_perm),
                pd.Index(later["order"]).get_indexer(pairs["later"]),
                rules.signature_matrix(earlier["signature"], num_perm),
                pd.Index(earlier["order"]).get_indexer(pairs["earlier"]),
            )
        )
        similar = pairs[pairs["similarity"] >= self.spec.dedup.threshold]
        matches = self._with(similar, "earlier", records)
        dropped, lost = excluded[: self.shards], excluded[self.shards :]
        losers = rules.near_losers(matches, _ids(dropped), _ids(lost))
        return self._out(*by_owner(losers, "order", self.shards))

    def settle(self, *parts: pd.DataFrame) -> np.ndarray:
        """Near-duplicates this shard owns: each one's best match, its verdict kept here.
        Returns the dropped ids."""
        losers = pd.concat([frame for frame in parts if len(frame)] or [pd.DataFrame()])
        if losers.empty:
            return np.array([], dtype="int64")
        verdicts = rules.verdicts(rules.best_match(losers))
        self.receive(verdicts)
        return verdicts["order"].to_numpy()

    def receive(self, *frames: pd.DataFrame) -> None:
        """Outcomes of records this shard owns: (order, rule, reason) or (order, split)."""
        self.outcomes += [frame for frame in frames if len(frame)]

    def rank(self, *taken: np.ndarray):
        """The held-out split of the strata this shard owns (`held_out`), by owner, then a
        summary for the rule that needs every stratum."""
        table = self._table("split", ["order"])
        if len(table):
            table = table[~table["order"].isin(_ids(taken))]
        carved, summary = held_out(table, self.spec)
        return self._out(*by_owner(carved, "order", self.shards), summary)

    def lookup(self, orders: np.ndarray) -> pd.DataFrame:
        """The outcome of each record asked for: its rule and reason when a rule dropped it,
        its split when carved or moved ('' where nothing was decided)."""
        if self.lookup_table is None:
            frames = [_no_outcomes(), *self.outcomes]
            table = pd.concat(frames, ignore_index=True).fillna("")
            rules = table[table["rule"] != ""].drop_duplicates("order").set_index("order")
            splits = table[table["split"] != ""].drop_duplicates("order").set_index("order")
            self.lookup_table = rules[["rule", "reason"]].join(splits[["split"]], how="outer")
            self.lookup_table = self.lookup_table.fillna("")
        found = self.lookup_table.reindex(pd.Index(orders, name="order")).fillna("")
        return found.reset_index()


def held_out(table: pd.DataFrame, spec: DataSpec) -> tuple[pd.DataFrame, dict]:
    """(order, split) for the training-source records held out, and a summary of the rest.

    Per stratum (the label, or one for all) the records rank by their salted prompt hash,
    stable across runs: the lowest `eval_fraction` of them (rounded) go to eval unless
    `eval_sources` is given, then `validation_fraction` of the rest to validation unless
    `validation_sources` is given (exact stratification). The summary tells whether any
    validation record was carved, how many records are left and the first of them, for
    `force_validation`."""
    carved: list[tuple[int, str]] = []
    if len(table):
        for _, group in table.groupby("stratum"):
            ranked = group.sort_values(["bucket", "order"])["order"].astype("int64").tolist()
            n_eval = 0 if spec.eval_sources else round(len(ranked) * spec.eval_fraction)
            rest = len(ranked) - n_eval
            n_val = 0 if spec.validation_sources else round(rest * spec.validation_fraction)
            carved += [(order, "eval") for order in ranked[:n_eval]]
            carved += [(order, "validation") for order in ranked[n_eval : n_eval + n_val]]
    frame = pd.DataFrame(carved, columns=["order", "split"]).astype({"order": "int64"})
    left = table[~table["order"].isin(frame["order"])] if len(table) else table
    first = left.sort_values(["bucket", "order"]).iloc[0] if len(left) else None
    summary = {
        "validation": bool((frame["split"] == "validation").any()),
        "left": len(left),
        "first": None if first is None else (int(first["bucket"]), int(first["order"])),
    }
    return frame, summary


def force_validation(summaries: list[dict], spec: DataSpec) -> int | None:
    """The record that goes to validation when no stratum gave one and two or more records
    are left (checkpoints are always chosen on held-out data), else None."""
    if spec.validation_sources or any(s["validation"] for s in summaries):
        return None
    if sum(s["left"] for s in summaries) < 2:
        return None
    return min(s["first"] for s in summaries if s["first"] is not None)[1]


def _ids(arrays) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype="int64") for a in arrays] or [np.zeros(0, "int64")])


def _no_verdicts() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "order": pd.Series(dtype="int64"),
            "rule": pd.Series(dtype=str),
            "reason": pd.Series(dtype=str),
        }
    )


def _no_pairs() -> pd.DataFrame:
    return pd.DataFrame({"later": pd.Series(dtype="int64"), "earlier": pd.Series(dtype="int64")})


def _no_signatures() -> pd.DataFrame:
    return pd.DataFrame({"order": pd.Series(dtype="int64"), "signature": pd.Series(dtype=object)})


def _no_outcomes() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "order" else str) for c in _OUTCOME})


def decide(passing, data: DataSpec, precedence: dict[str, int], pool) -> None:
    """Route the passing records (a Ray Dataset) to the shards and run every round;
    afterwards each shard answers `lookup` for the records it owns (`outcomes`)."""
    passing.select_columns(ROUTED).map_batches(
        route,
        fn_kwargs={"pool": pool, "data": data.model_dump(mode="json"), "precedence": precedence},
        batch_format="pandas",
    ).materialize()
    run_rounds(pool, data)


def run_rounds(pool, data: DataSpec) -> None:
    """Every round, in order, on records already routed."""
    k = pool.size
    exact = pool.call("exact", [()] * k, k + 1)
    dropped = [out[k] for out in exact]
    conflicts = pool.call("conflicts", [tuple(dropped)] * k, 2 * k + 2)
    lost = [out[2 * k] for out in conflicts]
    moved = [out[2 * k + 1] for out in conflicts]
    # each shard receives what the others found about the records it owns
    received = pool.call(
        "receive",
        [
            tuple(out[i] for out in exact) + tuple(out[j] for out in conflicts for j in (i, k + i))
            for i in range(k)
        ],
    )
    near = []
    if data.dedup.near:
        pairs = pool.call("candidates", [()] * k, k)
        later = pool.call("with_later", [tuple(out[i] for out in pairs) for i in range(k)], 2 * k)
        judged = pool.call(
            "judge",
            [
                (k, *(out[i] for out in later), *(out[k + i] for out in later), *dropped, *lost)
                for i in range(k)
            ],
            k,
        )
        near = [
            out[0]
            for out in pool.call("settle", [tuple(out[i] for out in judged) for i in range(k)])
        ]
    ranked = pool.call("rank", [(*dropped, *lost, *moved, *near)] * k, k + 1)
    received += pool.call("receive", [tuple(out[i] for out in ranked) for i in range(k)])
    forced = force_validation(pool.get([out[k] for out in ranked]), data)
    if forced is not None:
        frame = pd.DataFrame({"order": [forced], "split": ["validation"]})
        parts = by_owner(frame, "order", k)
        received += pool.call("receive", [(part,) for part in parts])
    pool.wait(received)


def outcomes(pool, orders: np.ndarray) -> pd.DataFrame:
    """(order, rule, reason, split) of each record, from the shards that own them."""
    orders = np.asarray(orders, dtype="int64")
    owner = owners(pd.Series(orders), pool.size)
    asked = [(orders[owner == k],) for k in range(pool.size)]
    return pd.concat(pool.get([out[0] for out in pool.call("lookup", asked)]), ignore_index=True)


class RayPool:
    """The shards as Ray actors, spread over the nodes; a call's results stay references."""

    def __init__(self, data: DataSpec, shards: int):
        import ray

        actor = ray.remote(num_cpus=0, scheduling_strategy="SPREAD")(Shard)
        spec = data.model_dump(mode="json")
        self.actors = [actor.remote(shards, spec) for _ in range(shards)]
        self.size = shards

    def call(self, method: str, args: list[tuple], returns: int = 1) -> list[list]:
        out = []
        for actor, arguments in zip(self.actors, args, strict=True):
            refs = getattr(actor, method).options(num_returns=returns).remote(*arguments)
            out.append(list(refs) if returns > 1 else [refs])
        return out

    def get(self, refs: list):
        import ray

        return ray.get(refs)

    def wait(self, results: list[list]) -> None:
        self.get([ref for out in results for ref in out])

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)  # type: ignore[arg-type]


class LocalPool:
    """The shards as objects in this process (unit tests): the same rounds, called in turn."""

    def __init__(self, data: DataSpec, shards: int):
        spec = data.model_dump(mode="json")
        self.actors = [Shard(shards, spec) for _ in range(shards)]
        self.size = shards

    def call(self, method: str, args: list[tuple], returns: int = 1) -> list[list]:
        out = []
        for actor, arguments in zip(self.actors, args, strict=True):
            result = getattr(actor, method)(*arguments)
            out.append(list(result) if returns > 1 else [result])
        return out

    def get(self, values: list):
        return values

    def wait(self, results: list[list]) -> None:
        pass

    def close(self) -> None:
        pass
