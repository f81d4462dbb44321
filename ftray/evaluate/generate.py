"""Greedy generation over a Ray Dataset of chat examples: the base model, and an adapter.

Used by evaluate (base vs tuned) and by assess (the base model alone, optionally shown a few
solved examples first).
"""

from __future__ import annotations

import json
import tempfile

from ftray.data.tokenize import render_prompt
from ftray.models import generate_texts, load_model, load_tokenizer
from ftray.spec import EvalSpec
from ftray.store import download_dir


def generate(
    examples,
    spec: EvalSpec,
    model_dir: str,
    dtype: str,
    *,
    adapter_uri: str | None = None,
    tuned_model_uri: str | None = None,
    few_shot: list[dict] | None = None,
    max_new_tokens: int | None = None,
):
    """`examples` (with a `messages` column) plus `base_output`/`base_tokens`, and
    `tuned_output`/`tuned_tokens` when an adapter or a fully tuned model is given;
    materialized."""
    import ray.data

    return examples.map_batches(
        _Generate,
        fn_constructor_kwargs={
            "model_dir": model_dir,
            "dtype": dtype,
            "adapter_uri": adapter_uri,
            "tuned_model_uri": tuned_model_uri,
            "max_new_tokens": max_new_tokens or spec.max_new_tokens,
            "few_shot": few_shot or [],
        },
        batch_size=spec.batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=spec.num_workers),
        num_cpus=spec.cpus_per_worker,
    ).materialize()


def with_few_shot(messages: list[dict], shots: list[dict]) -> list[dict]:
    """`shots` (user/assistant turns) inserted after the system message, before the query."""
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    return [*head, *shots, *messages[len(head) :]]


class _Generate:
    """Per actor: the base model once (with the adapter on top, or beside the fully tuned
    model); per batch: the answers."""

    def __init__(self, model_dir, dtype, adapter_uri, tuned_model_uri, max_new_tokens, few_shot):
        self.tokenizer = load_tokenizer(model_dir)
        self.model = load_model(model_dir, dtype).eval()
        self._adapter_dir = None
        self.tuned = None
        if adapter_uri:
            from peft import PeftModel

            self._adapter_dir = tempfile.TemporaryDirectory(prefix="ftray-adapter-")
            download_dir(adapter_uri, self._adapter_dir.name)
            self.model = PeftModel.from_pretrained(self.model, self._adapter_dir.name).eval()
        elif tuned_model_uri:
            with tempfile.TemporaryDirectory(prefix="ftray-model-") as folder:
                download_dir(tuned_model_uri, folder)
                self.tuned = load_model(folder, dtype).eval()
        self.max_new_tokens = max_new_tokens
        self.few_shot = few_shot

    def __call__(self, batch):
        chats = [with_few_shot(json.loads(m), self.few_shot) for m in batch["messages"]]
        prompts = [render_prompt(self.tokenizer, chat) for chat in chats]
        answers = {}
        if self._adapter_dir is not None:
            with self.model.disable_adapter():
                answers["base"] = self._run(prompts)
            answers["tuned"] = self._run(prompts)
        else:
            answers["base"] = self._run(prompts)
            if self.tuned is not None:
                answers["tuned"] = self._run(prompts, self.tuned)
        for name, results in answers.items():
            batch[f"{name}_output"] = [r["text"] for r in results]
            batch[f"{name}_tokens"] = [r["tokens"] for r in results]
        return batch

    def _run(self, prompts: list[str], model=None) -> list[dict]:
        return generate_texts(model or self.model, self.tokenizer, prompts, self.max_new_tokens)
