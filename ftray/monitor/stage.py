"""The monitor stage: quality checks on the Serve app's sampled traffic, alerts, a report.

Contract. In: `monitor/samples/` of the last window, feedback, and the production model's
dataset and evaluation outputs (else the newest dataset) as the reference. Out: a
`MonitorRef` to `monitor/checks/<sequence>.json` (the checks, the alerts among them). Side
effects: `latest.json`, one file per alert and a webhook post, the failing examples flagged
as feedback for review, `metrics.prom` and the monitoring report, all under `monitor/`.

`ftray monitor JOB.yaml` is meant to run on a schedule, as a Ray job, over the samples of
the last `monitor.window_hours`; each alert is `alerts/<time>-<check>.json`, with example
requests.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from ftray.artifacts import MonitorRef
from ftray.monitor import checks as c
from ftray.monitor.feedback import all_feedback, store_feedback
from ftray.progress import Progress
from ftray.spec import JobSpec
from ftray.store import Store, event_id, utc_stamp

log = logging.getLogger(__name__)
REFERENCE_ROWS = 2000


def monitor(spec: JobSpec, store: Store, progress: Progress) -> MonitorRef:
    """Run every check that applies, then alert, record and report."""
    settings = spec.monitor
    started = time.time()
    since = started - settings.window_hours * 3600
    samples, unreadable = load_samples(store, since)
    reference = _reference(spec, store)
    progress.note(
        f"{len(samples)} sampled requests in the last {settings.window_hours:g} h; reference: "
        f"{reference['label']}"
    )
    for path, reason in unreadable:
        log.warning("skipped unreadable sample file %s: %s", path, reason)
    if unreadable:
        progress.note(
            f"skipped {len(unreadable)} unreadable sample file(s), e.g. {unreadable[0][0]} "
            f"({unreadable[0][1]}); the log lists them all"
        )
    found = _checks(spec, samples, reference, store, since)
    alerts = [check for check in found if check["alert"]]
    for check in found:
        mark = "ALERT" if check["alert"] else "ok"
        progress.note(
            f"  {mark:<5} {check['check']}: {check['value']:.4f} "
            f"({'≤' if check['direction'] == 'max' else '≥'} {check['threshold']}) "
            f"{check['detail']}"
        )
    stamp = utc_stamp(started)
    run = {
        "time": stamp,
        "window_hours": settings.window_hours,
        "samples": len(samples),
        "unreadable_sample_files": len(unreadable),
        "reference": reference["label"],
        "checks": found,
    }
    name = store.write_event(run, "monitor", "checks")
    store.write_json(run, "monitor", "latest.json")
    for alert in alerts:
        _alert(spec, store, alert, stamp, progress)
    _write_prometheus(spec, store, found)
    from ftray.monitor.report import write_report

    write_report(store)
    progress.artifact("monitoring report", store.uri("monitor", "report.html"))
    sequence = name.removesuffix(".json")
    return MonitorRef(sequence, store.uri("monitor", "checks", name), run, False)


def load_samples(store: Store, since: float) -> tuple:
    """Sampled requests logged at or after `since` (epoch seconds), as a DataFrame, and the
    sample files that could not be read, as (path, reason): a truncated or foreign file is
    skipped, never the end of the run."""
    import pandas as pd
    import pyarrow.parquet as pq

    from ftray.monitor.sampler import COLUMNS

    folder = store.path("monitor", "samples")
    first_day = time.strftime("%Y-%m-%d", time.gmtime(since))
    start = utc_stamp(since)
    frames, unreadable = [], []
    if store.fs.exists(folder):
        for path in sorted(store.fs.find(folder)):
            day = path.rsplit("date=", 1)[-1].split("/", 1)[0]
            if not (path.endswith(".parquet") and day >= first_day):
                continue
            try:
                with store.fs.open(path, "rb") as handle:
                    frame = pq.read_table(handle).to_pandas()
            except (OSError, ValueError) as err:  # pyarrow's errors derive from these
                unreadable.append((path, str(err).splitlines()[0][:200]))
                continue
            missing = [column for column in COLUMNS if column not in frame.columns]
            if missing:
                unreadable.append((path, f"no column(s) {', '.join(missing)}"))
                continue
            frames.append(frame[list(COLUMNS)])
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    return table[table["time"] >= start].reset_index(drop=True), unreadable


def _reference(spec: JobSpec, store: Store) -> dict:
    """The production model's training prompts and labels and its held-out answer lengths;
    without a production model, the job's newest dataset (and no lengths)."""
    import pyarrow.parquet as pq

    from ftray.registry import get_model, production

    model_id = production(store)
    if model_id is not None:
        card = get_model(store, model_id)
        dataset_id, label = card["dataset_id"], f"production model {model_id}"
        outputs = store.uri("evals", card["eval_id"], "outputs")
        lengths = pq.read_table(outputs, columns=["candidate_tokens"]).column(0).to_pylist()
    else:
        datasets = store.manifests("datasets")
        if not datasets:
            return {"label": "none (no dataset yet)", "prompts": [], "labels": [], "lengths": []}
        dataset_id, label, lengths = datasets[-1]["dataset_id"], "newest dataset", []
    train = (
        pq.read_table(store.uri("datasets", dataset_id, "train"), columns=["prompt", "completion"])
        .to_pandas()
        .head(REFERENCE_ROWS)
    )
    return {
        "label": f"{label} (dataset {dataset_id})",
        "prompts": list(train["prompt"]),
        "labels": list(train["completion"]),
        "lengths": lengths,
    }


