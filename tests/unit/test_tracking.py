"""The evaluation's W&B run, offline: metrics, the forgetting probe, the verdict, the report."""

from __future__ import annotations

import json
import time

from ftray.spec import WandbSpec
from ftray.train.tracking import log_evaluation, wandb_settings

MANIFEST = {
    "eval_id": "eval-0123456789ab",
    "run_id": "run-0123456789ab",
    "incumbent": {"label": "base model tiny"},
    "spec": {"max_examples": 8},
    "metrics": {
        "task": "classification",
        "candidate": {"macro_f1": 0.75, "hallucination_n": 8, "latency_s": {"mean": 0.1}},
        "incumbent": {"macro_f1": 0.5, "hallucination_n": 8, "latency_s": {"mean": 0.1}},
        "general_ppl": {"base": 40.0, "candidate": 44.0, "incumbent": 40.0, "ratio": 1.1},
    },
    "comparison": {"macro_f1": {"candidate": 0.75, "incumbent": 0.5, "difference": 0.25}},
    "gate": {
        "passed": False,
        "pending": False,
        "rules": [
            {"rule": "macro_f1 ≥ incumbent + 0", "passed": True, "detail": "0.75 vs 0.5"},
            {"rule": "general_ppl ratio to the base model ≤ 1.05", "passed": False, "detail": "r"},
        ],
    },
}


def _records(path) -> list:
    """wandb's protobuf records from a .wandb file: a LevelDB-style log (a 7-byte file
    header; 32 KiB blocks of chunks, each with a 4-byte checksum, a 2-byte length and a
    type: 1 whole, 2 first, 3 middle, 4 last)."""
    from wandb.proto.wandb_internal_pb2 import Record

    raw, pos, pending, records = path.read_bytes(), 7, b"", []
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header: padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(raw[pos + 4 : pos + 6], "little"), raw[pos + 6]
        pending += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(Record.FromString(pending))
            pending = b""
    return records


def _summary(folder) -> tuple[dict, object]:
    """The run's summary and run record, once wandb's service has written the run's end
    (it writes the file in the background, just after `finish` returns)."""
    (path,) = folder.glob("*.wandb")
    for _ in range(100):
        records = {r.WhichOneof("record_type"): r for r in _records(path)}
        if "exit" in records:
            break
        time.sleep(0.2)
    summary = {}
    for record in _records(path):
        for item in record.summary.update if record.HasField("summary") else ():
            summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary, records["run"].run


def test_the_evaluation_run_holds_metrics_verdict_and_report(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    settings = wandb_settings(
        WandbSpec(), "tiny", MANIFEST["eval_id"], str(tmp_path), group=MANIFEST["run_id"]
    )
    log_evaluation(settings, MANIFEST, "<html><body><h1>Evaluation report</h1></body></html>")
    (folder,) = (tmp_path / "wandb").glob(f"offline-run-*-{MANIFEST['eval_id']}")
    summary, run = _summary(folder)
    assert run.run_group == MANIFEST["run_id"] and run.job_type == "eval"
    assert summary["evaluation/candidate/macro_f1"] == 0.75
    assert summary["evaluation/incumbent/hallucination_n"] == 8
    assert summary["evaluation/general_ppl/ratio"] == 1.1
    assert summary["gate/passed"] is False and summary["gate/verdict"] == "failed"
    assert summary["gate/failed_rules"] == "general_ppl ratio to the base model ≤ 1.05"
    assert summary["run_id"] == MANIFEST["run_id"]
    (report,) = (folder / "files" / "media" / "html").glob("report_*.html")
    assert "Evaluation report" in report.read_text()
    assert list((folder / "files" / "media" / "table").glob("gate_rules_*.table.json"))


def test_disabled_tracking_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    settings = wandb_settings(WandbSpec(mode="disabled"), "tiny", "eval-x", str(tmp_path))
    log_evaluation(settings, MANIFEST, None)
    assert not list(tmp_path.iterdir())


def test_the_sweep_leaderboard_run_ranks_trials_on_the_task_metric(tmp_path, monkeypatch):
    from ftray.train.tracking import log_leaderboard

    monkeypatch.setenv("WANDB_MODE", "offline")
    rows = [
        {"trial_id": "t2", "params": {"train.lr": 0.01}, "metric": 0.8, "eval_loss": 1.4},
        {"trial_id": "t1", "params": {"train.lr": 0.001}, "metric": 0.6, "eval_loss": 1.1},
    ]
    board = [{**row, "status": "finished", "run_id": f"run-{row['trial_id']}"} for row in rows]
    manifest = {
        "sweep": {"metric": "task"},
        "metric": "macro_f1 on 64 validation examples",
        "leaderboard": board,
        "winner": board[0],
    }
    settings = wandb_settings(WandbSpec(), "tiny", "sweep-0123", str(tmp_path), group="sweep-0123")
    log_leaderboard(settings, manifest)
    (folder,) = (tmp_path / "wandb").glob("offline-run-*-sweep-0123")
    summary, run = _summary(folder)
    assert run.run_group == "sweep-0123" and run.job_type == "sweep"
    assert summary["winner/trial_id"] == "t2"
    assert summary["winner/macro_f1 on 64 validation examples"] == 0.8
    (table,) = (folder / "files" / "media" / "table").glob("leaderboard_*.table.json")
    logged = json.loads(table.read_text())
    assert logged["columns"][:4] == ["rank", "trial_id", manifest["metric"], "validation_loss"]
    assert [row[1] for row in logged["data"]] == ["t2", "t1"]
