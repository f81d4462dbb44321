"""The flagged-output queue through its doors: two reviewers in headless Chromium deciding
flagged feedback, bad requests with an HTTP client, and `ftray review` with and without an
evaluation."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from ftray.cli import main
from ftray.monitor import feedback
from ftray.review.app import build_app
from ftray.store import Store
from tests.unit.review_browser import chromium, serving
from tests.unit.review_eval import write_eval, write_job

CARD = "In 3 to 5 working days.\nTrack it under Cards > Delivery."
PIN = 'Open "Settings > PIN" & follow <the> steps.'
RECORDS = [  # oldest first; the second one is praise, not a flag
    {"model": "model-a", "rating": -1, "flag": True, "comment": "wrong date", "correction": CARD,
     "prompt": "When does my card arrive?", "output": "Never."},
    {"model": "model-a", "rating": 1, "flag": False, "comment": "great", "correction": None,
     "prompt": "Hi", "output": "Hello!"},
    {"model": "model-a", "rating": -1, "flag": False, "comment": None, "correction": PIN,
     "prompt": "How do I reset my PIN?", "output": "Call us."},
    # what a monitoring check writes: the check's name as the comment
    {"model": "model-b", "rating": None, "flag": True, "comment": "empty_or_refusal",
     "correction": None, "prompt": "Close my account", "output": "I can't help with that."},
    {"model": "model-b", "rating": -1, "flag": True, "comment": "made up a fee",
     "correction": None, "prompt": "Is there a fee for transfers?", "output": "Yes, 50 EUR."},
]  # fmt: skip


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(str(tmp_path / "store"), "review")
    for i, record in enumerate(RECORDS):
        feedback.store_feedback(store, {"request_id": f"req-{i}", **record})
    return store


@pytest.fixture
def ids(store) -> list[str]:
    return [f["feedback_id"] for f in feedback.all_feedback(store)]


def test_reviewers_accept_edit_and_reject_in_chromium(store, ids):
    playwright, binary = chromium()
    card, _, pin, refusal, fee = ids
    edited = "Open Settings > PIN, then follow the steps.\nIt takes a minute."
    written = "No: transfers within the EU are free."
    requests, errors = [], []
    with serving(build_app(store, None)) as server, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=["--no-sandbox"])

        def page_for(name: str):
            page = browser.new_context().new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.goto(f"{server}/flagged?token={name}")
            return page

        alice = page_for("alice")
        alice.goto(server + "/")
        assert "Pairwise" not in alice.inner_text("table")  # no evaluation: one queue
        assert "0 of 4 decided" in alice.inner_text("table")
        alice.click("text=Flagged outputs")

        assert alice.url == f"{server}/flagged/{card}"
        assert alice.inner_text("#prompt pre") == "When does my card arrive?"
        assert alice.inner_text("#output pre") == "Never."
        assert "model-a" in alice.inner_text("#feedback")
        assert "wrong date" in alice.inner_text("#feedback")
        assert alice.input_value("#correction") == CARD
        alice.click("#decision-accept")  # the user's correction as it is

        assert alice.url == f"{server}/flagged/{pin}"  # the praise is not in the queue
        assert alice.inner_text("#done") == "1"
        assert alice.input_value("#correction") == PIN  # escaped, then read back intact
        alice.fill("#correction", edited)
        alice.click("#decision-accept")

        assert alice.url == f"{server}/flagged/{refusal}"
        assert "empty_or_refusal" in alice.inner_text("#feedback")  # the check that flagged it
        assert alice.input_value("#correction") == ""
        alice.click("#decision-reject")
        assert alice.url == f"{server}/flagged/{fee}"

        bob = page_for("bob")  # alice's decisions have left bob's queue too
        assert bob.url == f"{server}/flagged/{fee}" and bob.inner_text("#done") == "3"
        bob.click("#decision-accept")  # nothing written in the box
        assert "accepting needs a corrected output" in bob.inner_text(".error")
        assert "400" in errors.pop()  # the browser logs the refused post; nothing else
        bob.goto(server + "/flagged")
        bob.fill("#correction", written)
        bob.click("#decision-accept")
        assert "No flagged output waits" in bob.inner_text("#status")
        assert "4 of 4 decided" in bob.inner_text("#status")

        alice.reload()  # the item alice left open was decided by bob
        assert "already decided (accept) by bob" in alice.inner_text(".error")
        browser.close()
    assert not errors, errors
    assert all(url.startswith(server) for url in requests), requests  # nothing from elsewhere

    decided = feedback.decisions(store)
    assert {k: (d["decision"], d["output"], d["by"]) for k, d in decided.items()} == {
        card: ("accept", CARD, "alice"),
        pin: ("accept", edited, "alice"),
        refusal: ("reject", None, "alice"),
        fee: ("accept", written, "bob"),
    }
    assert feedback.accepted_corrections(store) == [
        {"feedback_id": card, "prompt": "When does my card arrive?", "completion": CARD},
        {"feedback_id": pin, "prompt": "How do I reset my PIN?", "completion": edited},
        {"feedback_id": fee, "prompt": "Is there a fee for transfers?", "completion": written},
    ]
    assert feedback.pending(store) == []


def test_bad_decisions_are_refused_and_lose_nothing(store, ids):
    client = TestClient(build_app(store, None), follow_redirects=False)
    card, praise, pin, refusal, _ = ids
    bearer = {"Authorization": "Bearer carol"}
    assert client.post(f"/flagged/{card}", data={"decision": "reject"}).status_code == 401
    for item, form, status in [
        ("fb-nope", {"decision": "accept", "output": "x"}, 404),
        (praise, {"decision": "reject"}, 404),  # feedback, but not flagged
        (card, {"decision": "maybe"}, 400),
        (card, {}, 400),
        (card, {"decision": "accept", "output": ""}, 400),  # the box was emptied
        (refusal, {"decision": "accept", "output": " \r\n "}, 400),
        (card, {"decision": "accept", "output": "x" * 20_001}, 400),
    ]:
        response = client.post(f"/flagged/{item}", data=form, headers=bearer)
        assert response.status_code == status, (item, form, response.text)
    assert client.get("/flagged/fb-nope", headers=bearer).status_code == 404
    assert client.get("/pairwise", headers=bearer).status_code == 404  # no evaluation
    assert feedback.decisions(store) == {}  # nothing stored

    ok = client.post(f"/flagged/{pin}", data={"decision": "reject"}, headers=bearer)
    assert ok.status_code == 303 and ok.headers["location"] == "/flagged"
    late = client.post(
        f"/flagged/{pin}", data={"decision": "accept", "output": "mine"}, headers=bearer
    )
    assert late.status_code == 409 and "already decided (reject) by carol" in late.text
    assert [d["decision"] for d in feedback.decisions(store).values()] == ["reject"]
    assert client.get(f"/flagged/{pin}", headers=bearer).status_code == 200

    page = client.get(f"/flagged/{card}", headers=bearer)
    assert (
        page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    )
    assert "<script" not in page.text and "http://" not in page.text and "https://" not in page.text


def test_ftray_review_serves_flagged_only_until_there_is_an_evaluation(
    tmp_path, monkeypatch, capsys
):
    import uvicorn

    job = write_job(tmp_path, {})
    store = Store(str(tmp_path / "store"), "review")
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: served.append(app))
    bearer = {"Authorization": "Bearer alice"}

    def queues() -> str:
        client = TestClient(served[-1])
        return client.get("/", headers=bearer).text

    assert main(["review", job]) == 0
    assert "reviewing flagged outputs:" in capsys.readouterr().out
    index = queues()
    assert "/pairwise" not in index and "0 of 0 decided" in index and "No evaluation yet" in index
    assert main(["review", "results", job]) == 2  # results still need an evaluation
    assert "no finished evaluation" in capsys.readouterr().err

    write_eval(store, "eval-1", 3, {})  # and no feedback yet
    assert main(["review", job]) == 0
    assert "evaluation eval-1 and flagged outputs" in capsys.readouterr().out
    index = queues()
    assert "0 of 3 rated by you" in index and "0 of 0 decided" in index
