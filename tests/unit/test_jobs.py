"""Every job spec shipped in jobs/ is valid, and its data files exist in the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftray.data.sources import expand_sources
from ftray.specload import load_spec

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))


def test_there_are_jobs():
    assert {"quickstart.yaml", "tiny.yaml"} <= {job.name for job in JOBS}


@pytest.mark.parametrize("job", JOBS, ids=[job.name for job in JOBS])
def test_job_is_valid(job, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = load_spec(job)
    assert expand_sources(spec.data.sources)
    first = job.read_text().splitlines()[0]
    assert first.startswith("# ") and "ftray" in first, "a job begins with the command to run it"
