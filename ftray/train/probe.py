"""The task probe: a sweep trial's primary metric on a fixed validation sample, measured at
every evaluation while it trains, so ASHA prunes and the sweep ranks on the task's metric
rather than on loss.

Every rank answers its share of the sample greedily (padded to equal shares, so ZeRO-3's
collective forward passes stay in step); the answers are gathered in order and scored by
the evaluation's own scorers, so every rank computes the same score.
"""

from __future__ import annotations

import json
import math

from ftray.data.tokenize import render_prompt
from ftray.train.config import ProbeConfig
from ftray.train.context import gather


def task_score(model, tokenizer, probe: ProbeConfig, rank: int, world: int, synced: bool):
    """The primary metric of the model's answers to `probe.examples` (None when the metric
    has nothing to count, e.g. no answer parsed for a field metric)."""
    import pandas as pd

    from ftray.evaluate.score import Task, score_one
    from ftray.models import generate_texts

    rows = probe.examples
    share = math.ceil(len(rows) / world)
    mine = list(range(rank, len(rows), world))
    padded = mine + [mine[0] if mine else 0] * (share - len(mine))
    generator = getattr(model, "module", model)  # DDP and DeepSpeed wrap the model
    was_training = generator.training
    generator.eval()
    answers = []
    for start in range(0, share, probe.batch_size):
        chunk = padded[start : start + probe.batch_size]
        prompts = [render_prompt(tokenizer, json.loads(rows[i]["messages"])) for i in chunk]
        answers += generate_texts(
            generator, tokenizer, prompts, probe.max_new_tokens, synced_gpus=synced
        )
    if was_training:
        generator.train()
    found = {i: a for i, a in zip(mine, answers, strict=False)}  # the padding is dropped
    merged = {i: a for part in gather(found) for i, a in part.items()}
    table = pd.DataFrame(rows)
    table["base_output"] = [merged[i]["text"] for i in range(len(rows))]
    table["base_confidence"] = [merged[i]["confidence"] for i in range(len(rows))]
    task = Task(**probe.task)
    return score_one(table, task, [task.primary])[task.primary]
