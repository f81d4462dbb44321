"""Record-level data checks: PII, toxicity, the output contract, and text fingerprints.

Plain functions on plain values, no Ray: the prepare stage calls them inside Ray Data actors,
and tests call them directly. Each check answers with a reason a person can act on.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np

# --- PII -------------------------------------------------------------------------------------

_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
# International or North-American style numbers with at least 9 digits, with separators.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?!\w)"
)
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
PII_KINDS = {"email": _EMAIL, "card_number": _CARD, "phone": _PHONE}


def find_pii(text: str) -> list[tuple[str, str]]:
    """(kind, matched text) for every email, payment card number (Luhn-checked) and phone."""
    found, taken = [], []
    for kind, pattern in PII_KINDS.items():
        for match in pattern.finditer(text):
            span = match.span()
            if any(start < span[1] and span[0] < end for start, end in taken):
                continue
            if kind == "card_number" and not _luhn(re.sub(r"\D", "", match.group())):
                continue
            if kind == "phone" and not 9 <= len(re.sub(r"\D", "", match.group())) <= 15:
                continue  # E.164 numbers have at most 15 digits
            found.append((kind, match.group()))
            taken.append(span)
    return found


def redact_pii(text: str) -> str:
    """`text` with each PII match replaced by `[EMAIL]`, `[CARD_NUMBER]` or `[PHONE]`."""
    for kind, value in find_pii(text):
        text = text.replace(value, f"[{kind.upper()}]")
    return text


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = int(char) * (2 if index % 2 else 1)
        total += digit - 9 if digit > 9 else digit
    return total % 10 == 0


# --- toxicity --------------------------------------------------------------------------------

# A deliberately short default list of unambiguous slurs and obscenities (stems, matched as
# whole words or word starts). Teams replace it with their own file or a classifier hook.
_DEFAULT_WORDS = (
    "fuck",
    "fucking",
    "motherfucker",
    "shit",
    "bullshit",
    "cunt",
    "asshole",
    "bitch",
    "bastard",
    "dickhead",
    "retard",
    "faggot",
    "nigger",
    "slut",
    "whore",
)


def load_word_list(path: str | None) -> tuple[str, ...]:
    """Words from a file (one per line, '#' comments), or the built-in list."""
    if path is None:
        return _DEFAULT_WORDS
    lines = Path(path).read_text().splitlines()
    return tuple(w.strip().lower() for w in lines if w.strip() and not w.startswith("#"))


def toxicity_checker(word_list: str | None, hook: str | None) -> Callable[[str], str | None]:
    """A function text → reason (or None when clean).

    `hook` is 'module:function' taking the text and returning a reason or None (a local
    classifier, say); it runs instead of the word list when given.
    """
    if hook:
        module, _, name = hook.partition(":")
        return getattr(importlib.import_module(module), name)
    words = load_word_list(word_list)
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\w*", re.IGNORECASE)

    def check(text: str) -> str | None:
        match = pattern.search(text)
        return f"contains the listed word {match.group(1).lower()!r}" if match else None

    return check


# --- the output contract ---------------------------------------------------------------------


def contract_checker(labels: list[str] | None, schema: dict | None) -> Callable[[str], str | None]:
    """A function completion → reason it breaks the contract (or None)."""
    allowed = set(labels or [])
    validator = None
    if schema is not None:
        import jsonschema

        validator = jsonschema.Draft202012Validator(schema)

    def check(completion: str) -> str | None:
        if allowed and completion not in allowed:
            return f"{_short(completion)} is not in data.labels"
        if validator is not None:
            try:
                value = json.loads(completion)
            except json.JSONDecodeError as err:
                return f"completion is not JSON ({err.msg} at char {err.pos})"
            error = next(iter(validator.iter_errors(value)), None)
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                return f"completion breaks data.output_schema at {where}: {error.message}"
        return None

    return check


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


# --- fingerprints for duplicate detection ----------------------------------------------------


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: what 'the same text' means."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def exact_key(text: str) -> str:
    return hashlib.sha256(normalize(text).encode()).hexdigest()[:24]


@cache
def _hash_family(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def minhash(text: str, num_perm: int, shingle: int) -> np.ndarray:
    """MinHash signature of the set of character `shingle`-grams of the normalised text.

    Each of the `num_perm` hash functions is multiply-shift hashing, (a*x + b) mod 2^64 with
    odd a, keeping the high 32 bits: a universal family, vectorised in numpy.
    """
    joined = normalize(text)
    grams = {joined[i : i + shingle] for i in range(max(1, len(joined) - shingle + 1))}
    values = np.array(
        [int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "big") for g in grams],
        dtype=np.uint64,
    )
    a, b = _hash_family(num_perm)
    with np.errstate(over="ignore"):
        mixed = (a[:, None] * values[None, :] + b[:, None]) >> np.uint64(32)
    return mixed.min(axis=1).astype(np.uint32)


def lsh_bands(num_perm: int, threshold: float, recall: float = 0.9) -> tuple[int, int]:
    """(bands, rows), bands*rows == num_perm: the most rows per band (fewest false candidates)
    that still makes a pair at exactly `threshold` a candidate with probability ≥ `recall`.

    A pair of similarity s shares at least one band with probability 1 - (1 - s^rows)^bands.
    """
    pairs = [(num_perm // r, r) for r in range(1, num_perm + 1) if num_perm % r == 0]
    good = [(b, r) for b, r in pairs if 1 - (1 - threshold**r) ** b >= recall]
    return max(good, key=lambda br: br[1])


def band_keys(signature: np.ndarray, bands: int, rows: int) -> list[str]:
    """One bucket key per band: records sharing any key are near-duplicate candidates."""
    keys = []
    for band in range(bands):
        chunk = signature[band * rows : (band + 1) * rows].tobytes()
        keys.append(f"{band}:{hashlib.blake2b(chunk, digest_size=8).hexdigest()}")
    return keys


def similarity(one: np.ndarray, two: np.ndarray):
    """Estimated Jaccard similarity: the share of equal MinHash values (over the last axis,
    so rows of stacked signatures compare pairwise)."""
    return np.mean(one == two, axis=-1)
