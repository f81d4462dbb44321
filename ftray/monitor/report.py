"""The monitoring report: the latest checks, and every check's value over time with its
threshold, from all runs in `monitor/checks/` (md + self-contained html)."""

from __future__ import annotations

from ftray.evaluate import render
from ftray.evaluate.render import Heading, figure, png
from ftray.store import Store


def write_report(store: Store) -> None:
    """Write the monitoring report from the latest checks run."""
    runs = store.read_events("monitor", "checks")
    latest = runs[-1]
    head = ["check", "value", "threshold", "samples", "alert", "detail"]
    rows = [
        [
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
        f"{latest['window_hours']:g} h, against {latest['reference']}; {len(runs)} runs."
    )
    if latest.get("unreadable_sample_files"):
        intro += (
            f" {latest['unreadable_sample_files']} unreadable sample file(s) were skipped "
            "(the monitor's log names them)."
        )
    blocks = [intro, Heading("Latest checks"), (head, rows), Heading("Over time"), plots]
    render.write_report(store, "Monitoring", blocks, "monitor")


def _plot(name: str, runs: list[dict]) -> bytes:
    points = [(run["time"], k) for run in runs for k in run["checks"] if k["check"] == name]
    plot, ax = figure(6, 3)
    x = range(len(points))
    ax.plot(x, [k["value"] for _, k in points], marker="o", color="#2f6db5", label=name)
    ax.axhline(points[-1][1]["threshold"], color="#b3261e", linestyle="--", label="threshold")
    alerts = [(i, k["value"]) for i, (_, k) in enumerate(points) if k["alert"]]
    if alerts:
        ax.scatter(*zip(*alerts, strict=True), color="#b3261e", zorder=3, label="alert")
    ax.set_xticks(
        list(x), [t[5:16].replace("T", " ") for t, _ in points], rotation=30, ha="right", fontsize=7
    )
    ax.set_title(name)
    ax.legend(fontsize=7)
    return png(plot)
