"""`ftray prepare` on messy input: every bad record quarantined with its rule and location."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import yaml


def test_bad_records_are_quarantined_not_fatal(tmp_path, run_cli):
    good = [{"q": f"where is my card number {i}?", "a": "card_arrival"} for i in range(20)]
    lines = [json.dumps(r) for r in good]
    lines += [
        '{"q": "broken json", "a": ',  # line 21
        json.dumps({"a": "card_arrival"}),  # 22: no prompt field
        json.dumps({"q": 42, "a": "card_arrival"}),  # 23: wrong type
        json.dumps({"q": "   ", "a": "card_arrival"}),  # 24: empty
        json.dumps({"q": "what is a swift code?", "a": "swift"}),  # 25: not an allowed label
        json.dumps(["not", "an", "object"]),  # 26
    ]
    source = tmp_path / "data.jsonl"
    source.write_text("\n".join(lines) + "\n")
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "project": "messy",
                "storage": str(tmp_path / "store"),
                "model": {"base": "tiny"},
                "data": {
                    "sources": [{"path": str(source)}],
                    "prompt_field": "q",
                    "completion_field": "a",
                    "labels": ["card_arrival"],
                    "eval_fraction": 0.2,
                },
            }
        )
    )
    out = run_cli("prepare", str(job)).stdout
    assert "6 quarantined" in out

    dataset = next((tmp_path / "store" / "messy" / "datasets").iterdir())
    counts = json.loads((dataset / "manifest.json").read_text())["counts"]
    assert counts["input"] == 26
    assert counts["train"] + counts["eval"] == 20
    rows = {r["row"]: r for r in pq.read_table(dataset / "quarantine").to_pylist()}
    expected = {
        21: "malformed",
        22: "missing_field",
        23: "wrong_type",
        24: "empty_field",
        25: "label_not_allowed",
        26: "malformed",
    }
    assert {row: r["rule"] for row, r in rows.items()} == expected
    assert all(r["source"] == str(source) and r["reason"] for r in rows.values())
    assert "'swift' is not in data.labels" in rows[25]["reason"]
