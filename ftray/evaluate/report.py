"""`report.md` and a self-contained `report.html` for one evaluation, with plots.

The HTML carries its plots as inline PNGs (no scripts, no network), so it can be mailed or
attached to a review; the Markdown links the same PNGs under `plots/`.
"""

from __future__ import annotations

import json

import numpy as np

from ftray.evaluate import render
from ftray.evaluate.render import Code, Heading, figure, gate_table, png
from ftray.evaluate.score import ARMS, Task, per_example_primary
from ftray.store import Store

HUMAN = (
    "`ftray review JOB.yaml` puts these pairs before people, blind; `ftray review results` "
    "writes their win rate, interval and agreement to reviews/report.html beside this report."
)
COLORS = {"candidate": "#2f6db5", "incumbent": "#b0b0b0", "reference": "#e3a33b"}


def write_report(
    manifest: dict,
    table,
    task: Task,
    store: Store,
    eval_id: str,
    *,
    worst: int,
    human: dict | None = None,
):
    """Render the plots and both reports into `evals/<eval_id>/`; `human` (a summary from
    `ftray.review.stats.summarize`) adds the human review's results."""
    blocks = _blocks(manifest, _plots(manifest, table, task), _worst(table, task, worst), human)
    render.write_report(store, f"Evaluation {manifest['eval_id']}", blocks, "evals", eval_id)


# --- plots -----------------------------------------------------------------------------------


def _plots(manifest: dict, table, task: Task) -> dict[str, bytes]:
    plots = {"metrics": _metric_bars(manifest["comparison"])}
    details = manifest["details"]
    if task.labels:
        plots["per_class"] = _per_class(details["candidate"]["per_class"], details)
        plots["confusion"] = _confusion(details["candidate"]["confusion"])
        plots["pr_curve"] = _pr_curves(details)
    plots["lengths"] = _lengths(details, table)
    return plots


def _metric_bars(comparison: dict) -> bytes:
    names = [  # a rate one arm cannot measure has no bar
        name
        for name, row in comparison.items()
        if None not in (row["candidate_interval"], row["incumbent_interval"])
    ]
    plot, ax = figure(max(6, 0.9 * len(names) + 2))
    x = np.arange(len(names))
    for offset, arm in ((-0.2, "candidate"), (0.2, "incumbent")):
        values = np.array([comparison[n][arm] for n in names])
        low = values - np.array([comparison[n][f"{arm}_interval"][0] for n in names])
        high = np.array([comparison[n][f"{arm}_interval"][1] for n in names]) - values
        error = np.clip([low, high], 0, None)
        ax.bar(x + offset, values, 0.4, color=COLORS[arm], label=arm, yerr=error, capsize=3)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("value (bootstrap interval)")
    ax.set_title("Candidate vs incumbent per metric")
    ax.legend()
    return png(plot)


def _per_class(per_class: dict, details: dict) -> bytes:
    labels = list(per_class)
    plot, ax = figure(max(6, 0.7 * len(labels) + 2))
    x = np.arange(len(labels))
    for offset, arm, key, hatch in (
        (-0.3, "candidate", "precision", ""),
        (-0.1, "candidate", "recall", "//"),
        (0.1, "incumbent", "precision", ""),
        (0.3, "incumbent", "recall", "//"),
    ):
        values = [details[arm]["per_class"][label][key] for label in labels]
        ax.bar(x + offset, values, 0.2, color=COLORS[arm], hatch=hatch, label=f"{arm} {key}")
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title("Precision and recall per class (at the confidence threshold)")
    ax.legend(fontsize=7, ncols=2)
    return png(plot)


def _confusion(confusion: dict) -> bytes:
    matrix = np.array(confusion["matrix"])
    size = 0.45 * len(confusion["columns"]) + 2.5
    plot, ax = figure(size + 1, size)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(confusion["columns"])), confusion["columns"], rotation=45, ha="right")
    ax.set_yticks(range(len(confusion["labels"])), confusion["labels"])
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            color = "white" if count > matrix.max() / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("candidate's answer")
    ax.set_ylabel("reference")
    ax.set_title("Confusion matrix (candidate)")
    return png(plot)


def _pr_curves(details: dict) -> bytes:
    plot, ax = figure(5.5, 4)
    for arm in ARMS:
        points = details[arm]["pr_curve"]
        recall, precision = [p["recall"] for p in points], [p["precision"] for p in points]
        ax.plot(recall, precision, marker=".", color=COLORS[arm], label=arm)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall as the confidence threshold moves")
    ax.legend()
    return png(plot)


