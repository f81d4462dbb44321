"""The monitor stage: quality checks on the Serve app's sampled traffic, per served model,
alerts, a report.

Contract. In: `monitor/samples/` of the last window, feedback, the registry, and each
served model's own reference (`ftray.monitor.reference`). Out: a `MonitorRef` to
`monitor/checks/<sequence>.json`: per model its sample count and reference (`models`), and
the checks, each naming its `model` (the alerts among them). Side effects: `latest.json`, one
file per alert and a webhook post, the failing examples flagged as feedback for review,
`metrics.prom` and the monitoring report, all under `monitor/`.

Samples are grouped by the model that answered them (a `production` request's resolved arm);
each group is checked against that model's reference, so tenants on one base model, or a
canary and the production model, never mix. A model with fewer than `monitor.min_samples`
samples in the window is reported with its values, never alerted on.

`ftray monitor JOB.yaml` is meant to run on a schedule, as a Ray job, over the samples of
the last `monitor.window_hours`; each alert is `alerts/<time>-<model>-<check>.json`, with
example requests.
"""

from __future__ import annotations

import logging
import os
import re
import time

import numpy as np

from ftray.artifacts import MonitorRef
from ftray.monitor import checks as c
from ftray.monitor.feedback import all_feedback, store_feedback
from ftray.monitor.reference import UNRECORDED, references
from ftray.monitor.samples import load_samples
from ftray.progress import Progress
from ftray.serve.openai_format import BASE_MODEL_NAME
from ftray.spec import JobSpec
from ftray.store import Store, event_id, utc_stamp

log = logging.getLogger(__name__)


