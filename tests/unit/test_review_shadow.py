"""Human review of shadow traffic (`ftray review --shadow MODEL_ID`): a shadow model's recorded
pairs, in sample files written here as a replica writes them, through the user's doors: the
queue over HTTP while pairs keep arriving, where ratings land, `results` and `pairs` against
numbers worked out by hand, every refusal, and a reviewer rating in headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from ftray import registry, routing
from ftray.cli import main
from ftray.errors import UserError
from ftray.monitor.sampler import COLUMNS, ROUTING_COLUMNS
from ftray.review.app import build_app
from ftray.review.ratings import RatingLog, candidate_side, reviewer_order
from ftray.review.shadow_pairs import ShadowPairs, shadow_results
from ftray.serve.shadow import agree
from ftray.store import Store, event_id
from tests.unit.review_browser import chromium, serving
from tests.unit.review_eval import write_job
from tests.unit.test_registry import _register

# (production response id, the shadow's answer, production's); the second pair agrees.
FIRST = [
    ("chatcmpl-1", "card_arrival", "lost_card"),
    ("chatcmpl-2", "Lost_Card ", "lost_card"),
    ("chatcmpl-3", "refund", "exchange_rate"),
    ("chatcmpl-4", "top_up", "card_payment"),
]
BEARER = {"Authorization": "Bearer alice"}


@pytest.fixture
def project(tmp_path):
    """A job, its store, a production model and a shadow of another; `other` never was one."""
    job = write_job(tmp_path, {})
    store = Store(str(tmp_path / "store"), "review")
    production, shadow, other = (_register(store, tmp_path, n) for n in ("prod", "shadow", "x"))
    registry.promote(store, production, reason="test")
    routing.shadow(store, shadow, percent=50, reason="test")
    return SimpleNamespace(job=job, store=store, model=shadow, other=other)


def record(store: Store, model: str, at: str, pairs: list[tuple[str, str, str]]) -> str:
    """One sample file as a replica writes it (`ftray.monitor.sampler`): a row of shadow
    `model` per pair, at time `at`, and a production row without a pair; returns its path."""
    rows = [
        {
            "request_id": f"{request_id}-shadow",
            "time": at,
            "model": model,
            "split": False,
            "endpoint": "chat",
            "prompt": f"question {request_id}",
            "output": shadow,
            "prompt_tokens": 3,
            "completion_tokens": 2,
            "latency_s": 0.1,
            "finish_reason": "stop",
            "shadow_of": request_id,
            "control_output": production,
            "agreed": agree(production, shadow),
        }
        for request_id, shadow, production in pairs
    ]
    rows.append({"request_id": "cmpl-plain", "time": at, "model": "m", "output": "plain"})
    table = pa.Table.from_pylist(
        [{c: r.get(c) for c in (*COLUMNS, *ROUTING_COLUMNS)} for r in rows]
    )
    return store.write_parquet(
        table, "monitor", "samples", f"date={at[:10]}", f"{event_id()}.parquet"
    )


def rate(store: Store, model: str, reviewer: str, wants: dict[str, str]) -> None:
    """One rating per item: 'shadow', 'production', 'tie' or 'both_bad'."""
    source = ShadowPairs(store, model)
    pairs, log = {p.item: p for p in source.pairs()}, RatingLog(store, source)
    for item, want in wants.items():
        side = candidate_side(source.key, item, reviewer)
        choice = {"shadow": side, "production": "B" if side == "A" else "A"}.get(want, want)
        log.add(pairs[item], reviewer, choice, "", 1)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """`ftray review ARGS`: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["review", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_queue_keeps_each_pair_and_its_place_as_pairs_arrive(project):
    store, model = project.store, project.model
    record(store, model, "2025-01-02T10:00:00Z", FIRST)
    record(store, "model-other", "2025-01-02T10:00:01Z", [("chatcmpl-8", "another", "shadow")])
    source = ShadowPairs(store, model)
    queued = ["chatcmpl-1", "chatcmpl-3", "chatcmpl-4"]  # the pair that agrees is left out
    assert [pair.item for pair in source.pairs()] == queued
    client = TestClient(build_app(store, shadow=model), follow_redirects=False)
    index = client.get("/", headers=BEARER).text
    assert f"shadow {model} against production" in index and "0 of 3 rated by you" in index
    before = reviewer_order(source.key, "alice", queued)
    first = client.get("/pairwise", headers=BEARER).headers["location"]
    assert first == f"/pairwise/{before[0]}"
    rated = client.post(first, data={"choice": "A", "comment": "shorter"}, headers=BEARER)
    assert rated.status_code == 303

    # the rating is the shadow's, under its own folder, with the side the page drew
    folder = Path(store.path("shadows", model, "reviews", "pairwise"))
    [rating] = [json.loads(path.read_text()) for path in folder.glob("*.json")]
    side = candidate_side(source.key, before[0], "alice")
    assert (rating["item"], rating["shadow_model"], rating["candidate_side"]) == (
        before[0],
        model,
        side,
    )
    assert rating["preferred"] == ("candidate" if side == "A" else "incumbent")
    assert "eval_id" not in rating and not Path(store.path("evals")).exists()

    # more traffic while the app runs: a later file, and one a replica flushed late with
    # earlier times; the app reads them on the next page
    record(store, model, "2025-01-02T11:00:00Z", [("chatcmpl-5", "pin", "card")])
    late = record(store, model, "2025-01-02T09:00:00Z", [("chatcmpl-0", "atm", "cash")])
    store.fs.copy(late, late.replace(".parquet", "-copy.parquet"))  # the same rows twice
    now = ["chatcmpl-0", *queued, "chatcmpl-5"]
    assert [pair.item for pair in source.pairs()] == now  # oldest first, each id once
    order = reviewer_order(source.key, "alice", now)
    assert [item for item in order if item in before] == before, "new pairs fall in between"
    assert "1 of 5 rated by you" in client.get("/", headers=BEARER).text
    page = client.get(first, headers=BEARER).text
    shadow, production = next((s, p) for i, s, p in FIRST if i == before[0])
    assert "shorter" in page and shadow in page and production in page, "the same pair"
    assert client.get("/pairwise", headers=BEARER).headers["location"] != first


def test_results_of_a_shadow_review_by_hand(project, capsys):
    store, model = project.store, project.model
    record(store, model, "2025-01-02T10:00:00Z", [*FIRST, ("chatcmpl-5", "pin", "card")])
    # a broken file is skipped and counted; one from before shadows has no pairs
    store.write_bytes(b"not parquet", "monitor", "samples", "date=2025-01-02", "x.parquet")
    old = pa.Table.from_pylist([{c: "x" for c in COLUMNS}])
    store.write_parquet(old, "monitor", "samples", "date=2025-01-01", "old.parquet")
    rate(store, model, "alice", {"chatcmpl-1": "shadow", "chatcmpl-3": "shadow"})
    rate(store, model, "alice", {"chatcmpl-3": "production", "chatcmpl-4": "tie"})
    rate(store, model, "alice", {"chatcmpl-5": "shadow"})
    rate(store, model, "bob", {"chatcmpl-1": "shadow", "chatcmpl-3": "shadow"})
    rate(store, model, "bob", {"chatcmpl-4": "both_bad"})

    code, out, err = _cli(capsys, "results", project.job, "--shadow", model)
    assert code == 0, err
    found = json.loads(out)
    assert found["arms"] == {"candidate": model, "incumbent": "production"}
    assert found["pairs"] == {
        "recorded": 5,
        "agreed": 1,
        "queued": 4,
        "unreadable_sample_files": 1,
    }
    human = found["human"]
    assert human["counts"] == {"candidate": 4, "incumbent": 1, "tie": 1, "both_bad": 1}
    assert (human["ratings"], human["reviewers"], human["items_rated"]) == (7, 2, 4)
    # per pair, the shadow's score: 1: 1, 1 → 1; 3: 0, 1 → ½; 4: ½ (both bad out); 5: 1
    # → (1 + ½ + ½ + 1) / 4 = 0.75 over 4 pairs. Wilson, z = 1.95996, n = 4: centre
    # (0.75 + z²/8) / (1 + z²/4) = 0.62753, half-width z / 1.96036 · √(0.75·0.25/4 + z²/64)
    # = 0.32689.
    assert human["win_rate"] == pytest.approx(0.75) and human["win_rate_items"] == 4
    low, high = human["win_rate_interval"]
    assert (low, high) == (pytest.approx(0.30064, abs=1e-4), pytest.approx(0.95441, abs=1e-4))
    # Cohen on pairs 1, 3, 4: alice shadow, production, tie; bob shadow, shadow, both bad →
    # p_o = 1/3, p_e = (1·2)/9, κ = (1/3 − 2/9) / (1 − 2/9) = 1/7
    agreement = human["agreement"]
    assert (agreement["method"], agreement["items"]) == ("cohen", 3)
    assert agreement["kappa"] == pytest.approx(1 / 7)
    assert agreement["observed"] == pytest.approx(1 / 3)
    report = Path(store.path("shadows", model, "reviews", "report.md")).read_text()
    assert f"Human review of shadow {model}" in report and "shadow better" in report
    assert "Cohen's kappa 0.143 on 3 items" in report and "5 recorded pairs" in report
    assert f"shadows/{model}/reviews/report.html" in err
    assert shadow_results(store, model) == found  # the same without the command
    assert not Path(store.path("evals")).exists()


def test_shadow_ratings_become_preference_pairs(project, capsys):
    store, model = project.store, project.model
    record(store, model, "2025-01-02T10:00:00Z", [*FIRST, ("chatcmpl-5", "pin", "card")])
    rate(store, model, "alice", {"chatcmpl-1": "shadow", "chatcmpl-3": "production"})
    rate(store, model, "alice", {"chatcmpl-4": "tie"})
    rate(store, model, "bob", {"chatcmpl-1": "shadow", "chatcmpl-3": "production"})
    rate(store, model, "bob", {"chatcmpl-5": "production"})
    rate(store, model, "carol", {"chatcmpl-3": "shadow", "chatcmpl-5": "shadow"})

    code, out, err = _cli(capsys, "pairs", project.job, "--shadow", model)
    assert code == 0, err
    said = json.loads(out)
    assert {k: said[k] for k in ("items_rated", "pairs", "ties")} == {
        "items_rated": 4,
        "pairs": 2,
        "ties": 2,  # 4: a tie; 5: one vote each
    }
    assert f"/shadows/{model}/reviews/preferences-" in said["path"]
    lines = [json.loads(line) for line in Path(said["path"]).read_text().splitlines()]
    assert lines == [
        {
            "text": "question chatcmpl-1",  # the job's prompt_field
            "chosen": "card_arrival",  # the shadow's answer
            "rejected": "lost_card",
            "shadow_model": model,
            "item": "chatcmpl-1",
            "votes": [2, 2],
            "weight": 1.0,
        },
        {
            "text": "question chatcmpl-3",
            "chosen": "exchange_rate",  # production's, 2 votes to 1
            "rejected": "refund",
            "shadow_model": model,
            "item": "chatcmpl-3",
            "votes": [2, 3],
            "weight": 0.3333,
        },
    ]


def test_every_refusal(project, capsys, monkeypatch):
    import uvicorn

    job, store, model = project.job, project.store, project.model
    for action in ("serve", "results", "pairs"):  # a shadow with nothing recorded yet
        code, _, err = _cli(capsys, action, job, "--shadow", model)
        assert code == 2 and f"no recorded pairs of shadow {model}" in err, err
    code, _, err = _cli(capsys, "results", job, "--shadow", project.other)
    assert code == 2 and f"{project.other} has never been a shadow model" in err, err
    code, _, err = _cli(capsys, "pairs", job, "--shadow", "model-000000000000")
    assert code == 2 and "no model 'model-000000000000'" in err, err
    for hostile in ("../evals", "a/b", "..", "", "x\\y"):
        for action in ("serve", "results", "pairs"):
            code, _, err = _cli(capsys, action, job, "--shadow", hostile)
            assert code == 2 and "is not a valid id" in err, (hostile, action, err)
    code, _, err = _cli(capsys, "results", job, "--eval", "eval-1", "--shadow", model)
    assert code == 2 and "--eval and --shadow" in err and "Give one" in err
    code, _, err = _cli(capsys, "decide", job, "--shadow", model)
    assert code == 2 and "a shadow model has no gate" in err
    with pytest.raises(UserError, match="not both"):
        build_app(store, "eval-1", shadow=model)
    assert not Path(store.path("shadows")).exists(), "nothing written"

    # with pairs: the agreeing one and unknown ids are not in the queue, and nothing is stored
    record(store, model, "2025-01-02T10:00:00Z", FIRST)
    client = TestClient(build_app(store, shadow=model), follow_redirects=False)
    for item in ("chatcmpl-2", "chatcmpl-9", "0", "..%2Fevals"):
        assert client.get(f"/pairwise/{item}", headers=BEARER).status_code == 404
        posted = client.post(f"/pairwise/{item}", data={"choice": "A"}, headers=BEARER)
        assert posted.status_code == 404, item
    bad = client.post("/pairwise/chatcmpl-1", data={"choice": "C"}, headers=BEARER)
    assert bad.status_code == 400
    assert RatingLog(store, ShadowPairs(store, model)).all() == []

    served: list = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: served.append(app))
    code, out, _ = _cli(capsys, "serve", job, "--shadow", model)
    assert code == 0 and f"reviewing shadow {model} against production and flagged" in out
    index = TestClient(served[-1]).get("/", headers=BEARER).text
    assert f"Pairwise review of shadow {model} against production" in index
    assert "0 of 3 rated by you" in index and "0 of 0 decided" in index