def _lengths(details: dict, table) -> bytes:
    plot, ax = figure(6, 3.4)
    series = {arm: details[arm]["output_tokens_all"] for arm in ARMS}
    series["reference"] = [len(str(text).split()) for text in table["completion"]]
    top = max(max(values, default=1) for values in series.values()) + 1
    bins = np.linspace(0, top, min(30, top) + 1)
    for name, values in series.items():
        ax.hist(values, bins=bins, alpha=0.6, color=COLORS[name], label=name)
    ax.set_xlabel("answer length (tokens; reference: words)")
    ax.set_ylabel("examples")
    ax.set_title("Answer lengths")
    ax.legend()
    return png(plot)


# --- text ------------------------------------------------------------------------------------


def _worst(table, task: Task, count: int) -> list[dict]:
    """Examples where the candidate trails the incumbent most, then its lowest scores."""
    if not count:
        return []
    cand = per_example_primary(table, task, "candidate")
    inc = per_example_primary(table, task, "incumbent")
    order = np.lexsort((cand, cand - inc))[:count]
    return [
        {
            "prompt": str(table["prompt"].iloc[i]),
            "reference": str(table["completion"].iloc[i]),
            "candidate": str(table["candidate_output"].iloc[i]),
            "incumbent": str(table["incumbent_output"].iloc[i]),
            "candidate_score": round(float(cand[i]), 3),
            "incumbent_score": round(float(inc[i]), 3),
        }
        for i in order
        if cand[i] < 1
    ]


def _blocks(manifest: dict, plots: dict, examples: list[dict], human: dict | None) -> list:
    """The report top to bottom, as `ftray.evaluate.render` blocks."""
    general = manifest["metrics"].get("general_ppl")
    fields = manifest["details"]["candidate"].get("per_field")
    m, mc, gate = manifest["metrics"], manifest["mcnemar"], manifest["gate"]
    verdict = "PASSED: promote" if gate["passed"] else "FAILED: keep the incumbent"
    if again := manifest.get("regated_at"):
        verdict += f" (gate re-applied {again}, no new answers)"
    blocks = [
        f"Candidate run {manifest['run_id']} vs incumbent {manifest['incumbent']['label']} on "
        f"{m['examples']} held-out examples of dataset {manifest['dataset_id']} (task: "
        f"{m['task']}, primary metric: {m['primary_metric']}).",
        Heading(f"Gate: {verdict}", "pass" if gate["passed"] else "fail"),
        gate_table(gate),
        Heading("Metrics"),
        _metrics(manifest["comparison"]),
        f"McNemar ({mc['method']}): candidate-only right {mc['b']}, incumbent-only right "
        f"{mc['c']}, p = {mc['p_value']:.3g}.",
    ]
    if general:
        blocks += [
            Heading("Forgetting"),
            FORGETTING,
            (
                ["model", "general_ppl", "ratio to the base model"],
                [
                    [name, f"{general[name]:.4g}", f"{general[name] / general['base']:.4f}"]
                    for name in ("base", "candidate", "incumbent")
                ],
            ),
        ]
    if retrieval := manifest.get("retrieval"):
        blocks += [Heading("Retrieval"), *_retrieval(retrieval)]
    if fields:
        incumbent = manifest["details"]["incumbent"]["per_field"]
        head = ["field", "support", "predicted", "precision", "recall", "F1"]
        head += ["F1 (normalised)", "incumbent F1"]
        rows = [
            [name, row["support"], row["predicted"]]
            + [f"{row[key]:.3f}" for key in ("precision", "recall", "f1", "f1_normalized")]
            + [f"{incumbent[name]['f1']:.3f}"]
            for name, row in fields.items()
        ]
        blocks += [Heading("Per field"), FIELDS, (head, rows)]
    slices = [
        [
            s["slice"],
            s["examples"],
            s["metric"],
            f"{s['candidate']:.3f}",
            f"{s['incumbent']:.3f}",
            f"{s['difference']:+.3f}",
        ]
        for s in manifest["slices"]
    ]
    worst = [[e["prompt"], e["reference"], e["candidate"], e["incumbent"]] for e in examples]
    return [
        *blocks,
        plots,
        Heading("Per slice"),
        (["slice", "examples", "metric", "candidate", "incumbent", "difference"], slices),
        Heading("Worst examples"),
        (["prompt", "reference", "candidate", "incumbent"], worst)
        if worst
        else "None: the candidate scores full marks everywhere.",
        Heading("Decoding"),
        Code(json.dumps(manifest["decoding"], indent=2, sort_keys=True)),
        Heading("Human review"),
        _human(human),
    ]