def monitor(spec: JobSpec, store: Store, progress: Progress) -> MonitorRef:
    """Run every check that applies to each served model, then alert, record and report."""
    from ftray.registry import active_split, history, list_models, production_in

    settings = spec.monitor
    started = time.time()
    since = started - settings.window_hours * 3600
    samples, unreadable = load_samples(store, since)
    events = history(store)
    production, split = production_in(events), active_split(events)
    stages = {card["model_id"]: card["stage"] for card in list_models(store)}
    corrections = _corrections(store, samples, since)
    models = _served(samples, corrections, production, split)
    refs = references(store, models, production)
    progress.note(
        f"{len(samples)} sampled requests in the last {settings.window_hours:g} h, from "
        f"{len(models)} model(s)"
    )
    for path, reason in unreadable:
        log.warning("skipped unreadable sample file %s: %s", path, reason)
    if unreadable:
        progress.note(
            f"skipped {len(unreadable)} unreadable sample file(s), e.g. {unreadable[0][0]} "
            f"({unreadable[0][1]}); the log lists them all"
        )
    vectors = _embeddings(spec, samples, refs)
    found, served = [], []
    for model in models:
        rows = samples[samples["model"] == model].reset_index(drop=True)
        enough = len(rows) >= settings.min_samples
        served.append(
            {
                "model": model,
                "role": stages.get(model) or _unregistered(model),
                "samples": len(rows),
                "split_samples": int(rows["split"].sum()),
                "enough_samples": enough,
                "reference": refs[model]["label"],
            }
        )
        progress.note(
            f"{model} ({served[-1]['role']}): {len(rows)} samples"
            + ("" if enough else f", too few to alert ({settings.min_samples} needed)")
            + f"; reference: {refs[model]['label']}"
        )
        checks = _checks(spec, rows, refs[model], vectors.get(model), corrections.get(model, []))
        for check in checks:
            mark = "ALERT" if check["alert"] else "ok"
            progress.note(
                f"  {mark:<5} {check['check']}: {check['value']:.4f} "
                f"({'≤' if check['direction'] == 'max' else '≥'} {check['threshold']}) "
                f"{check['detail']}"
            )
        found += [{"model": model, **check} for check in checks]
    alerts = [check for check in found if check["alert"]]
    stamp = utc_stamp(started)
    run = {
        "time": stamp,
        "window_hours": settings.window_hours,
        "samples": len(samples),
        "unreadable_sample_files": len(unreadable),
        "models": served,
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
    _judge_split(spec, store, progress)
    sequence = name.removesuffix(".json")
    return MonitorRef(sequence, store.uri("monitor", "checks", name), run, False)


def _judge_split(spec: JobSpec, store: Store, progress: Progress) -> None:
    """Judge the active split now that this run's alerts are in; an automatic canary is
    promoted or rolled back (`ftray.rollout`)."""
    from ftray.rollout import watch

    split, verdict, decided = watch(store, spec.serve.rollout.model_dump())
    if split is None or verdict is None:
        return
    done = f"; {decided['action']} done" if decided else ""
    progress.note(
        f"{split['action']} of {split['model_id']}: {verdict.decision} "
        f"({'; '.join(verdict.reasons)}){done}"
    )


def _served(samples, corrections: dict, production: str | None, split: dict | None) -> list:
    """The models to report: the production model and a split's arms (even without samples:
    no traffic is news too), then every other model that answered, or was corrected, in the
    window."""
    expected = [production, *((split["model_id"], split["control"]) if split else ())]
    seen = sorted(set(samples["model"]) | set(corrections))
    return list(dict.fromkeys(m for m in [*expected, *seen] if m is not None))


def _unregistered(model: str) -> str:
    return model if model in (BASE_MODEL_NAME, UNRECORDED) else "not in the registry"


def _corrections(store: Store, samples, since: float) -> dict[str, list[dict]]:
    """The window's feedback with a correction, by the model that gave the corrected answer:
    the sample's `model` for a sampled request, else the feedback's own (`production`, an
    alias, or none: UNRECORDED)."""
    answered = dict(zip(samples["request_id"], samples["model"], strict=True))
    start = utc_stamp(since)
    found: dict[str, list[dict]] = {}
    for row in all_feedback(store):
        if row["time"] < start or not row.get("correction"):
            continue
        model = answered.get(row.get("request_id")) or row.get("model")
        model = UNRECORDED if model in (None, "production") else str(model)
        found.setdefault(model, []).append(row)
    return found


def _embeddings(spec: JobSpec, samples, refs: dict) -> dict[str, tuple]:
    """{model: (its reference's prompt vectors, its samples' prompt vectors)} for each model
    with samples and reference prompts, from one embedding pass (one Ray Data actor pool)."""
    wanted = [m for m, ref in refs.items() if ref["prompts"] and (samples["model"] == m).any()]
    if not wanted:
        return {}
    from ftray.monitor.embed import embed

    texts: list[str] = []
    spans: dict[tuple, tuple[int, int]] = {}
    for model in wanted:
        dataset = ("dataset", refs[model]["dataset_id"])
        if dataset not in spans:  # models trained on one dataset share its vectors
            spans[dataset] = (len(texts), len(texts) + len(refs[model]["prompts"]))
            texts += refs[model]["prompts"]
        prompts = [str(p) for p in samples.loc[samples["model"] == model, "prompt"]]
        spans[("model", model)] = (len(texts), len(texts) + len(prompts))
        texts += prompts
    vectors = embed(texts, num_gpus=spec.monitor.embedding_gpus)
    return {
        model: (
            vectors[slice(*spans[("dataset", refs[model]["dataset_id"])])],
            vectors[slice(*spans[("model", model)])],
        )
        for model in wanted
    }


def _checks(spec: JobSpec, samples, reference: dict, vectors, corrections: list) -> list[dict]:
    """One model's checks: `samples` are its own, `vectors` (reference, samples) its prompt
    embeddings or None, `corrections` the feedback correcting its answers."""
    settings, data = spec.monitor, spec.data
    n, minimum = len(samples), settings.min_samples
    outputs = [str(o or "") for o in samples["output"]]
    found = []

    def add(check: str, direction: str, value, detail: str, examples=None, count=n, least=minimum):
        # each check's limit is the monitor setting `max_<check>` or `min_<check>`
        threshold = getattr(settings, f"{direction}_{check}")
        found.append(c.result(check, value, threshold, direction, count, least, detail, examples))

    if vectors is not None:
        from ftray.monitor.embed import input_drift

        value, similarity = input_drift(*vectors)
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
    value, count = c.correction_agreement(corrections)
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
        f"on model {alert['model']} over {alert['n']} samples: {alert['detail']}"
    )
    record = {"time": stamp, "project": spec.project, **alert, "webhook": "not configured"}
    url = os.environ.get(spec.monitor.webhook_url_env or "", "")
    if url:
        try:
            httpx.post(url, json={"text": text, "ftray": record}, timeout=10).raise_for_status()
            record["webhook"] = "sent"
        except httpx.HTTPError as error:
            record["webhook"] = f"failed: {error}"
    # a sample file's model name is data: only its safe characters go into a file name
    model = re.sub(r"[^A-Za-z0-9_-]", "_", str(alert["model"]))[:80]
    store.write_json(record, "monitor", "alerts", f"{event_id()}-{model}-{alert['check']}.json")
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
        labels = {"project": spec.project, "model": check["model"], "check": check["check"]}
        tags = ",".join(f'{key}="{_label(value)}"' for key, value in labels.items())
        lines.append(f"ftray_monitor_value{{{tags}}} {check['value']}")
        lines.append(f"ftray_monitor_alert{{{tags}}} {int(check['alert'])}")
    store.write_text("\n".join(lines) + "\n", "monitor", "metrics.prom")


def _label(value) -> str:
    """A Prometheus label value, escaped as its text format requires."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
