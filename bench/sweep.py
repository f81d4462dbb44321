"""ASHA vs FIFO on the same random search: trial-steps spent, and the best reached.

    python -m bench.sweep [--trials 16] [--steps 12] [--eval-every 2] [--seed 0]

Both sweeps sample the same `--trials` points (one seed) of a space where pruning can matter,
the learning rate (log-uniform over two decades and a half), the LoRA rank and the warmup
share, on `jobs/tiny-sweep.yaml`'s data and tiny model, ranked on validation loss, one Ray
Train worker per trial, two trials at once, on an embedded local Ray: `fifo` runs every trial
to the end, `asha` (its grace period and reduction factor derived from the trial budget, the
defaults) stops trials that trail at each rung of evaluations. Reported per sweep: trial-steps
(the sum over trials of the optimizer steps at each trial's last report), wall time, the best
validation loss and its trial, and each trial's validation loss at every evaluation. Results
go to bench/results/sweep.json; nothing is asserted.
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
SPACE = {
    "train.lr": {"type": "loguniform", "low": 1e-4, "high": 3e-2},
    "train.lora.r": {"type": "choice", "values": [2, 4, 8]},
    "train.warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.5},
}


def run(scheduler: str, args, storage: str) -> dict:
    from ftray.pipeline import Pipeline
    from ftray.progress import Progress
    from ftray.runtime import ray_session
    from ftray.specload import load_spec
    from ftray.store import Store
    from ftray.sweep import asha_rungs, evaluations_per_trial

    overrides = [
        f"storage={storage}",
        f"train.max_steps={args.steps}",
        f"train.eval_every={args.eval_every}",
        "train.scaling.num_workers=1",
        "train.early_stopping.patience=null",
        "wandb.mode=disabled",
        f"sweep.parameters={json.dumps(SPACE)}",
        f"sweep.num_samples={args.trials}",
        f"sweep.seed={args.seed}",
        "sweep.metric=eval_loss",
        f"sweep.scheduler={scheduler}",
        "sweep.max_concurrent=2",
    ]
    spec = load_spec(str(ROOT / "jobs" / "tiny-sweep.yaml"), overrides)
    with ray_session(spec.ray):
        pipeline = Pipeline(spec, Progress())
        dataset = pipeline.dataset  # prepared outside the timed part
        started = time.perf_counter()
        ref = pipeline.sweep
        seconds = time.perf_counter() - started
    board = ref.manifest["leaderboard"]
    tune_folder = Path(Store(spec.storage, spec.project).path("sweeps", ref.id, "tune"))
    assert spec.sweep is not None
    evaluations = evaluations_per_trial(spec.train, dataset.manifest["counts"]["train"])
    grace, factor = asha_rungs(spec.sweep, evaluations)
    return {
        "trials": len(board),
        "evaluations_per_trial": evaluations,
        **({"grace_period": grace, "reduction_factor": factor} if scheduler == "asha" else {}),
        "trial_steps": sum(row["steps"] or 0 for row in board),
        "stopped_early": sum(row["status"] == "stopped by ASHA" for row in board),
        "best_eval_loss": board[0]["metric"],
        "winner_params": board[0]["params"],
        "seconds": round(seconds, 1),
        # compared between the runs: the same samples, and each trial's validation losses
        "trials_run": sorted(
            (
                [row["params"], row["steps"], row["metric"], curve(tune_folder, row["trial_id"])]
                for row in board
            ),
            key=lambda trial: json.dumps(trial[0], sort_keys=True),
        ),
    }


def curve(tune_folder: Path, trial_id: str) -> list[float]:
    """A trial's validation loss at each evaluation it reported (its Tune progress file)."""
    import pandas as pd

    progress = pd.read_csv(tune_folder / trial_id / "progress.csv")
    return [round(float(loss), 5) for loss in progress["eval_loss"].dropna()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    runs = {}
    with tempfile.TemporaryDirectory() as storage:  # one dataset, prepared once
        for scheduler in ("fifo", "asha"):
            runs[scheduler] = run(scheduler, args, storage)
    fifo, asha = runs["fifo"], runs["asha"]
    sampled = [[params for params, *_ in run["trials_run"]] for run in (fifo, asha)]
    results = {
        "machine": f"{os.cpu_count()} CPUs",
        "counts": "trial-steps: optimizer steps summed over trials, up to each trial's last "
        "report; best: the lowest validation loss of any finished trial",
        "space": SPACE,
        "trials": args.trials,
        "steps_per_trial": args.steps,
        "eval_every": args.eval_every,
        "seed": args.seed,
        "same_samples": sampled[0] == sampled[1],
        "runs": runs,
        "trial_steps_ratio_asha_vs_fifo": round(asha["trial_steps"] / fifo["trial_steps"], 3),
        "best_eval_loss_gap_asha_vs_fifo_pct": round(
            100 * (asha["best_eval_loss"] - fifo["best_eval_loss"]) / fifo["best_eval_loss"], 3
        ),
        "seconds_ratio_asha_vs_fifo": round(asha["seconds"] / fifo["seconds"], 3),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
