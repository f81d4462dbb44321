"""ASHA vs an exhaustive grid on the same search space and data.

    python -m bench.sweep [--steps 12] [--eval-every 3]

Both sweeps search the same 8-point grid (4 learning rates × 2 LoRA ranks) on
`jobs/tiny-sweep.yaml`'s data and tiny model, one Ray Train worker per trial, two trials at
once, on an embedded local Ray: `fifo` runs every trial to the end, `asha` stops trials that
trail at each rung of evaluations. Reported per sweep: trial-steps spent (the sum over
trials of the optimizer steps each ran), wall time and the best eval loss reached; results
go to bench/results/sweep.json. Nothing is asserted about time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "sweep.json"
GRID = {
    "train.lr": {"type": "grid", "values": [1e-4, 1e-3, 1e-2, 3e-2]},
    "train.lora.r": {"type": "grid", "values": [2, 4]},
}


def run(scheduler: str, steps: int, eval_every: int, storage: str) -> dict:
    from ftray.pipeline import Pipeline
    from ftray.progress import Progress
    from ftray.runtime import ray_session
    from ftray.specload import load_spec

    overrides = [
        f"storage={storage}",
        f"train.max_steps={steps}",
        f"train.eval_every={eval_every}",
        "train.scaling.num_workers=1",
        "train.early_stopping.patience=null",
        "wandb.mode=disabled",
        f"sweep.parameters={json.dumps(GRID)}",
        "sweep.num_samples=1",
        f"sweep.scheduler={scheduler}",
        "sweep.max_concurrent=2",
    ]
    spec = load_spec(str(ROOT / "jobs" / "tiny-sweep.yaml"), overrides)
    with ray_session(spec.ray):
        pipeline = Pipeline(spec, Progress())
        pipeline.dataset  # noqa: B018  (prepared outside the timed part)
        started = time.perf_counter()
        ref = pipeline.sweep
        seconds = time.perf_counter() - started
    board = ref.manifest["leaderboard"]
    return {
        "trials": len(board),
        "trial_steps": sum(row["steps"] or 0 for row in board),
        "stopped_early": sum(row["status"] == "stopped by ASHA" for row in board),
        "best_eval_loss": min(row["metric"] for row in board if row["metric"] is not None),
        "winner_params": board[0]["params"],
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--eval-every", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    runs = {}
    for scheduler in ("fifo", "asha"):
        with tempfile.TemporaryDirectory() as storage:
            runs[scheduler] = run(scheduler, args.steps, args.eval_every, storage)
    results = {
        "machine": f"{os.cpu_count()} CPUs",
        "space": GRID,
        "steps_per_trial": args.steps,
        "eval_every": args.eval_every,
        "runs": runs,
        "trial_steps_ratio_asha_vs_grid": round(
            runs["asha"]["trial_steps"] / runs["fifo"]["trial_steps"], 3
        ),
        "best_eval_loss_gap_asha_minus_grid": round(
            runs["asha"]["best_eval_loss"] - runs["fifo"]["best_eval_loss"], 5
        ),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
