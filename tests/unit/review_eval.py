"""A finished evaluation written by hand (outputs table + manifest), for the review tests."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ftray.evaluate.gate import apply_gate
from ftray.spec import EvalSpec
from ftray.store import Store


def write_job(folder, gate: dict) -> str:
    """A job spec whose storage is `folder/store`, with `gate` as eval.gate."""
    (folder / "data.csv").write_text("text,label\nhello,a\n")
    spec = {
        "project": "review",
        "storage": str(folder / "store"),
        "model": {"base": "tiny"},
        "data": {
            "sources": [{"path": str(folder / "data.csv")}],
            "prompt_field": "text",
            "completion_field": "label",
        },
        "eval": {"gate": gate},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def write_eval(store: Store, eval_id: str, items: int, gate: dict, better: bool = True) -> dict:
    """`evals/<eval_id>/` with `items` pairs; the candidate wins the automatic metric when
    `better`. Returns the manifest."""
    rows = [
        {
            "source": "data.csv",
            "row": i,
            "prompt": f"Question {i}: where is my card?",
            "completion": f"reference {i}",
            "candidate_output": f"candidate answer {i}",
            "incumbent_output": f"incumbent answer {i}",
        }
        for i in range(items)
    ]
    path = store.path("evals", eval_id, "outputs", "part-0.parquet")
    store.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    spec = EvalSpec(gate=gate)
    candidate, incumbent = (0.8, 0.5) if better else (0.4, 0.5)
    diff = candidate - incumbent
    comparison = {
        "macro_f1": {
            "candidate": candidate,
            "incumbent": incumbent,
            "difference": diff,
            "difference_interval": [diff - 0.05, diff + 0.05],
        }
    }
    manifest = {
        "eval_id": eval_id,
        "run_id": f"run-of-{eval_id}",
        "dataset_id": "ds-1",
        "spec": spec.model_dump(mode="json"),
        "incumbent": {"kind": "base", "model_id": None, "label": "base model tiny"},
        "metrics": {
            "examples": items,
            "task": "classification",
            "primary_metric": "macro_f1",
            "candidate": {"macro_f1": candidate},
            "incumbent": {"macro_f1": incumbent},
        },
        "comparison": comparison,
        "gate": apply_gate(spec.gate, "macro_f1", comparison),
    }
    return store.finish(manifest, "evals", eval_id)
