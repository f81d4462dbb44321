# Not named test_monitor.py: `ray stop --force` (the session teardown) kills every process
# whose command line contains "monitor.py", Ray's autoscaler monitor, and pytest with it.
"""The loop after deployment, on the session's local Ray: the Serve app samples traffic and
takes feedback, `ftray monitor` stays quiet on normal traffic and alerts a local webhook
on drifted traffic, and, with `monitor.retrain.on_alerts` naming the drift check, starts the
retrain itself: the next dataset version from the accepted corrections, trained, and decided
by the gate against the production model; on the next alert, with no new corrections, not."""

from __future__ import annotations

import concurrent.futures
import http.server
import json
import random
import re
import threading
import time

import httpx
import pyarrow.parquet as pq
import pytest

from tests.conftest import free_port
from tests.integration.colors import query
from tests.integration.test_serve import _start, _stop

SERVE = [
    "--set",
    "monitor.sample_rate=1.0",
    "--set",
    "monitor.flush_interval_s=1",
    "--set",
    "monitor.accept_corrections=auto",
]
# The tiny model answers 'red' to everything (the majority label), so its answers' label shift
# against the training set is real and large on any traffic; and its answer length jitters
# by a token under batching (a cut 're' now and then), which the length PSI over two bins
# magnifies. This test is about input drift: both other drift limits are opened.
MONITOR = [
    "--set",
    "monitor.min_samples=100",
    "--set",
    "monitor.webhook_url_env=FTRAY_HOOK",
    "--set",
    "monitor.max_label_shift_psi=10",
    "--set",
    "monitor.max_length_drift_psi=10",
]


@pytest.fixture
def webhook():
    """A local HTTP server on 127.0.0.1 recording what is posted to it."""
    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()


def _traffic(url: str, prompts: list[str]) -> list[dict]:
    def ask(prompt):
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            timeout=120,
            json={"model": "production", "messages": [{"role": "user", "content": prompt}]},
        )
        reply.raise_for_status()
        return reply.json()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, prompts))
    return [{**reply, "prompt": prompt} for reply, prompt in zip(replies, prompts, strict=True)]


def _wait_written(url: str, count: int) -> None:
    deadline = time.time() + 60
    while httpx.get(f"{url}/ready").json()["sampling"]["written"] < count:
        assert time.time() < deadline, httpx.get(f"{url}/ready").json()
        time.sleep(1)


def test_monitor_alerts_on_drift_and_retrain_closes_the_loop(
    colors_job, run_cli, ray_address, webhook
):
    path, root = colors_job
    models = run_cli("models", "list", str(path)).stdout
    if "production" not in models:  # alone, without test_gate before it
        run_cli("eval", str(path))
    production = re.search(
        r"(model-[0-9a-f]{12})\s+production", run_cli("models", "list", str(path)).stdout
    ).group(1)
    port = free_port()
    process, _ = _start(ray_address, path, "--set", f"serve.port={port}", *SERVE)
    url = f"http://127.0.0.1:{port}"
    hook_url, received = webhook
    monitor_env = {"FTRAY_HOOK": hook_url}
    try:
        rng = random.Random(7)
        normal = _traffic(url, [query(rng, 1000 + i)[0] for i in range(150)])
        _wait_written(url, 151)  # + the example request of `ftray serve`
        # feedback: two corrections (accepted automatically here), a flag, a bad request
        for reply in normal[:2]:
            answer = httpx.post(
                f"{url}/v1/feedback",
                json={"request_id": reply["id"], "correction": "blue", "rating": 1},
            )
            assert answer.json()["matched_request"] is True
        assert httpx.post(
            f"{url}/v1/feedback", json={"request_id": normal[2]["id"], "flag": True}
        ).json()["flagged"]
        assert httpx.post(f"{url}/v1/feedback", json={"request_id": "x"}).status_code == 400

        quiet = run_cli("monitor", str(path), *MONITOR, env=monitor_env)
        assert "ALERT" not in quiet.stdout, quiet.stdout
        assert received == []

        drifted = [
            f"Could you tell me what the weather will be like in Paris on day {i}?"
            for i in range(150)
        ]
        _traffic(url, drifted)
        _wait_written(url, 301)
    finally:
        _stop(process)
    datasets_before = {p.name for p in (root / "datasets").iterdir()}
    on_drift = ["--set", "monitor.retrain.on_alerts=[input_drift_psi]"]
    loud = run_cli("monitor", str(path), *MONITOR, *on_drift, check=False, env=monitor_env)
    assert loud.returncode == 6, loud.stdout + loud.stderr
    assert "ALERT input_drift_psi" in loud.stdout
    assert "retrain due (alert: input_drift_psi)" in loud.stdout
    alert = next(post for post in received if post["ftray"]["check"] == "input_drift_psi")
    assert alert["text"].startswith("ftray alert [gate] input_drift_psi")
    assert f"on model {production} over" in alert["text"] and alert["ftray"]["model"] == production
    assert any("weather" in e["prompt"] for e in alert["ftray"]["examples"])
    samples = pq.read_table(root / "monitor" / "samples").to_pandas()
    assert len(samples) >= 301 and set(samples["model"]) == {production}
    report = (root / "monitor" / "report.md").read_text()
    assert "input_drift_psi" in report and "![input_drift_psi](plots/input_drift_psi.png)" in report
    assert (
        f'ftray_monitor_alert{{project="gate",model="{production}",check="input_drift_psi"}} 1'
        in (root / "monitor" / "metrics.prom").read_text()
    )

    done = loud
    assert "2 accepted correction(s)" in done.stdout
    (retrain,) = [json.loads(p.read_text()) for p in (root / "monitor" / "retrains").iterdir()]
    assert retrain["reason"] == "alert: input_drift_psi"
    assert retrain["outcome"]["stage"] in ("production", "rejected"), retrain
    new = {p.name for p in (root / "datasets").iterdir()} - datasets_before
    assert len(new) == 1
    dataset_id = new.pop()
    manifest = json.loads((root / "datasets" / dataset_id / "manifest.json").read_text())
    kept = pq.read_table(root / "datasets" / dataset_id / "train").to_pandas()
    held = pq.read_table(root / "datasets" / dataset_id / "eval").to_pandas()
    corrected = {normal[0]["prompt"], normal[1]["prompt"]}
    both = [(p, c) for t in (kept, held) for p, c in zip(t["prompt"], t["completion"], strict=True)]
    assert {(p, "blue") for p in corrected} <= set(both), "the corrections are in the new version"
    shown = run_cli("data", "show", str(path), dataset_id).stdout
    assert re.search(r"models trained on it: model-[0-9a-f]{12} \((production|rejected)", shown)
    assert any("corrections-" in s["path"] for s in manifest["sources"]), manifest["sources"]
    evaluation = re.search(r"evaluation report: (\S+)/report.html", done.stdout).group(1)
    compared = json.loads(
        (root / "evals" / evaluation.rsplit("/", 1)[-1] / "manifest.json").read_text()
    )
    assert compared["incumbent"]["model_id"] == production

    # a second alert, no new corrections: nothing new to learn, so no retrain
    calm = run_cli("monitor", str(path), *MONITOR, *on_drift, check=False, env=monitor_env)
    assert "retrain due (alert: input_drift_psi) but skipped: no new accepted corrections" in (
        calm.stdout
    ), calm.stdout
    assert {p.name for p in (root / "datasets").iterdir()} - datasets_before == {dataset_id}
