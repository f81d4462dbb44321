"""From hand-made answers to a verdict and a report that a real browser renders."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from ftray.evaluate.report import write_report
from ftray.evaluate.score import Task, judge
from ftray.spec import EvalSpec
from ftray.store import Store

LABELS = ["card_arrival", "exchange_rate", "pin_blocked"]


def _answers(candidate_right: int, n: int = 60) -> pd.DataFrame:
    """n examples; the incumbent answers a third right, the candidate `candidate_right`."""
    refs = [LABELS[i % 3] for i in range(n)]
    wrong = [LABELS[(i + 1) % 3] for i in range(n)]
    return pd.DataFrame(
        {
            "source": ["data.csv"] * n,
            "row": list(range(n)),
            "prompt": [f"query {i}" for i in range(n)],
            "completion": refs,
            "candidate_output": [
                r if i < candidate_right else w
                for i, (r, w) in enumerate(zip(refs, wrong, strict=False))
            ],
            "incumbent_output": [r if i % 3 == 0 else "no idea" for i, r in enumerate(refs)],
            "candidate_confidence": [0.9 if i % 4 else 0.3 for i in range(n)],
            "incumbent_confidence": [0.6] * n,
            "candidate_tokens": [3] * n,
            "incumbent_tokens": [2 + i % 4 for i in range(n)],
            "candidate_latency_s": [0.01] * n,
            "incumbent_latency_s": [0.02] * n,
        }
    )


def _samples(n: int = 8):
    return pd.DataFrame(
        {"candidate_samples": [["a", "a", "a"]] * n, "incumbent_samples": [["a", "b", "c"]] * n}
    )


TASK = Task(
    "classification",
    ["exact_match", "classification", "hallucination", "consistency"],
    "macro_f1",
    LABELS,
    None,
    0.5,
)


def test_a_better_candidate_passes_and_a_worse_one_fails():
    spec = EvalSpec(bootstrap_samples=300)
    _, better = judge(_answers(candidate_right=50), _samples(), TASK, spec)
    assert better["gate"]["passed"], better["gate"]
    assert better["metrics"]["candidate"]["accuracy"] == pytest.approx(50 / 60, abs=1e-4)
    assert better["metrics"]["incumbent"]["hallucination_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert better["metrics"]["candidate"]["consistency"] == 1.0
    assert better["mcnemar"]["p_value"] < 0.001
    assert {s["slice"] for s in better["slices"]} == set(LABELS)
    _, worse = judge(_answers(candidate_right=10), _samples(), TASK, spec)
    failed = [r["rule"] for r in worse["gate"]["rules"] if not r["passed"]]
    assert not worse["gate"]["passed"]
    assert "macro_f1 ≥ incumbent + 0" in failed and "accuracy regresses by at most 0.02" in failed


def test_report_renders_its_plots_in_chromium(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium binary (apt-get install chromium; .ci/run installs it)")
    table, results = judge(_answers(candidate_right=40), _samples(), TASK, EvalSpec())
    manifest = {
        "eval_id": "eval-test",
        "run_id": "run-1",
        "dataset_id": "ds-1",
        "incumbent": {"label": "base model tiny"},
        "decoding": {"do_sample": False},
        **results,
    }
    store = Store(str(tmp_path), "proj")
    write_report(manifest, table, TASK, store, "eval-test", worst=5)
    folder = tmp_path / "proj" / "evals" / "eval-test"
    markdown = (folder / "report.md").read_text()
    assert "## Gate: PASSED" in markdown and "![confusion](plots/confusion.png)" in markdown
    assert sorted(p.name for p in (folder / "plots").iterdir()) == [
        "confusion.png",
        "lengths.png",
        "metrics.png",
        "per_class.png",
        "pr_curve.png",
    ]
    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
        page.on("requestfailed", lambda request: errors.append(request.url))
        page.goto((folder / "report.html").as_uri())
        images = page.evaluate(
            "[...document.images].map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight,"
            " shown: i.getBoundingClientRect().width}))"
        )
        worst_rows = page.locator("h2:has-text('Worst examples') + table tbody tr").count()
        gate = page.locator("h2.pass").inner_text()
        browser.close()
    assert not errors, errors
    assert [i["alt"] for i in images] == [
        "metrics",
        "per_class",
        "confusion",
        "pr_curve",
        "lengths",
    ]
    for image in images:  # decoded by the browser and laid out on the page
        assert image["w"] > 100 and image["h"] > 100 and image["shown"] > 100, image
    assert worst_rows == 5
    assert gate == "Gate: PASSED: promote"
    assert json.dumps(manifest)  # the manifest stays plain JSON


def test_json_task_scores_parse_schema_fields_and_unsupported_values():
    schema = {
        "type": "object",
        "required": ["amount"],
        "properties": {"amount": {"type": "number"}},
    }
    refs = ['{"amount": 5, "to": "Berlin"}'] * 4
    table = pd.DataFrame(
        {
            "source": ["a.jsonl"] * 4,
            "row": range(4),
            "prompt": ["Send 5 euros to Berlin"] * 4,
            "completion": refs,
            "candidate_output": [*refs[:3], '{"amount": 5, "to": "Paris"}'],
            "incumbent_output": ["not json", '{"amount": "5"}', refs[0], refs[0]],
            "candidate_confidence": [1.0] * 4,
            "incumbent_confidence": [1.0] * 4,
            "candidate_tokens": [9] * 4,
            "incumbent_tokens": [5] * 4,
            "candidate_latency_s": [0.1] * 4,
            "incumbent_latency_s": [0.1] * 4,
        }
    )
    task = Task(
        "json", ["exact_match", "json", "hallucination"], "field_f1_micro", None, schema, 0.5
    )
    scored, results = judge(table, None, task, EvalSpec(bootstrap_samples=100))
    cand, inc = results["metrics"]["candidate"], results["metrics"]["incumbent"]
    # candidate: 8 reference fields, 8 predicted, 7 exact; one unsupported value (Paris)
    assert (cand["parse_rate"], cand["schema_compliance"], cand["field_f1_micro"]) == (
        1.0,
        1.0,
        0.875,
    )
    assert (cand["invented_field_rate"], cand["invented_field_n"]) == (0.0, 8)
    # incumbent: unparsable, "5" for 5 (a normalised match only), two right answers
    assert (inc["parse_rate"], inc["schema_compliance"]) == (0.75, 0.5)
    assert (inc["field_precision"], inc["field_recall"]) == (0.8, 0.5)
    assert inc["field_f1_micro"] == pytest.approx(8 / 13, abs=1e-4)
    assert inc["field_f1_micro_normalized"] == pytest.approx(10 / 13, abs=1e-4)
    assert (cand["hallucination_rate"], cand["hallucination_n"]) == (0.25, 4)
    assert (inc["hallucination_rate"], inc["hallucination_n"]) == (0.0, 3)  # parsed only
    assert list(scored["candidate_unsupported"])[3] == ["Paris"]
    assert results["slices"][0]["slice"] == "a.jsonl"


def test_bertscore_ranks_paraphrases_above_unrelated_text():
    from ftray.evaluate.bertscore import _BertScore, model_path

    scorer = _BertScore(model_path(), ["candidate"])
    batch = pd.DataFrame(
        {
            "completion": ["The card will arrive within five days."] * 3,
            "candidate_output": [
                "The card will arrive within five days.",
                "Your card should get to you in about five days.",
                "Exchange rates are updated every hour.",
            ],
        }
    )
    same, paraphrase, unrelated = scorer(batch)["candidate_bertscore"]
    assert same == pytest.approx(1.0, abs=1e-4)
    assert same > paraphrase > unrelated


def test_the_report_is_rendered_again_with_the_human_review(tmp_path):
    from ftray.evaluate.report import rewrite_report
    from ftray.review.stats import summarize

    table, results = judge(_answers(candidate_right=40), _samples(), TASK, EvalSpec())
    store = Store(str(tmp_path), "proj")
    manifest = {
        "eval_id": "eval-h",
        "run_id": "run-1",
        "dataset_id": "ds-1",
        "incumbent": {"label": "base model tiny"},
        "decoding": {},
        "spec": {},
        "task": {
            "name": TASK.name,
            "groups": TASK.groups,
            "primary": TASK.primary,
            "labels": TASK.labels,
            "schema": None,
            "threshold": 0.5,
        },
        **results,
    }
    store.finish(manifest, "evals", "eval-h")
    folder = tmp_path / "proj" / "evals" / "eval-h"
    (folder / "outputs").mkdir()
    table.to_parquet(folder / "outputs" / "part-0.parquet")
    write_report(manifest, table, TASK, store, "eval-h", worst=3)
    assert "ftray review JOB.yaml" in (folder / "report.md").read_text()
    # four items: the candidate preferred on three, a tie on one → (3 + 0.5) / 4
    ratings = [
        {"reviewer": "ann", "item": i, "preferred": p}
        for i, p in enumerate(["candidate"] * 3 + ["tie"])
    ]
    assert rewrite_report(store, "eval-h", summarize(ratings))
    text = (folder / "report.md").read_text()
    assert "Candidate win rate 0.875" in text and "over 4 ratings by 1 reviewer(s)" in text
    assert "## Metrics" in text, "the rest of the report is unchanged"


def _never_parsing_incumbent(n: int = 12) -> pd.DataFrame:
    """A candidate that answers in JSON (inventing a field once, a city once) against an
    incumbent that never produces JSON: the base model before fine-tuning."""
    cities = ["Oslo", "Rome", "Lima", "Kyiv"]
    refs = [json.dumps({"city": cities[i % 4], "guests": i + 1}) for i in range(n)]
    answers = list(refs)
    answers[n - 2] = json.dumps({"city": cities[(n - 2) % 4], "guests": n - 1, "budget": 300})
    answers[n - 1] = json.dumps({"city": "Paris", "guests": n})
    return pd.DataFrame(
        {
            "source": ["a.jsonl"] * n,
            "row": range(n),
            "prompt": [f"Book a table for {i + 1} in {cities[i % 4]}" for i in range(n)],
            "completion": refs,
            "candidate_output": answers,
            "incumbent_output": ["I'd be glad to help you book a table!"] * n,
            "candidate_confidence": [1.0] * n,
            "incumbent_confidence": [1.0] * n,
            "candidate_tokens": [12] * n,
            "incumbent_tokens": [9] * n,
            "candidate_latency_s": [0.1] * n,
            "incumbent_latency_s": [0.1] * n,
        }
    )


JSON_TASK = Task(
    "json", ["exact_match", "json", "hallucination"], "field_f1_micro", None, None, 0.5
)


def test_an_incumbent_that_never_parses_cannot_win_on_hallucination():
    _, results = judge(_never_parsing_incumbent(), None, JSON_TASK, EvalSpec())
    cand, inc = results["metrics"]["candidate"], results["metrics"]["incumbent"]
    assert (cand["hallucination_rate"], cand["hallucination_n"]) == (round(2 / 12, 4), 12)
    assert (inc["hallucination_rate"], inc["hallucination_n"]) == (None, 0)
    assert (cand["invented_field_rate"], cand["invented_field_n"]) == (round(1 / 25, 4), 25)
    assert cand["field_f1_micro"] == round(46 / 49, 4) and inc["field_f1_micro"] == 0.0
    gate = results["gate"]
    assert gate["passed"], gate
    skipped = [r["rule"] for r in gate["rules"] if r["skipped"]]
    assert skipped == [
        "invented_field_rate regresses by at most 0.02",
        "hallucination_rate regresses by at most 0.02",
    ]
    assert json.dumps(results, allow_nan=False)  # "no measurement" is null, not NaN


def _stored_eval(tmp_path, table, results, task, spec: EvalSpec) -> Store:
    store = Store(str(tmp_path), "proj")
    manifest = {
        "eval_id": "eval-r",
        "run_id": "run-1",
        "dataset_id": "ds-1",
        "incumbent": {"label": "base model tiny"},
        "decoding": {},
        "spec": spec.model_dump(mode="json"),
        "task": {
            "name": task.name,
            "groups": task.groups,
            "primary": task.primary,
            "labels": task.labels,
            "schema": task.schema,
            "threshold": task.threshold,
        },
        **results,
    }
    store.finish(manifest, "evals", "eval-r")
    (tmp_path / "proj" / "evals" / "eval-r" / "outputs").mkdir()
    table.to_parquet(tmp_path / "proj" / "evals" / "eval-r" / "outputs" / "part-0.parquet")
    write_report(manifest, table, task, store, "eval-r", worst=3)
    return store


def test_a_changed_gate_is_reapplied_to_the_stored_evaluation(tmp_path):
    from ftray.evaluate.stage import regate
    from ftray.spec import GateSpec

    spec = EvalSpec()
    table, results = judge(_never_parsing_incumbent(), None, JSON_TASK, spec)
    store = _stored_eval(tmp_path, table, results, JSON_TASK, spec)
    folder = tmp_path / "proj" / "evals" / "eval-r"
    first = (folder / "report.md").read_text()
    assert "## Gate: PASSED" in first and "## Per field" in first
    assert "| city | 12 | 12 | 0.917 | 0.917 | 0.917 | 0.917 | 0.000 |" in first
    assert "| budget | 0 | 1 | 0.000 | 0.000 | 0.000 | 0.000 | 0.000 |" in first
    assert "<h2>Per field</h2>" in (folder / "report.html").read_text()

    assert not regate(store, "eval-r", spec).regated  # same gate: nothing to do
    stricter = EvalSpec(gate=GateSpec(ceilings={"hallucination_rate": 0.1}))
    ref = regate(store, "eval-r", stricter)
    assert ref.regated and ref.reused and not ref.gate["passed"]
    failed = [r["rule"] for r in ref.gate["rules"] if not r["passed"]]
    assert failed == ["hallucination_rate ≤ 0.1"]
    stored = store.manifest("evals", "eval-r")
    assert stored["gate"] == ref.gate and stored["spec"]["gate"]["ceilings"] == {
        "hallucination_rate": 0.1
    }
    assert stored["comparison"] == json.loads(json.dumps(results["comparison"]))
    text = (folder / "report.md").read_text()
    assert "## Gate: FAILED: keep the incumbent (gate re-applied" in text
    assert "| hallucination_rate ≤ 0.1 | NO | candidate 0.1667 |" in text
    assert "skipped" in text  # the rules without signal say so in the report too


def test_the_forgetting_probe_is_reported_and_gated_on_its_ratio(tmp_path):
    from ftray.evaluate.stage import regate
    from ftray.spec import GateSpec

    answers = _answers(candidate_right=50).assign(
        base_general_ppl=40.0, candidate_general_ppl=50.0, incumbent_general_ppl=40.0
    )
    spec = EvalSpec(bootstrap_samples=300)
    table, results = judge(answers, None, TASK, spec)
    assert results["metrics"]["general_ppl"] == {
        "base": 40.0,
        "candidate": 50.0,
        "incumbent": 40.0,
        "ratio": 1.25,
    }
    assert results["gate"]["passed"], "report only while no ceiling is set"
    store = _stored_eval(tmp_path, table, results, TASK, spec)
    text = (tmp_path / "proj" / "evals" / "eval-r" / "report.md").read_text()
    assert "## Forgetting" in text and "| candidate | 50 | 1.2500 |" in text
    assert (
        "<h2>Forgetting</h2>"
        in (tmp_path / "proj" / "evals" / "eval-r" / "report.html").read_text()
    )

    strict = regate(store, "eval-r", EvalSpec(gate=GateSpec(max_general_ppl_ratio=1.2)))
    (rule,) = [r for r in strict.gate["rules"] if r["rule"].startswith("general_ppl")]
    assert not strict.gate["passed"] and not rule["passed"]
    assert rule["detail"] == "candidate 50, base 40, ratio 1.2500"
    lenient = regate(store, "eval-r", EvalSpec(gate=GateSpec(max_general_ppl_ratio=1.3)))
    assert lenient.gate["passed"]

    # an evaluation without the probe cannot pass a ceiling on it
    _, old = judge(
        _answers(candidate_right=50), None, TASK, EvalSpec(gate=GateSpec(max_general_ppl_ratio=2))
    )
    assert "general_ppl" not in old["metrics"]
    assert [r["rule"] for r in old["gate"]["rules"] if not r["passed"]] == [
        "general_ppl ratio to the base model ≤ 2"
    ]


def test_the_retrieval_arms_are_reported_side_by_side(tmp_path):
    table, results = judge(_answers(candidate_right=40), None, TASK, EvalSpec())
    store = Store(str(tmp_path), "proj")
    arm = {"score": 0.5, "prompt_tokens": 210.0, "latency_s": 0.125}
    retrieval = {
        "index_id": "idx-1",
        "k": 3,
        "gold_recall_at_k": 0.75,
        "metric": "macro_f1",
        "arms": {
            "candidate+retrieval": {**arm, "groundedness": 0.8, "citation_accuracy": None},
            "incumbent+retrieval": {**arm, "groundedness": 0.4, "citation_accuracy": 1.0},
            "candidate": {
                **{"score": 0.25, "exact_match": 0.1, "format_compliance": 0.9},
                **{"prompt_tokens": 30.0, "latency_s": 0.05},
            },
        },
    }
    manifest = {
        "eval_id": "eval-g",
        "run_id": "run-1",
        "dataset_id": "ds-1",
        "incumbent": {"label": "base model tiny"},
        "decoding": {},
        "retrieval": retrieval,
        **results,
    }
    write_report(manifest, table, TASK, store, "eval-g", worst=3)
    text = (tmp_path / "proj" / "evals" / "eval-g" / "report.md").read_text()
    assert "## Retrieval" in text and "index idx-1 (gold recall@k 0.7500)" in text
    assert "| candidate | 0.2500 | 0.1000 | 0.9000 | n/a | n/a | 30.0 | 50 |" in text
