# Not named test_monitor*.py: `ray stop --force` (the session teardown) kills every process
# whose command line contains "monitor.py".
"""`ftray monitor` per served model on the session's Ray, with the real embedding actor: two
adapters on one base, the production model and a 10% canary, each trained on its own
dataset; only the canary's inputs drift. The alert names the canary, the production model is
quiet (its label shift against its own training labels near 0, where the canary's labels
would make it large), and the canary's alert starts no retrain."""

from __future__ import annotations

import asyncio
import json
import random

import yaml

from ftray import registry, routing
from ftray.monitor import checks as c
from ftray.store import Store
from tests.integration.colors import query
from tests.unit.test_monitoring_per_model import _answers, _dataset, _model, _traffic


def test_only_the_drifting_adapter_alerts(tmp_path, run_cli):
    spec = {
        "project": "tenants",
        "storage": str(tmp_path / "store"),
        "model": {"base": "tiny"},
        "data": {"sources": [{"path": "data.csv"}], "labels": ["red", "blue"]},
        "monitor": {"retrain": {"on_alerts": ["any"]}},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    store = Store(spec["storage"], spec["project"])
    rng = random.Random(3)
    colors = [query(rng, i)[0] for i in range(240)]
    mostly_red, mostly_blue = ["red"] * 9 + ["blue"], ["blue"] * 9 + ["red"]
    _dataset(store, "ds-red", mostly_red * 12, colors[:120])
    _dataset(store, "ds-blue", mostly_blue * 12, colors[120:])
    production = _model(store, "red", "ds-red", 1)
    canary = _model(store, "blue", "ds-blue", 1)
    registry.promote(store, production, reason="test")
    routing.canary(store, canary, percent=10, reason="test")
    weather = [f"Will it rain in Paris on day {i}? Tell me the forecast." for i in range(60)]
    steady = _answers(production, mostly_red * 6)
    drifted = [
        {**row, "prompt": prompt, "split": True}
        for row, prompt in zip(_answers(canary, mostly_blue * 6), weather, strict=True)
    ]
    for row, prompt in zip(steady, colors[::4], strict=False):
        row.update(prompt=prompt, split=True)
    asyncio.run(_traffic(store, steady + drifted))

    done = run_cli("monitor", str(path), check=False)
    assert done.returncode == 6, done.stdout + done.stderr
    latest = json.loads(store.fs.cat(store.path("monitor", "latest.json")))
    alerts = [(k["model"], k["check"]) for k in latest["checks"] if k["alert"]]
    assert alerts == [(canary, "input_drift_psi")], latest["checks"]
    roles = {m["model"]: (m["role"], m["samples"], m["split_samples"]) for m in latest["models"]}
    assert roles == {production: ("production", 60, 60), canary: ("canary", 60, 60)}
    checks = {(k["model"], k["check"]): k for k in latest["checks"]}
    assert checks[(production, "input_drift_psi")]["value"] < 0.2
    # each model against its own training labels: the production model's answers match its
    # own; against the canary's training labels (a pooled reference) they would alert
    assert checks[(production, "label_shift_psi")]["value"] < 0.01
    assert c.categorical_psi(mostly_blue * 12, mostly_red * 6) > 1
    assert "ALERT input_drift_psi" in done.stdout and f"on model {canary} over 60" in done.stdout
    assert "retrain due" not in done.stdout, "a canary's alert is not production's"
    (name,) = store.fs.ls(store.path("monitor", "alerts"))
    assert name.endswith(f"-{canary}-input_drift_psi.json")
