"""Retrieval-augmented answers: did retrieval find the gold document, does the answer stay
within what it was shown, and do its citations point at chunks it was given.

Plain functions, no Ray, no models. Groundedness is a token-overlap heuristic, not an NLI
model: ftray runs offline and ships no entailment model, and overlap is cheap, transparent
and deterministic. It misses paraphrase (an answer in other words scores low) and cannot see
negation or a wrong number that happens to appear elsewhere in the chunks.
"""

from __future__ import annotations

import json
import re

import numpy as np

from ftray.data.retrieval import is_gold
from ftray.evaluate.metrics import exact_match
from ftray.evaluate.score import Task, score_one
from ftray.rag.context import Chunk, with_context

# Function words carry no claim an answer could be grounded in (a short fixed list, so the
# score never depends on an installed corpus).
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "he",
        "her",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "may",
        "me",
        "might",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "she",
        "should",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "to",
        "too",
        "us",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yes",
    ]
)
# A citation is a chunk id in brackets, as `format_context` labels chunks (16 hex digits).
CITATION = re.compile(r"\[([0-9a-f]{16})\]")
# Words and numbers; a decimal or thousands separator stays inside its number ("19.9").
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+")


def content_tokens(text: str) -> list[str]:
    """Lowercase words and numbers of `text`, without citations and stopwords."""
    return [t for t in _TOKEN.findall(CITATION.sub(" ", text).lower()) if t not in STOPWORDS]


def gold_retrieved(chunks: list[Chunk], gold: str) -> bool:
    """Whether a chunk of document `gold` is among `chunks`."""
    return any(is_gold(c, gold) for c in chunks)


def retrieval_recall_at_k(retrieved: list[list[Chunk]], golds: list[str | None]) -> float | None:
    """Share of examples with a known gold document whose retrieved chunks include it; None
    when no example knows its gold document."""
    hits = [
        gold_retrieved(chunks, gold) for chunks, gold in zip(retrieved, golds, strict=True) if gold
    ]
    return sum(hits) / len(hits) if hits else None


def groundedness(answer: str, chunks: list[Chunk]) -> float | None:
    """Share of the answer's content tokens (`content_tokens`) that occur in the chunks'
    text; None when the answer has none (nothing to judge)."""
    tokens = content_tokens(answer)
    if not tokens:
        return None
    shown = set(content_tokens(" ".join(c.text for c in chunks)))
    return sum(t in shown for t in tokens) / len(tokens)


def citation_accuracy(answer: str, chunks: list[Chunk]) -> float | None:
    """Share of the distinct chunk ids the answer cites (`[id]`) that were among `chunks`;
    None when it cites none."""
    cited = set(CITATION.findall(answer))
    if not cited:
        return None
    given = {c.id for c in chunks}
    return len(cited & given) / len(cited)


def chunks(context: str) -> list[Chunk]:
    """The chunks of a dataset row's `context` column (JSON)."""
    return [Chunk(**chunk) for chunk in json.loads(context)]


def asked_with_context(messages: str, context: str) -> str:
    """A row's `messages` (JSON) with its `context` column's chunks put in by `with_context`:
    what evaluation, assess and the sweep's probe ask a retrieval-trained model."""
    return json.dumps(with_context(json.loads(messages), chunks(context)))


def retrieval_arms(with_context, without_context, task: Task, prepared: dict) -> dict:
    """The evaluation's retrieval section: the task metric, groundedness, citation accuracy,
    prompt tokens and latency per request of each arm asked with retrieved context
    (`with_context`: candidate and incumbent), and of the candidate asked without
    (`without_context`); `prepared` is the dataset manifest's retrieval section."""
    given = [chunks(c) for c in with_context["context"]]
    arms = {}
    for name, table, arm in (
        ("candidate+retrieval", with_context, "candidate"),
        ("incumbent+retrieval", with_context, "incumbent"),
        ("candidate", without_context, "candidate"),
    ):
        row = _scores(table, arm, task)
        if name.endswith("+retrieval"):
            outputs = table[f"{arm}_output"]
            row["groundedness"] = _mean(map(groundedness, outputs, given))
            row["citation_accuracy"] = _mean(map(citation_accuracy, outputs, given))
        arms[name] = row
    return {
        "index_id": prepared["index_id"],
        "k": prepared["k"],
        "gold_recall_at_k": prepared["eval"]["gold_recall_at_k"],
        "metric": task.primary,
        "arms": arms,
    }


def format_compliance(answer: str, reference: str) -> bool:
    """Whether an answer keeps to the reference's form: one line of at most twice the
    reference's words plus one (the value, perhaps with its unit or a short lead-in, not a
    paragraph around it or a run-on that never stops)."""
    return "\n" not in answer.strip() and len(answer.split()) <= 2 * len(reference.split()) + 1


def _scores(table, arm: str, task: Task) -> dict:
    """One arm's primary metric (as `ftray eval` scores it), exact match, format compliance,
    prompt tokens and latency."""
    alone = table.copy()
    for column in ("output", "confidence", "bertscore"):
        if f"{arm}_{column}" in table:
            alone[f"base_{column}"] = table[f"{arm}_{column}"]
    score = score_one(alone, task, [task.primary])[task.primary]
    outputs, references = list(table[f"{arm}_output"]), list(table["completion"])
    return {
        "score": None if score is None else round(float(score), 4),
        "exact_match": round(float(np.mean(exact_match(outputs, references))), 4),
        "format_compliance": round(
            float(np.mean(list(map(format_compliance, outputs, references)))), 4
        ),
        "prompt_tokens": round(float(np.mean(table[f"{arm}_prompt_tokens"])), 1),
        "latency_s": round(float(np.mean(table[f"{arm}_latency_s"])), 4),
    }


def _mean(values) -> float | None:
    """The mean of the values that are not None (None when all are)."""
    kept = [v for v in values if v is not None]
    return round(sum(kept) / len(kept), 4) if kept else None
