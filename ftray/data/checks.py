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

from ftray.errors import UserError

# --- PII -------------------------------------------------------------------------------------

_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
PII_KINDS = ("email", "card_number", "phone")
# Numbers written without a country code are read as this region's (the spec's
# data.pii.phone_region defaults to it too).
DEFAULT_PHONE_REGION = "GB"


def find_pii(text: str, region: str = DEFAULT_PHONE_REGION) -> list[tuple[str, str]]:
    """(kind, matched text) for every email, payment card number (Luhn-checked) and phone.

    Phones come from Google's libphonenumber metadata (the `phonenumbers` package) rather
    than a pattern: it knows every country's number lengths and prefixes, with `region`
    for numbers written without a country code. A match counts when it is a valid number
    for its country, or a possible one with 9 to 15 digits (E.164's most): reserved
    ranges (UK 07700 900xxx, US 555-01xx) are still phone numbers in text people write.
    """
    found: list[tuple[int, str, str]] = []
    taken: list[tuple[int, int]] = []

    def add(kind: str, start: int, end: int, value: str) -> None:
        if not any(start < stop and begin < end for begin, stop in taken):
            found.append((start, kind, value))
            taken.append((start, end))

    for match in _EMAIL.finditer(text):
        add("email", *match.span(), match.group())
    for match in _CARD.finditer(text):
        if _luhn(re.sub(r"\D", "", match.group())):
            add("card_number", *match.span(), match.group())
    for match in _phone_matches(text, region):
        add("phone", match.start, match.end, match.raw_string)
    return [(kind, value) for _, kind, value in sorted(found)]


def _phone_matches(text: str, region: str) -> list:
    import phonenumbers

    matcher = phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.POSSIBLE)
    return [
        match
        for match in matcher
        if phonenumbers.is_valid_number(match.number)
        or 9 <= len(re.sub(r"\D", "", match.raw_string)) <= 15
    ]


def redact_pii(text: str, region: str = DEFAULT_PHONE_REGION) -> str:
    """`text` with each PII match replaced by `[EMAIL]`, `[CARD_NUMBER]` or `[PHONE]`."""
    for kind, value in find_pii(text, region):
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
    """Words from a file (one per line, '#' comments), or the built-in list.

    Raises UserError when the file is missing or holds no word: an empty list would match
    every text and quarantine every record.
    """
    if path is None:
        return _DEFAULT_WORDS
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(
            f"data.toxicity.word_list: cannot read {path!r} ({err}); give a UTF-8 file of "
            "words, one per line."
        ) from None
    words = tuple(w.strip().lower() for w in lines if w.strip() and not w.lstrip().startswith("#"))
    if not words:
        raise UserError(
            f"data.toxicity.word_list: {path!r} holds no words (only blank lines and "
            "comments); add words, one per line, or set data.toxicity.enabled: false."
        )
    return words


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
    """The key exact duplicates share: a hash of the normalized text."""
    return hashlib.sha256(normalize(text).encode()).hexdigest()[:24]


def prompt_key(messages: str) -> str:
    """The key records with the same prompt share: the chat before the answer (a JSON list
    of {role, content}, system prompt included), normalised as for exact duplicates."""
    return exact_key("\n".join(f"{m['role']}: {m['content']}" for m in json.loads(messages)))


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