def _checks(spec: JobSpec, samples, reference: dict, store: Store, since: float) -> list[dict]:
    settings, data = spec.monitor, spec.data
    n, minimum = len(samples), settings.min_samples
    outputs = [str(o or "") for o in samples["output"]]
    found = []

    def add(check: str, direction: str, value, detail: str, examples=None, count=n, least=minimum):
        # each check's limit is the monitor setting `max_<check>` or `min_<check>`
        threshold = getattr(settings, f"{direction}_{check}")
        found.append(c.result(check, value, threshold, direction, count, least, detail, examples))

    if n and reference["prompts"]:
        from ftray.monitor.embed import embed, input_drift

        texts = reference["prompts"] + [str(p) for p in samples["prompt"]]
        vectors = embed(texts, num_gpus=settings.embedding_gpus)
        value, similarity = input_drift(
            vectors[: len(reference["prompts"])], vectors[len(reference["prompts"]) :]
        )
        odd = np.argsort(similarity)[: settings.alert_examples]
        detail = "PSI of prompts' similarity to the training centroid"
        add("input_drift_psi", "max", value, detail, _examples(samples, odd))
    if data.labels and n and reference["labels"]:
        value, shares = c.label_shift(outputs, reference["labels"], data.labels)
        add("label_shift_psi", "max", value, f"answer label shares {shares}")
    if n and reference["lengths"]:
        value = c.psi(reference["lengths"], list(samples["completion_tokens"]))
        add("length_drift_psi", "max", value, "PSI of answer tokens vs held-out answers")
    if n:
        bad = [i for i, o in enumerate(outputs) if c.is_empty_or_refusal(o)]
        flagged = _examples(samples, bad[: settings.alert_examples], flag=True)
        detail = f"{len(bad)} empty or refusing answers"
        add("empty_or_refusal_rate", "max", len(bad) / n, detail, flagged)
    if data.output_schema is not None and n:
        bad = c.schema_failures(outputs, data.output_schema)
        flagged = _examples(samples, bad[: settings.alert_examples], flag=True)
        detail = f"{len(bad)} answers break data.output_schema"
        add("schema_compliance", "min", 1 - len(bad) / n, detail, flagged)
    start = utc_stamp(since)
    recent = [f for f in all_feedback(store) if f["time"] >= start]
    value, count = c.correction_agreement(recent)
    if count:
        detail = f"answers equal to {count} users' corrections"
        add("correction_agreement", "min", value, detail, count=count, least=min(minimum, 10))
    return found


def _examples(samples, indexes, flag: bool = False) -> list[dict]:
    rows = [samples.iloc[int(i)] for i in indexes]
    fields = ("request_id", "model", "prompt", "output")
    return [{**{name: row[name] for name in fields}, "flag": flag} for row in rows]


def _alert(spec: JobSpec, store: Store, alert: dict, stamp: str, progress: Progress) -> None:
    """Store the alert, log it, post it to the webhook, and flag its failing examples."""
    import httpx

    text = (
        f"ftray alert [{spec.project}] {alert['check']} = {alert['value']:.4f} "
        f"({'above' if alert['direction'] == 'max' else 'below'} {alert['threshold']}) "
        f"over {alert['n']} samples: {alert['detail']}"
    )
    record = {"time": stamp, "project": spec.project, **alert, "webhook": "not configured"}
    url = os.environ.get(spec.monitor.webhook_url_env or "", "")
    if url:
        try:
            httpx.post(url, json={"text": text, "ftray": record}, timeout=10).raise_for_status()
            record["webhook"] = "sent"
        except httpx.HTTPError as error:
            record["webhook"] = f"failed: {error}"
    store.write_json(record, "monitor", "alerts", f"{event_id()}-{alert['check']}.json")
    log.warning(text)
    progress.note(f"alert: {text} (webhook: {record['webhook']})")
    for example in alert["examples"]:
        if example["flag"]:  # a failing answer: a person should look at it
            feedback = {**example, "rating": None, "correction": None, "comment": alert["check"]}
            store_feedback(store, feedback)


def _write_prometheus(spec: JobSpec, store: Store, found: list[dict]) -> None:
    """The checks in Prometheus' text format, for a textfile collector or a push."""
    lines = [
        "# HELP ftray_monitor_value Latest value of each ftray monitoring check.",
        "# TYPE ftray_monitor_value gauge",
        "# HELP ftray_monitor_alert 1 when the check's last run alerted.",
        "# TYPE ftray_monitor_alert gauge",
    ]
    for check in found:
        tags = f'project="{spec.project}",check="{check["check"]}"'
        lines.append(f"ftray_monitor_value{{{tags}}} {check['value']}")
        lines.append(f"ftray_monitor_alert{{{tags}}} {int(check['alert'])}")
    store.write_text("\n".join(lines) + "\n", "monitor", "metrics.prom")
