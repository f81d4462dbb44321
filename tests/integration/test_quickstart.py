"""The quickstart on the real SmolLM2-135M-Instruct: the tuned adapter beats the base model
significantly, passes the gate and is promoted."""

from __future__ import annotations

import json
import re

import pytest

from ftray.specload import load_spec
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow


def test_quickstart_tuned_beats_base(tmp_path, run_cli):
    out = run_cli(
        "run",
        "jobs/quickstart.yaml",
        "--set",
        f"storage={tmp_path}",
        "--set",
        f"serve.port={free_port()}",
        timeout=1500,
    ).stdout
    pattern = r"held-out exact match: incumbent ([\d.]+)%, candidate ([\d.]+)%"
    base, tuned = (float(x) / 100 for x in re.search(pattern, out).groups())
    assert tuned > base
    assert tuned >= 0.5, out
    assert "gate passed" in out and "(stage: production)" in out
    card_path = next((tmp_path / "quickstart" / "models").glob("*/manifest.json"))
    card = json.loads(card_path.read_text())
    assert card["metrics"]["candidate"]["exact_match"] == pytest.approx(tuned, abs=1e-3)
    assert card["gate"]["passed"]
    answer = re.search(r"answer from model-[0-9a-f]{12}: '([^']*)'", out).group(1)
    assert answer in load_spec(ROOT / "jobs" / "quickstart.yaml").data.labels, answer
