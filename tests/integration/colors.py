"""The colors task: filler words with 'red' or 'blue' among them; the answer is the color."""

from __future__ import annotations

import random

FILLER = [f"{syllable}{n}" for syllable in ("ka", "lo", "mi", "tu") for n in range(8)]


def query(rng: random.Random, i: int) -> tuple[str, str]:
    """(prompt, color) number `i`: two thirds red, one third blue."""
    words = rng.sample(FILLER, 6)
    color = "red" if i % 3 else "blue"
    words.insert(rng.randrange(7), color)
    return f"{' '.join(words)} {i}", color
