"""Submitting to a running cluster through the Ray Jobs API, as a user does from a laptop."""

from __future__ import annotations

import json
import os
import re
import subprocess

from tests.conftest import BIN, ROOT


def test_ftray_submit_runs_the_job_and_streams_its_logs(tmp_path, ray_cluster, run_cli):
    dashboard = ray_cluster["dashboard"]
    # `--stage eval` (prepare, train, evaluate, register): `ftray run`'s assess and serve
    # stages are the pipeline test's; here they would only add minutes
    out = run_cli(
        *("submit", "jobs/tiny.yaml", "--address", dashboard, "--stage", "eval"),
        *("--set", f"storage={tmp_path}"),
        # nor consistency sampling, a second generation pass
        *("--set", "eval.metrics=[exact_match,classification,hallucination]"),
    ).stdout
    job_id = re.search(r"submitted (ftray-tiny-\S+) to", out).group(1)
    assert "✓ train" in out and "gate passed" in out, "the job's own output streams back"
    assert f"job {job_id}: SUCCEEDED" in out
    card = next((tmp_path / "tiny" / "models").glob("*/manifest.json"))
    assert json.loads(card.read_text())["dataset_id"].startswith("ds-")

    status = run_cli("jobs", "status", job_id, "--address", dashboard).stdout
    assert f"{job_id}: SUCCEEDED" in status
    assert job_id in run_cli("jobs", "list", "--address", dashboard).stdout
    assert "✓ train" in run_cli("jobs", "logs", job_id, "--address", dashboard).stdout
    missing = run_cli("jobs", "status", "ftray-nope", "--address", dashboard, check=False)
    assert missing.returncode == 2 and "ftray-nope" in missing.stderr


def test_ray_job_submit_as_the_readme_says(ray_cluster):
    done = subprocess.run(
        [
            *(str(BIN / "ray"), "job", "submit", "--address", ray_cluster["dashboard"]),
            *("--working-dir", ".", "--", "ftray", "validate", "jobs/tiny.yaml"),
        ],
        cwd=ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"project": "tiny"' in done.stdout
    assert "succeeded" in done.stdout.lower()


def test_failed_job_exits_nonzero(ray_cluster, run_cli):
    submit = ("submit", "jobs/tiny.yaml", "--address", ray_cluster["dashboard"])
    # Data the upload would leave out is refused here, before anything reaches the cluster.
    refused = run_cli(
        *submit, "--exclude", "data/banking77/quickstart.csv", "--no-follow", check=False
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "excluded from the upload" in refused.stderr
    # A spec that validates here but fails there: its storage cannot be created on the node.
    done = run_cli(*submit, "--stage", "prepare", "--set", "storage=/proc/ftray-store", check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "/proc/ftray-store" in done.stdout
    assert "FAILED" in done.stdout
