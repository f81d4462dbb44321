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


GPU_JOBS = sorted((ROOT / "jobs" / "gpu").glob("*.yaml"))


def test_there_are_gpu_jobs():
    names = {job.name for job in GPU_JOBS}
    assert {"llama-3.1-8b-qlora-24gb.yaml", "llama-3.1-70b-qlora-8x80gb.yaml"} <= names
    assert {"llama-3.1-8b-lora-8x80gb.yaml", "llama-3.1-8b-full-zero3-8x80gb.yaml"} <= names


@pytest.mark.parametrize("job", GPU_JOBS, ids=[job.name for job in GPU_JOBS])
def test_gpu_job_is_valid_and_its_memory_comment_is_the_estimate(job, monkeypatch, capsys):
    """Each GPU job validates and is sized offline (its model's config ships in the repo, the
    weights are never fetched); the memory its header states is what the estimator says, and
    the job's own method fits the hardware it names."""
    import re

    from ftray.cli import main

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = load_spec(job)
    assert spec.model.chat_template, "a base checkpoint needs model.chat_template"
    assert not Path(spec.model.base).exists(), "a hub id of the real base checkpoint"
    header = job.read_text().split("\nproject:")[0]
    assert "Sized for:" in header
    stated = float(re.search(r"Expected GPU memory: ~([\d.]+) GiB", header)[1])

    assert main(["assess", str(job.relative_to(ROOT)), "--estimates-only"]) == 0
    out = capsys.readouterr().out
    chosen = next(line for line in out.splitlines() if "← train.method" in line)
    assert f" {spec.train.base_method} " in chosen and " fits on " in chosen, out
    estimated = float(re.search(r"([\d.]+) GiB/GPU", chosen)[1])
    assert abs(estimated - stated) <= max(0.05 * estimated, 0.1), (stated, estimated)


def test_a_missing_base_config_is_named(monkeypatch):
    from ftray.specload import SpecError

    monkeypatch.chdir(ROOT)
    with pytest.raises(SpecError, match=r"assess\.base_config[\s\S]*no such file"):
        load_spec(GPU_JOBS[0], ["assess.base_config=jobs/gpu/configs/nope.json"])
