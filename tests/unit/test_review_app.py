"""The review app through its doors: two reviewers in headless Chromium (clicks on the real
page, served by uvicorn), and bad requests with an HTTP client."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ftray.review.app import build_app
from ftray.review.http import Reviewers
from ftray.review.ratings import EvalPairs, RatingLog, reviewer_order
from ftray.review.verdict import results
from ftray.store import Store
from tests.unit.review_browser import chromium, serving
from tests.unit.review_eval import write_eval

ITEMS = 8
GATE = {"min_human_win_rate": 0.5, "min_human_ratings": 5}


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(str(tmp_path / "store"), "review")
    write_eval(store, "eval-ab", ITEMS, GATE)
    return store


@pytest.fixture
def server(store):
    """The app on uvicorn, on loopback and a free port, for the length of one test."""
    with serving(build_app(store, "eval-ab")) as url:
        yield url


def _rate_on_page(page, wants: list[tuple[str, str]]) -> list[dict]:
    """Rate the next pairs: per pair, (the arm to favour or 'tie'/'both_bad', a comment).
    Returns what the page showed: item, side of the candidate, progress before rating."""
    shown = []
    for want, comment in wants:
        item = int(re.search(r"/pairwise/(\d+)$", page.url).group(1))
        a = page.locator("#answer-a pre").inner_text()
        b = page.locator("#answer-b pre").inner_text()
        assert {a, b} == {f"candidate answer {item}", f"incumbent answer {item}"}
        side = "A" if a.startswith("candidate") else "B"
        done = int(page.locator("#done").inner_text())
        choice = {"candidate": side, "incumbent": "B" if side == "A" else "A"}.get(want, want)
        if comment:
            page.fill("#comment", comment)
        page.click(f"#choice-{choice}")
        page.wait_for_load_state()
        shown.append({"item": item, "side": side, "done": done, "want": want})
    return shown


def test_two_reviewers_rate_pairs_in_chromium(store, server):
    playwright, binary = chromium()
    requests, errors = [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        alice = browser.new_context().new_page()
        alice.on("request", lambda r: requests.append(r.url))
        alice.on("console", lambda m: m.type == "error" and errors.append(m.text))
        alice.goto(server + "/")
        assert alice.url.startswith(server + "/login")  # signs in first
        alice.fill("#token", "alice")
        alice.click("#sign-in")
        assert "0 of 8 rated" in alice.inner_text("table")
        alice.click("text=Pairwise preference")
        wants = [("candidate", ""), ("candidate", "clearer"), ("incumbent", "alice-only note")]
        wants += [("tie", ""), ("candidate", "")]
        shown_a = _rate_on_page(alice, wants)
        assert [s["done"] for s in shown_a] == [0, 1, 2, 3, 4]  # progress moves per rating

        # bob signs in from a link with ?token=, which the app turns into a cookie
        bob = browser.new_context().new_page()
        bob.on("request", lambda r: requests.append(r.url))
        bob.on("console", lambda m: m.type == "error" and errors.append(m.text))
        bob.goto(server + "/pairwise?token=bob")
        assert "token=" not in bob.url and bob.inner_text("#reviewer") == "bob"
        shown_b = _rate_on_page(bob, [("candidate", ""), ("both_bad", "both wrong"), ("tie", "")])
        for item in {s["item"] for s in shown_a}:  # never alice's choices or comments
            bob.goto(f"{server}/pairwise/{item}")
            assert bob.locator("#mine").count() == 0 or item in {s["item"] for s in shown_b}
            assert "alice-only note" not in bob.content() and "clearer" not in bob.content()
        bob.goto(server + "/pairwise/done")
        assert bob.locator("#mine tr").count() == 1 + len(shown_b)
        assert "alice-only note" not in bob.content()

        # alice sees her own choice and can change it
        alice.goto(f"{server}/pairwise/{shown_a[2]['item']}")
        assert "alice-only note" in alice.inner_text("#mine")
        browser.close()
    assert not errors, errors
    assert all(url.startswith(server) for url in requests), requests  # nothing from elsewhere

    stored = RatingLog(store, EvalPairs(store, "eval-ab")).all()
    by = {name: [r for r in stored if r["reviewer"] == name] for name in ("alice", "bob")}
    for name, shown in (("alice", shown_a), ("bob", shown_b)):
        # the order each reviewer met the pairs is theirs, and each side is recorded as shown
        order = reviewer_order("eval-ab", name, range(ITEMS))
        assert [r["item"] for r in by[name]] == order[: len(shown)]
        assert [r["candidate_side"] for r in by[name]] == [s["side"] for s in shown]
        assert [r["preferred"] for r in by[name]] == [s["want"] for s in shown]
        assert [r["position"] for r in by[name]] == list(range(1, len(shown) + 1))
    assert [r["item"] for r in by["alice"][:3]] != [r["item"] for r in by["bob"]]
    assert {r["candidate_side"] for r in stored} == {"A", "B"}
    assert by["alice"][2]["comment"] == "alice-only note"

    # win rate by hand: per item, candidate 1, tie ½, incumbent 0, 'both bad' out
    scores: dict[int, list[float]] = {}
    for s in shown_a + shown_b:
        if s["want"] != "both_bad":
            scores.setdefault(s["item"], []).append({"candidate": 1, "tie": 0.5}.get(s["want"], 0))
    expected = sum(sum(v) / len(v) for v in scores.values()) / len(scores)
    found = results(store, "eval-ab")
    assert found["human"]["win_rate"] == pytest.approx(expected)
    assert found["human"]["win_rate_ratings"] == 7 and found["human"]["counts"]["both_bad"] == 1


def test_bad_requests_are_refused_and_lose_nothing(store):
    client = TestClient(build_app(store, "eval-ab"), follow_redirects=False)
    bearer = {"Authorization": "Bearer carol"}
    assert client.post("/pairwise/0", data={"choice": "A"}, headers=bearer).status_code == 303
    log = RatingLog(store, EvalPairs(store, "eval-ab"))
    before = log.all()
    assert [(r["reviewer"], r["item"], r["choice"]) for r in before] == [("carol", 0, "A")]

    assert client.post("/pairwise/0", data={"choice": "A"}).status_code == 401  # nobody
    assert client.get("/pairwise/0").headers["location"] == "/login?next=/pairwise/0"
    for item, form, status in [
        ("99", {"choice": "A"}, 404),
        ("x", {"choice": "A"}, 404),
        ("1", {"choice": "C"}, 400),
        ("1", {}, 400),
        ("1", {"choice": "tie", "comment": "x" * 5000}, 400),
    ]:
        response = client.post(f"/pairwise/{item}", data=form, headers=bearer)
        assert response.status_code == status, (item, form, response.text)
    assert client.get("/pairwise/99", headers=bearer).status_code == 404
    assert client.post("/login", data={"token": "no spaces allowed"}).status_code == 401
    assert log.all() == before  # nothing added, nothing lost

    page = client.get("/pairwise/1", headers=bearer)
    assert (
        page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    )
    assert "<script" not in page.text and "http://" not in page.text and "https://" not in page.text


def test_token_list_and_mounting_under_a_prefix(store):
    reviewers = Reviewers.from_names({"alice": "tok-alice-1234"})
    outer = FastAPI()
    outer.mount("/review", build_app(store, "eval-ab", reviewers))
    client = TestClient(outer, follow_redirects=False)
    assert client.get("/review/").headers["location"] == "/review/login?next=/review/"
    assert client.post("/review/login", data={"token": "alice"}).status_code == 401  # a name
    signed = client.get("/review/pairwise?token=tok-alice-1234")
    assert signed.headers["location"] == "/review/pairwise"
    assert "ftray_reviewer=tok-alice-1234" in signed.headers["set-cookie"]
    first = client.get("/review/pairwise").headers["location"]
    assert re.fullmatch(r"/review/pairwise/\d+", first)
    page = client.get(first)
    assert 'action="/review/pairwise/' in page.text and ">alice<" in page.text
    with pytest.raises(Exception, match="shorter than 8"):
        Reviewers.from_names({"bob": "short"})