def _retrieval(retrieval: dict) -> list:
    """The arms asked with and without retrieved context, side by side."""
    keys = ("score", "exact_match", "format_compliance", "groundedness", "citation_accuracy")
    head = ["arm", retrieval["metric"], "exact match", "format compliance", "groundedness"]
    head += ["citation accuracy", "prompt tokens", "latency (ms)"]
    rows = [
        [name]
        + [_number(row.get(key)) for key in keys]
        + [f"{row['prompt_tokens']:.1f}", f"{row['latency_s'] * 1000:.3g}"]
        for name, row in retrieval["arms"].items()
    ]
    recall = retrieval["gold_recall_at_k"]
    return [
        f"The gate's comparison above asks both arms with the {retrieval['k']} chunks "
        f"retrieved per example from index {retrieval['index_id']} (gold recall@k "
        f"{_number(recall)}); 'candidate' is the tuned model asked without them.",
        (head, rows),
    ]


def _metrics(comparison: dict) -> tuple[list, list]:
    rows = []
    for name, row in comparison.items():
        interval = row["difference_interval"]
        rows.append(
            [
                name,
                _number(row["candidate"], row.get("candidate_n")),
                _number(row["incumbent"], row.get("incumbent_n")),
                _number(row["difference"], sign=True),
                "n/a" if interval is None else f"[{interval[0]:+.4f}, {interval[1]:+.4f}]",
                "n/a" if row["p_value"] is None else f"{row['p_value']:.3g}",
                row.get("denominator", "examples"),
            ]
        )
    head = ["metric", "candidate", "incumbent", "difference", "interval", "p (bootstrap)", "over"]
    return head, rows


def _number(value: float | None, n: int | None = None, sign: bool = False) -> str:
    """A metric's value for the tables: 'n/a' when there was nothing to measure, and the
    denominator of a rate over part of the answers."""
    text = "n/a" if value is None else f"{value:+.4f}" if sign else f"{value:.4f}"
    return text if n is None else f"{text} (n={n})"


FORGETTING = (
    "Forgetting probe: each model's perplexity on a general-text sample shipped with ftray "
    "(ftray/evaluate/general/general.txt, everyday English prose); lower is better. A "
    "candidate far above the base model has lost general ability while learning its task "
    "(gate: eval.gate.max_general_ppl_ratio)."
)

FIELDS = (
    "Per field (candidate; top-level fields of the reference and the answer): precision = "
    "exact matches / answers giving the field, recall = exact matches / references having "
    "it (an unparsable answer gives no field), F1 (normalised): strings compared "
    "case-folded with whitespace collapsed, numbers as numbers."
)


def rewrite_report(store: Store, eval_id: str, human: dict | None = None) -> bool:
    """Render an evaluation's reports again from its manifest (after a new gate, or with the
    human review's results: `human`, else the ratings as they stand); False for an
    evaluation written before manifests kept their task."""
    import pyarrow.parquet as pq

    manifest = store.manifest("evals", eval_id)
    if "task" not in manifest:
        return False
    # one file since before manifests kept their task (ftray.evaluate.stage writes it)
    with store.fs.open(store.path("evals", eval_id, "outputs", "part-0.parquet"), "rb") as handle:
        table = pq.read_table(handle).to_pandas()
    task = Task(**manifest["task"])
    worst = manifest["spec"].get("worst_examples", 10)
    if human is None:
        human = _ratings_summary(store, eval_id, manifest)
    write_report(manifest, table, task, store, eval_id, worst=worst, human=human)
    return True


def _ratings_summary(store: Store, eval_id: str, manifest: dict) -> dict | None:
    # imported here: the review package builds on this module
    from ftray.review.ratings import EvalPairs, RatingLog, latest
    from ftray.review.stats import summarize

    ratings = latest(RatingLog(store, EvalPairs(store, eval_id)).all())
    return summarize(ratings, manifest["spec"].get("confidence_level", 0.95)) if ratings else None


def _human(human: dict | None) -> str:
    if not human or human.get("win_rate") is None:
        return HUMAN
    low, high = human["win_rate_interval"]
    agreement = human.get("agreement") or {}
    kappa = agreement.get("kappa")
    return (
        f"Candidate win rate {human['win_rate']:.3f} [{low:.3f}, {high:.3f}] "
        f"({human['interval']}) over {human['win_rate_ratings']} ratings by "
        f"{human['reviewers']} reviewer(s); choices {human['counts']}; agreement "
        + (f"kappa {kappa:.3f}." if kappa is not None else "not measurable yet.")
        + " Details: reviews/report.html."
    )
