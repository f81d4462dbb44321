"""Training metrics: throughput, memory, MFU, and their W&B run (rank 0 only); and the
evaluation's metrics, report and gate verdict as a W&B run in the trained model's group."""

from __future__ import annotations

import os
import resource
import time

# Dense bf16 peak FLOP/s by GPU name, for the MFU estimate; others: set $FTRAY_PEAK_TFLOPS.
_PEAK_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "L4": 121}


def wandb_settings(spec, project: str, run_id: str, folder: str, group: str | None = None) -> dict:
    """Plain-data W&B settings for the rank-0 worker (`spec` is a WandbSpec)."""
    mode = os.environ.get("WANDB_MODE") or spec.mode
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return {
        "mode": mode,
        "project": spec.project or project,
        "entity": spec.entity,
        "group": spec.group or group,
        "tags": list(spec.tags),
        "id": run_id,
        "dir": folder,
    }


class Tracker:
    """A W&B run on rank 0; a no-op elsewhere or when disabled.

    The run id is ftray's run id and `resume="allow"`: a run restarted after a worker died,
    or resubmitted, continues the same W&B run.
    """

    def __init__(self, settings: dict | None, rank: int, config: dict):
        self.run = None
        if rank != 0 or not settings or settings["mode"] == "disabled":
            return
        os.makedirs(settings["dir"], exist_ok=True)
        self.run = _init(settings, config=config)

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self, summary: dict) -> None:
        if self.run is not None:
            self.run.summary.update(summary)
            self.run.finish()


def log_evaluation(settings: dict, manifest: dict, report_html: str | None) -> None:
    """One W&B run for an evaluation (`settings` from `wandb_settings`, id = the eval id):
    its summary holds every metric (`evaluation/<arm>/<metric>`), the forgetting probe
    (`evaluation/general_ppl/...`) and the verdict (`gate/passed`, `gate/verdict`,
    `gate/failed_rules`); tables hold the comparison and the gate's rules, and the HTML
    report is attached (`report`). Logged again, with the same id, when the gate changes."""
    if settings["mode"] == "disabled":
        return
    import wandb

    os.makedirs(settings["dir"], exist_ok=True)
    gate = manifest["gate"]
    verdict = "pending" if gate.get("pending") else "passed" if gate["passed"] else "failed"
    summary = {
        "eval_id": manifest["eval_id"],
        "run_id": manifest["run_id"],
        "incumbent": manifest["incumbent"]["label"],
        "gate/passed": gate["passed"],
        "gate/verdict": verdict,
        "gate/failed_rules": "; ".join(r["rule"] for r in gate["rules"] if not r["passed"]),
    }
    metrics = manifest["metrics"]
    for arm in ("candidate", "incumbent"):
        for name, value in metrics[arm].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                summary[f"evaluation/{arm}/{name}"] = value
    for name, value in (metrics.get("general_ppl") or {}).items():
        summary[f"evaluation/general_ppl/{name}"] = value
    rules = [[r["rule"], r["passed"], bool(r.get("skipped")), r["detail"]] for r in gate["rules"]]
    comparison = [
        [name, row["candidate"], row["incumbent"], row["difference"]]
        for name, row in manifest["comparison"].items()
    ]
    logged: dict[str, object] = {
        "gate_rules": wandb.Table(columns=["rule", "passed", "skipped", "detail"], data=rules),
        "comparison": wandb.Table(
            columns=["metric", "candidate", "incumbent", "difference"], data=comparison
        ),
    }
    if report_html is not None:
        logged["report"] = wandb.Html(report_html, inject=False)
    run = _init(
        settings,
        config={"eval": manifest["spec"], "task": manifest["metrics"]["task"]},
        job_type="eval",
    )
    run.log(logged)
    run.summary.update(summary)
    run.finish()


def log_leaderboard(settings: dict, manifest: dict) -> None:
    """The sweep's leaderboard as a W&B run in the sweep's group (id = the sweep id): a table
    of every trial (its parameters, the ranking metric, validation loss, status) and the
    winner in the summary."""
    if settings["mode"] == "disabled":
        return
    import wandb

    os.makedirs(settings["dir"], exist_ok=True)
    board = manifest["leaderboard"]
    names = sorted({name for row in board for name in row["params"]})
    columns = ["rank", "trial_id", manifest["metric"], "validation_loss", "status", *names]
    data = [
        [i, row["trial_id"], row["metric"], row["eval_loss"], row["status"]]
        + [row["params"].get(name) for name in names]
        for i, row in enumerate(board, 1)
    ]
    run = _init(settings, config={"sweep": manifest["sweep"]}, job_type="sweep")
    run.log({"leaderboard": wandb.Table(columns=columns, data=data)})
    winner = manifest["winner"]
    run.summary.update(
        {"winner/trial_id": winner["trial_id"], "winner/run_id": winner["run_id"]}
        | {f"winner/{manifest['metric']}": winner["metric"]}
    )
    run.finish()


class Meter:
    """Tokens, time and memory between two logging points."""

    def __init__(self, device, flops_per_token: float, world_size: int):
        self.device = device
        self.flops_per_token = flops_per_token
        self.world_size = world_size
        self.peak = peak_flops(device)
        self.reset()

    def reset(self) -> None:
        self.tokens = 0
        self.steps = 0
        self.started = time.perf_counter()

    def add_tokens(self, tokens: int) -> None:
        self.tokens += tokens

    def step(self) -> None:
        self.steps += 1

    def read(self, global_tokens: float) -> dict:
        """Rates since the last read; `global_tokens` summed over workers by the caller."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = global_tokens / elapsed
        out = {
            "tokens_per_s": round(rate, 1),
            "step_time_s": round(elapsed / max(self.steps, 1), 4),
            "peak_memory_mb": round(peak_memory_mb(self.device), 1),
        }
        if self.peak:
            out["mfu"] = round(rate * self.flops_per_token / (self.peak * self.world_size), 4)
        self.reset()
        return out


def peak_memory_mb(device) -> float:
    """Peak accelerator memory allocated (GPU) or peak resident memory of this process (CPU)."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_flops(device) -> float | None:
    """Dense bf16 peak FLOP/s of `device` ($FTRAY_PEAK_TFLOPS, else by GPU name); None on
    CPU and on GPUs not listed."""
    if os.environ.get("FTRAY_PEAK_TFLOPS"):
        return float(os.environ["FTRAY_PEAK_TFLOPS"]) * 1e12
    if not str(device).startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    for key, tflops in _PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def _init(settings: dict, **extra):
    """A W&B run from ftray's resolved settings (quiet, no system stats), resumable by id."""
    import wandb

    return wandb.init(
        project=settings["project"],
        entity=settings["entity"],
        group=settings["group"],
        tags=settings["tags"],
        id=settings["id"],
        name=settings["id"],
        resume="allow",
        dir=settings["dir"],
        mode=settings["mode"],
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        **extra,
    )
