"""Preference tuning without Ray: the DPO loss, pair records, the spec rules, the loop."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ftray.data.records import CheckRecords
from ftray.data.tokenize import IGNORE_INDEX, messages_for, tokenize_example
from ftray.models import load_tokenizer, resolve_model
from ftray.spec import DataSpec, ModelSpec, TrainSpec
from ftray.specload import SpecError, validate_spec
from ftray.store import Store
from ftray.train.context import LocalContext
from ftray.train.dpo import (
    PAIR_COLUMNS,
    collate_pairs,
    dpo_loss,
    frozen_reference,
    pair_loss_sum,
    sequence_logps,
    step_loss,
)
from ftray.train.methods import AdapterEngine, DeepSpeedEngine
from tests.unit.test_train_loop import process_group  # noqa: F401 (a fixture DeepSpeed needs)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return resolve_model(ModelSpec(base="tiny"), Store(str(tmp_path_factory.mktemp("s")), "t"))


def test_dpo_loss_matches_a_hand_computation():
    # pair 1: the policy gained 2 nats on chosen and lost 1 on rejected against the reference
    # pair 2: it moved the wrong way by 0.5 on each
    policy_chosen, ref_chosen = torch.tensor([-3.0, -5.0]), torch.tensor([-5.0, -4.5])
    policy_rejected, ref_rejected = torch.tensor([-7.0, -2.5]), torch.tensor([-6.0, -3.0])
    losses, margins = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, 0.1)
    # margins: 0.1 × ((2) - (-1)) = 0.3 and 0.1 × ((-0.5) - (0.5)) = -0.1
    assert margins.tolist() == pytest.approx([0.3, -0.1])
    expected = [math.log(1 + math.exp(-0.3)), math.log(1 + math.exp(0.1))]
    assert losses.tolist() == pytest.approx(expected)


def test_sequence_logps_sum_the_label_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1], [IGNORE_INDEX, 2, 4, IGNORE_INDEX]])
    logp = logits.log_softmax(-1)
    # the token at position t is predicted by the logits at t - 1
    expected = [logp[0, 1, 3] + logp[0, 2, 1], logp[1, 0, 2] + logp[1, 1, 4]]
    assert sequence_logps(logits, labels).tolist() == pytest.approx([float(v) for v in expected])


def _record(fields, row=1):
    return {
        "source": "pairs.jsonl",
        "row": row,
        "read": 1,
        "order": row,
        "origin": "train",
        "fields": json.dumps(fields),
        "raw": json.dumps(fields),
        "error": None,
        "blank": False,
    }


def test_pair_records_are_checked_and_tokenized_as_sft_records(tiny_dir):
    spec = DataSpec(
        sources=[{"path": "pairs.jsonl"}],
        labels=["red", "blue"],
        preference={"chosen_field": "good", "rejected_field": "bad"},
    )
    checker = CheckRecords(spec.model_dump(mode="json"), tiny_dir)
    out = checker.one(_record({"prompt": "mail a@b.io: sky?", "good": "blue", "bad": "red"}))
    assert out["rule"] == "", out["reason"]
    assert (out["completion"], out["rejected"]) == ("blue", "red")
    tokenizer = load_tokenizer(tiny_dir)
    messages = json.loads(out["messages"])
    assert messages[-1]["content"] == "mail [EMAIL]: sky?"
    for answer, ids, labels in (
        ("blue", out["input_ids"], out["labels"]),
        ("red", out["rejected_input_ids"], out["rejected_labels"]),
    ):
        assert ids == tokenize_example(tokenizer, messages, answer)["input_ids"]
        answer_ids = [t for t in labels if t != IGNORE_INDEX]
        assert tokenizer.decode(answer_ids).startswith(answer), "labels cover the answer only"
    # the contract binds the chosen answer; a rejected one may break it (that is why it lost)
    loose = checker.one(_record({"prompt": "sky?", "good": "blue", "bad": "a plane"}))
    assert (loose["rule"], loose["weight"]) == ("", 1.0), "no weight field: weight 1"
    for given, weight in ((0.25, 0.25), (0, 0.0), ("0.5", 0.5), ("", 1.0)):  # "0.5": a csv cell
        fields = {"prompt": "sky?", "good": "blue", "bad": "red", "weight": given}
        assert checker.one(_record(fields))["weight"] == weight
    cases = [
        ({"prompt": "sky?", "good": "blue"}, "missing_field", "'bad'"),
        ({"prompt": "sky?", "good": "blue", "bad": " "}, "empty_field", "'bad'"),
        ({"prompt": "sky?", "good": "green", "bad": "red"}, "label_not_allowed", "green"),
        ({"prompt": "sky?", "good": "blue", "bad": "blue"}, "same_answers", "same"),
        ({"prompt": "sky?", "good": "blue", "bad": "bullshit"}, "toxic", ""),
        ({"prompt": "sky?", "good": "blue", "bad": "red", "weight": -1}, "wrong_type", "≥ 0"),
        (
            {"prompt": "sky?", "good": "blue", "bad": "red", "weight": "lots"},
            "wrong_type",
            "'weight'",
        ),
        ({"prompt": "sky?", "good": "blue", "bad": "red", "weight": True}, "wrong_type", "True"),
    ]
    for fields, rule, said in cases:
        out = checker.one(_record(fields))
        assert (out["rule"], said in out["reason"]) == (rule, True), out["reason"]
    # a duplicate is the same prompt and the same two answers, not the prompt alone
    keys = {
        checker.one(_record({"prompt": "sky?", "good": "blue", "bad": bad}))["exact_key"]
        for bad in ("red", "a plane", "red")
    }
    assert len(keys) == 2


BASE = {
    "project": "demo",
    "model": {"base": "tiny"},
    "data": {"sources": [{"path": "pairs.jsonl"}], "preference": {}},
    "train": {"method": "dpo", "batch_size": 4},
}


@pytest.mark.parametrize(
    ("change", "where", "text"),
    [
        ({"data": {"sources": [{"path": "x.csv"}]}}, "train.method", "data.preference"),
        ({"train": {"method": "lora"}}, "data.preference", "train.method: dpo"),
        ({"train": {"method": "dpo", "packing": True}}, "train.packing", "packing: false"),
        ({"train": {"method": "dpo", "dpo": {"adapter": "none"}}}, "train.dpo.adapter", "full"),
        (
            {"train": {"method": "dpo", "dpo": {"adapter": "full"}, "deepspeed": {"stage": 3}}},
            "train.deepspeed.stage",
            "stage: 2",
        ),
        ({"train": {"method": "dpo", "dpo": {"beta": 0}}}, "train.dpo.beta", "greater than"),
        ({"train": {"method": "lora", "dpo": {"beta": 0.2}}}, "train.dpo", "only"),
        (
            {"data": {"sources": [{"path": "x"}], "preference": {}, "messages_field": "chat"}},
            "data.preference",
            "messages_field",
        ),
    ],
)
def test_spec_rules(change, where, text):
    raw = {**BASE, **change}
    if change.get("train", {}).get("method") == "lora":
        raw["data"] = {"sources": [{"path": "x.csv"}]} if "dpo" in change["train"] else BASE["data"]
    with pytest.raises(SpecError) as caught:
        validate_spec(raw, [])
    problems = {p.path: f"{p.rule} {p.fix}" for p in caught.value.problems}
    assert where in problems, problems
    assert text in problems[where]


def test_qlora_settings_apply_to_a_dpo_qlora_adapter():
    raw = {**BASE, "train": {**BASE["train"], "dpo": {"adapter": "qlora"}, "qlora": {"bits": 8}}}
    spec = validate_spec(raw, [])
    assert (spec.train.base_method, spec.train.qlora.bits) == ("qlora", 8)


def test_full_dpo_is_a_deepspeed_zero2_run():
    raw = {**BASE, "train": {**BASE["train"], "dpo": {"adapter": "full"}, "deepspeed": {}}}
    spec = validate_spec(raw, [])
    assert (spec.train.base_method, spec.train.deepspeed.stage) == ("full", 2)


def _batch(tokenizer, answers, weights):
    """A pair batch of 'is N a number?' prompts: (chosen, rejected) answers, with weights."""
    raw: dict = {key: [] for key in PAIR_COLUMNS}
    for i, (good, bad) in enumerate(answers):
        messages = messages_for(f"is {i} a number?", "Answer.")
        chosen, rejected = (tokenize_example(tokenizer, messages, a) for a in (good, bad))
        raw["input_ids"].append(chosen["input_ids"])
        raw["labels"].append(chosen["labels"])
        raw["rejected_input_ids"].append(rejected["input_ids"])
        raw["rejected_labels"].append(rejected["labels"])
    raw["weight"] = weights
    return collate_pairs(raw)


def test_pair_weights_make_a_weighted_mean_and_weight_0_teaches_nothing(tiny_dir):
    from ftray.models import load_model

    torch.manual_seed(0)
    policy = load_model(tiny_dir, "float32")
    with torch.no_grad():  # move the policy off the reference, so the pairs' losses differ
        for param in policy.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    reference = frozen_reference(tiny_dir, "float32", "cpu")
    tokenizer = load_tokenizer(tiny_dir)
    answers = [("yes", "no"), ("maybe so", "no"), ("yes", "never")]
    batch = _batch(tokenizer, answers, [1.0, 0.5, 0.0])

    # by hand: each pair's loss from its own sequences, then Σ w·loss / Σ w
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        mine = sequence_logps(policy(**inputs).logits, batch["labels"])
        ref = sequence_logps(reference(**inputs), batch["labels"])
    losses, _ = dpo_loss(mine[:3], mine[3:], ref[:3], ref[3:], 0.1)
    assert len(set(round(v, 4) for v in losses.tolist())) == 3, "the pairs' losses differ"
    expected = (1.0 * losses[0] + 0.5 * losses[1] + 0.0 * losses[2]) / 1.5
    loss = step_loss(policy, reference, batch, 0.1, batch["weights"].sum())
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)

    # the weight-0 pair adds no gradient: the same as the batch without it
    def gradient(pair_batch):
        policy.zero_grad()
        step_loss(policy, reference, pair_batch, 0.1, pair_batch["weights"].sum()).backward()
        return torch.cat([p.grad.flatten() for p in policy.parameters()])

    with_zero = gradient(batch)
    without = gradient(_batch(tokenizer, answers[:2], [1.0, 0.5]))
    assert with_zero.abs().sum() > 0
    torch.testing.assert_close(with_zero, without, atol=1e-6, rtol=1e-4)
    # a step whose pairs all weigh 0: loss 0 and no gradient, not 0/0
    assert gradient(_batch(tokenizer, answers[2:], [0.0])).abs().sum() == 0
    assert all(not p.requires_grad for p in reference.__closure__[0].cell_contents.parameters())


def _pairs(folder, tokenizer, n):
    """'is N a number?' → chosen 'yes', rejected 'no', weight 1."""
    rows = []
    for i in range(n):
        right, wrong = "yes", "no"
        messages = messages_for(f"is {i} a number?", "Answer.")
        good, bad = (tokenize_example(tokenizer, messages, a) for a in (right, wrong))
        rows.append(
            {
                "input_ids": good["input_ids"],
                "labels": good["labels"],
                "rejected_input_ids": bad["input_ids"],
                "rejected_labels": bad["labels"],
                "weight": 1.0,
            }
        )
    for split in ("train", "validation"):
        (folder / split).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / split / "part.parquet")


def test_dpo_starts_at_log2_and_steps_move_the_margins(tiny_dir, tmp_path):
    """The reference is the base with the adapter off: at the start the policy equals it
    (LoRA's B is zero), so every margin is 0 and the loss log 2; optimizer steps on the
    DPO loss move the margins positive."""
    _pairs(tmp_path / "ds", load_tokenizer(tiny_dir), 16)
    ctx = LocalContext(str(tmp_path / "ds"), str(tmp_path / "ckpt"), columns=PAIR_COLUMNS)
    spec = TrainSpec.model_validate(
        {
            "method": "dpo",
            "dpo": {"beta": 0.5},
            "epochs": 4,
            "batch_size": 8,
            "lr": 2e-2,
            "warmup_ratio": 0,
            "log_every": 1,
            "lora": {"dropout": 0.0},
            "scaling": {"num_workers": 1},
        }
    )
    engine = AdapterEngine(spec, tiny_dir, "float32", ctx, total_steps=1)
    batch = collate_pairs(next(ctx.batches("validation", 16, 0)))
    with torch.no_grad():
        loss, margins = pair_loss_sum(engine.model, engine.reference, batch, 0.5)
    assert margins.abs().max() < 1e-5 and float(loss) == pytest.approx(16 * math.log(2))

    # a few steps on the same pairs: the policy ranks the chosen answers above the rejected
    for _ in range(4):
        engine.micro_step(batch, True, torch.tensor(16.0), 1)
    with torch.no_grad():
        trained, margins = pair_loss_sum(engine.model, engine.reference, batch, 0.5)
    assert float(trained) < float(loss) and (margins > 0).float().mean() >= 0.75, margins


def test_review_ratings_become_preference_pairs(tmp_path, capsys):
    """Per item the arm with more votes (each reviewer's latest rating) is chosen; ties,
    'both bad' and split votes are dropped; the weight is the agreement, (winner's votes -
    loser's) / votes for either arm; `ftray review pairs` writes the file."""
    from ftray.cli import main
    from ftray.review.ratings import EvalPairs, RatingLog, candidate_side
    from tests.unit.review_eval import write_eval, write_job

    job = write_job(tmp_path, {})
    store = Store(str(tmp_path / "store"), "review")
    write_eval(store, "ev-1", 6, {})
    source = EvalPairs(store, "ev-1")
    pairs, log = source.pairs(), RatingLog(store, source)

    def vote(item: int, reviewer: str, arm: str) -> None:
        side = candidate_side("ev-1", item, reviewer)
        choice = {"candidate": side, "incumbent": "B" if side == "A" else "A"}.get(arm, arm)
        log.add(pairs[item], reviewer, choice, "", item)

    vote(0, "alice", "candidate")
    vote(0, "bob", "candidate")
    vote(1, "alice", "incumbent")
    vote(2, "alice", "tie")
    vote(3, "alice", "candidate")
    vote(3, "bob", "incumbent")
    vote(4, "alice", "candidate")
    vote(4, "bob", "both_bad")
    vote(4, "alice", "incumbent")  # alice changed her mind: her latest rating counts
    vote(5, "alice", "candidate")
    vote(5, "bob", "candidate")
    vote(5, "carol", "incumbent")
    vote(5, "dan", "tie")

    assert main(["review", "pairs", job, "--eval", "ev-1"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert {k: said[k] for k in ("items_rated", "pairs", "ties")} == {
        "items_rated": 6,
        "pairs": 4,
        "ties": 2,
    }
    lines = [
        json.loads(line) for line in store.fs.open(said["path"]).read().decode().split("\n")[:-1]
    ]
    got = [(r["item"], r["chosen"], r["rejected"], r["votes"], r["weight"]) for r in lines]
    assert got == [
        (0, "candidate answer 0", "incumbent answer 0", [2, 2], 1.0),
        (1, "incumbent answer 1", "candidate answer 1", [1, 1], 1.0),
        (4, "incumbent answer 4", "candidate answer 4", [1, 1], 1.0),
        (5, "candidate answer 5", "incumbent answer 5", [2, 3], 0.3333),  # 2 to 1
    ]
    assert lines[0]["text"] == "Question 0: where is my card?", "the job's prompt_field"


@pytest.mark.usefixtures("process_group")
def test_full_dpo_trains_every_weight_against_the_initial_model_after_a_resume(
    tiny_dir, tmp_path, monkeypatch
):
    """DeepSpeed ZeRO-2 trains the whole model on the DPO loss against a frozen copy of the
    initial weights; an engine resumed from the checkpoint has the trained policy and still
    the initial model as its reference (else every margin would restart at 0)."""
    from ftray.models import load_model

    monkeypatch.setenv("LOCAL_RANK", "0")
    _pairs(tmp_path / "ds", load_tokenizer(tiny_dir), 8)
    ctx = LocalContext(str(tmp_path / "ds"), str(tmp_path / "ckpt"), columns=PAIR_COLUMNS)
    spec = TrainSpec.model_validate(
        {
            "method": "dpo",
            "dpo": {"beta": 0.5, "adapter": "full"},
            "batch_size": 8,
            "lr": 1e-3,
            "warmup_ratio": 0,
            "scaling": {"num_workers": 1},
        }
    )
    engine = DeepSpeedEngine(spec, tiny_dir, "float32", ctx, total_steps=4)
    batch = collate_pairs(next(ctx.batches("validation", 8, 0)))
    with torch.no_grad():
        start, margins = pair_loss_sum(engine.model, engine.reference, batch, 0.5)
    assert margins.abs().max() < 1e-5 and float(start) == pytest.approx(8 * math.log(2))
    for _ in range(3):
        engine.micro_step(batch, True, batch["weights"].sum(), 1)
    engine.save(str(tmp_path / "saved"), 0)

    resumed = DeepSpeedEngine(spec, tiny_dir, "float32", ctx, total_steps=4)
    resumed.load(str(tmp_path / "saved"))
    base = load_model(tiny_dir, "float32").eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        torch.testing.assert_close(resumed.reference(**inputs), base(**inputs).logits)
        trained, margins = pair_loss_sum(resumed.model, resumed.reference, batch, 0.5)
        again, _ = pair_loss_sum(engine.model, engine.reference, batch, 0.5)
    assert float(trained) == pytest.approx(float(again), rel=1e-5), "the policy resumed"
    assert float(trained) < float(start) and (margins > 0).all(), margins