def test_a_reviewer_rates_shadow_pairs_in_chromium(project):
    playwright, binary = chromium()
    store, model = project.store, project.model
    record(store, model, "2025-01-02T10:00:00Z", FIRST)
    answers = {item: (shadow, production) for item, shadow, production in FIRST}
    requests, errors, shown = [], [], []
    with serving(build_app(store, shadow=model)) as url, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        page = browser.new_context().new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.goto(url + "/?token=dana")
        assert page.inner_text("#eval") == f"Pairwise review of shadow {model} against production."
        assert "0 of 3 rated by you" in page.inner_text("table")
        page.click("text=Pairwise preference: shadow vs production")
        for want in ("shadow", "production"):
            item = unquote(page.url.rsplit("/", 1)[-1])
            shadow, production = answers[item]
            a = page.locator("#answer-a pre").inner_text()
            b = page.locator("#answer-b pre").inner_text()
            assert {a, b} == {shadow, production}
            assert page.inner_text("#input pre") == f"question {item}"
            assert page.locator("#input details").count() == 0, "live traffic has no reference"
            side = "A" if a == shadow else "B"
            choice = side if want == "shadow" else "B" if side == "A" else "A"
            page.click(f"#choice-{choice}")
            page.wait_for_load_state()
            shown.append((item, side, {"shadow": "candidate"}.get(want, "incumbent")))
            if len(shown) == 1:  # traffic goes on while the reviewer rates
                record(store, model, "2025-01-02T11:00:00Z", [("chatcmpl-7", "pin", "card")])
        page.goto(url + "/pairwise/done")
        assert page.inner_text("#status").startswith("You have rated 2 of 4 pairs")
        assert page.locator("#mine tr").count() == 3
        browser.close()
    assert not errors, errors
    assert all(u.startswith(url) for u in requests), requests  # nothing from elsewhere
    stored = RatingLog(store, ShadowPairs(store, model)).all()
    assert [(r["item"], r["candidate_side"], r["preferred"]) for r in stored] == shown
    human = shadow_results(store, model)["human"]
    assert human["win_rate"] == pytest.approx(0.5)
    assert human["counts"] == {"candidate": 1, "incumbent": 1, "tie": 0, "both_bad": 0}
