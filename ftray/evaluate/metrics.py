"""Task metrics over (output, reference) pairs."""

from __future__ import annotations


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive form used by exact match."""
    return " ".join(str(text).strip().lower().split())


def exact_match(outputs: list[str], references: list[str]) -> list[bool]:
    """Per example: the output equals the reference after `normalize`."""
    return [normalize(o) == normalize(r) for o, r in zip(outputs, references, strict=True)]
