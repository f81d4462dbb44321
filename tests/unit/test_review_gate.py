"""A gate with a human rule, through the user's doors: the pipeline leaves the candidate
pending, `ftray review results|decide` read the ratings and settle it in the registry."""

from __future__ import annotations

import json

import pytest

from ftray import registry
from ftray.artifacts import DatasetRef, EvalRef, RunRef
from ftray.cli import main
from ftray.pipeline import Pipeline
from ftray.progress import Progress
from ftray.review.ratings import EvalPairs, RatingLog, candidate_side
from ftray.specload import load_spec
from ftray.store import Store
from tests.unit.review_eval import write_eval, write_job

GATE = {"min_human_win_rate": 0.6, "min_human_ratings": 4}


def _decide(job: str, eval_id: str, tmp_path) -> dict:
    """`Pipeline.decide()` for a hand-written evaluation (no Ray: the stages before it are
    given as finished artifacts)."""
    spec = load_spec(job)
    pipeline = Pipeline(spec, Progress())
    weights = tmp_path / f"adapter-{eval_id}"
    weights.mkdir(exist_ok=True)
    (weights / "adapter_config.json").write_text("{}")
    manifest = pipeline.store.manifest("evals", eval_id)
    run = {"weights_uri": str(weights), "kind": "adapter"}
    run["spec"] = {"lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}}  # as a run records it
    pipeline.__dict__.update(
        dataset=DatasetRef("ds-1", str(tmp_path), {}, True),
        run=RunRef(manifest["run_id"], str(tmp_path), run, True),
        evaluation=EvalRef(eval_id, str(tmp_path), manifest, True),
    )
    return pipeline.decide()


def _rate(store: Store, eval_id: str, reviewer: str, wins: list[str]) -> None:
    """One rating per item from item 0 on: 'candidate', 'incumbent', 'tie' or 'both_bad'."""
    source = EvalPairs(store, eval_id)
    log = RatingLog(store, source)
    for pair, win in zip(source.pairs(), wins, strict=False):
        side = candidate_side(eval_id, pair.item, reviewer)
        choice = {"candidate": side, "incumbent": "B" if side == "A" else "A"}.get(win, win)
        log.add(pair, reviewer, choice, "", pair.item + 1)


def _cli(capsys, *args: str) -> tuple[int, dict | None, str]:
    capsys.readouterr()  # what came before is not this command's output
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip().startswith("{") else None), err


def test_pending_candidate_is_promoted_by_decide_once_ratings_are_in(tmp_path, capsys):
    job = write_job(tmp_path, GATE)
    store = Store(str(tmp_path / "store"), "review")
    write_eval(store, "eval-good", items=6, gate=GATE)

    card = _decide(job, "eval-good", tmp_path)
    assert "awaiting human review" in capsys.readouterr().out
    assert card["stage"] == "candidate" and card["gate"]["pending"]
    assert registry.history(store) == []  # neither promoted nor rejected yet

    code, found, _ = _cli(capsys, "review", "decide", job)
    assert code == 5 and found["status"] == "pending" and not found["decided"]
    assert found["gate"]["rules"][-1]["detail"] == "awaiting ratings: 0 of 4"

    _rate(store, "eval-good", "alice", ["candidate", "candidate", "tie", "both_bad"])
    _rate(store, "eval-good", "bob", ["candidate", "incumbent"])
    code, found, err = _cli(capsys, "review", "results", job, "--eval", "eval-good")
    assert code == 0 and found["status"] == "promote" and found["stage"] == "candidate"
    human = found["human"]
    # per item: 0 → (1 + 1)/2, 1 → (1 + 0)/2, 2 → ½ (tie), 3 → 'both bad' only, left out
    assert human["win_rate"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert human["win_rate_ratings"] == 5 and human["counts"]["both_bad"] == 1
    assert human["agreement"]["method"] == "cohen" and human["agreement"]["items"] == 2
    report = tmp_path / "store" / "review" / "evals" / "eval-good" / "reviews" / "report.md"
    assert "not recorded yet" in report.read_text() and "report.html" in err

    code, decided, _ = _cli(capsys, "review", "decide", job)
    assert code == 0 and decided["decided"] and decided["stage"] == "production"
    events = registry.history(store)
    assert [e["action"] for e in events] == ["promote"]
    assert events[0]["reason"].startswith("human review of eval-good: win rate 0.667")
    assert "Verdict: PASSED: promote\n" in report.read_text()

    # deciding again changes nothing; a later pipeline run sees the settled gate
    _rate(store, "eval-good", "carol", ["incumbent"] * 6)
    assert _cli(capsys, "review", "decide", job)[1]["decided_at"] == decided["decided_at"]
    assert len(registry.history(store)) == 1
    card = _decide(job, "eval-good", tmp_path)
    assert card["gate"]["passed"] and card["stage"] == "production"


def test_decide_rejects_when_reviewers_prefer_the_incumbent(tmp_path, capsys):
    job = write_job(tmp_path, GATE)
    store = Store(str(tmp_path / "store"), "review")
    write_eval(store, "eval-meh", items=5, gate=GATE)
    _decide(job, "eval-meh", tmp_path)
    _rate(store, "eval-meh", "alice", ["incumbent", "incumbent", "candidate", "tie", "incumbent"])
    code, found, _ = _cli(capsys, "review", "decide", job, "--eval", "eval-meh")
    assert code == 4 and found["status"] == "reject" and found["stage"] == "rejected"
    assert found["human"]["win_rate"] == pytest.approx(0.3)
    assert registry.history(store)[-1]["action"] == "reject"
    assert _decide(job, "eval-meh", tmp_path)["stage"] == "rejected"


def test_automatic_failure_rejects_at_once_and_no_human_rule_means_no_decide(tmp_path, capsys):
    job = write_job(tmp_path, GATE)
    store = Store(str(tmp_path / "store"), "review")
    write_eval(store, "eval-bad", items=3, gate=GATE, better=False)
    card = _decide(job, "eval-bad", tmp_path)
    assert card["stage"] == "rejected" and not card["gate"]["pending"]

    write_eval(store, "eval-plain", items=3, gate={})
    code, found, _ = _cli(capsys, "review", "results", job, "--eval", "eval-plain")
    assert code == 0 and found["status"] == "final"
    code, _, err = _cli(capsys, "review", "decide", job, "--eval", "eval-plain")
    assert code == 2 and "has no human rule" in err
    code, _, err = _cli(capsys, "review", "results", job, "--eval", "eval-nope")
    assert code == 2 and "no finished evaluation 'eval-nope'" in err
