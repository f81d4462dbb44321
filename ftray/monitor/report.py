"""The monitoring report: the latest run's models (samples, reference) and checks, and every
check's value over time per model with its threshold, from all runs in `monitor/checks/` (md
+ self-contained html). Runs from before per-model checks show as the model `all (pooled)`."""

from __future__ import annotations

from ftray.evaluate import render
from ftray.evaluate.render import Heading, figure, png
from ftray.store import Store

POOLED = "all (pooled)"  # checks of runs from before monitoring went per model


def write_report(store: Store) -> None:
    """Write the monitoring report from the latest checks run."""
    runs = store.read_events("monitor", "checks")
    latest = runs[-1]
    models = [
        [
            m["model"],
            m["role"],
            m["samples"],
            m["split_samples"],
            "yes" if m["enough_samples"] else "no: too few samples",
            m["reference"],
        ]
        for m in latest.get("models", [])
    ]
    head = ["model", "check", "value", "threshold", "samples", "alert", "detail"]
    rows = [
        [
            k.get("model", POOLED),
            k["check"],
            f"{k['value']:.4f}",
            f"{'≤' if k['direction'] == 'max' else '≥'} {k['threshold']}",
            k["n"],
            "ALERT" if k["alert"] else "ok",
            k["detail"],
        ]
        for k in latest["checks"]
    ]
    plots = {
        name: _plot(name, runs)
        for name in dict.fromkeys(k["check"] for run in runs for k in run["checks"])
    }
    intro = (
        f"Latest run {latest['time']}: {latest['samples']} sampled requests in the last "
        f"{latest['window_hours']:g} h, each model checked against its own reference; "
        f"{len(runs)} runs."
    )
    if latest.get("unreadable_sample_files"):
        intro += (
            f" {latest['unreadable_sample_files']} unreadable sample file(s) were skipped "
            "(the monitor's log names them)."
        )
    model_head = ["model", "role", "samples", "chosen by a split", "may alert", "reference"]
    blocks = [intro, Heading("Models"), (model_head, models), Heading("Latest checks")]
    blocks += [(head, rows), Heading("Over time"), plots]
    render.write_report(store, "Monitoring", blocks, "monitor")


def _plot(name: str, runs: list[dict]) -> bytes:
    """Check `name` over the runs, one line per model, alerts in red, the latest threshold."""
    plot, ax = figure(6, 3)
    lines: dict[str, list[tuple[int, dict]]] = {}
    for i, run in enumerate(runs):
        for k in run["checks"]:
            if k["check"] == name:
                lines.setdefault(k.get("model", POOLED), []).append((i, k))
    for model, points in lines.items():
        ax.plot(*zip(*((i, k["value"]) for i, k in points), strict=True), marker="o", label=model)
        alerts = [(i, k["value"]) for i, k in points if k["alert"]]
        if alerts:
            ax.scatter(*zip(*alerts, strict=True), color="#b3261e", zorder=3)
    last = max((points[-1] for points in lines.values()), key=lambda point: point[0])
    threshold = last[1]["threshold"]
    ax.axhline(threshold, color="#b3261e", linestyle="--", label="threshold (alerts in red)")
    shown = sorted({i for points in lines.values() for i, _ in points})
    ax.set_xticks(
        shown,
        [runs[i]["time"][5:16].replace("T", " ") for i in shown],
        rotation=30,
        ha="right",
        fontsize=7,
    )
    ax.set_title(name)
    ax.legend(fontsize=7)
    return png(plot)
