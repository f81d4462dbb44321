"""Generation over a Ray Dataset of chat examples, for several models ("arms") at once.

An arm is the base model (`{"kind": "base"}`), a LoRA adapter on it (`{"kind": "adapter",
"uri": ...}`) or a fully tuned model (`{"kind": "model", "uri": ...}`). Each actor loads the
base model once and puts every adapter on it by name, so A/B arms share one copy of the base
weights. The base loads as serving loads it (quantized by the same bitsandbytes settings, when
the served base is), on the actor's GPU when it holds one (`ftray.placement.place`). Used by
evaluate (candidate vs incumbent) and by assess (the base model alone, optionally shown a few
solved examples first).

Evaluate's forgetting probe runs in the same actors, where the models already are: the
perplexity of every arm, and of the base model, on a general-text sample.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time

from ftray.data.tokenize import render_prompt
from ftray.models import generate_texts, load_for_inference, load_model, load_tokenizer
from ftray.placement import generation_batch_size, place
from ftray.spec import EvalSpec, ModelSpec, QloraSpec
from ftray.store import download_dir


def generation_options(spec: EvalSpec, model: ModelSpec, serving: dict) -> dict:
    """The `generate` settings of evaluate's and assess's actors: their resources, where and
    how the model loads, with the base quantized as `serving` says (`serving_config`)."""
    return {
        "dtype": model.dtype,
        "chat_template": model.chat_template,
        "attention": model.attention,
        "quantization": serving["bitsandbytes"],
        "max_new_tokens": spec.max_new_tokens,
        "batch_size": generation_batch_size(spec.batch_size, spec.gpus_per_worker),
        "num_workers": spec.num_workers,
        "cpus_per_worker": spec.cpus_per_worker,
        "gpus_per_worker": spec.gpus_per_worker,
    }


def generate(
    examples,
    arms: dict[str, dict],
    *,
    model_dir: str,
    dtype: str,
    chat_template: str | None = None,
    max_new_tokens: int,
    batch_size: int,
    num_workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float = 0,
    attention: str = "sdpa",
    quantization: dict | None = None,
    few_shot: list[dict] | None = None,
    temperature: float = 0.0,
    samples: int = 1,
    seed: int = 0,
    probe_text: str | None = None,
):
    """`examples` (with a `messages` column) plus, per arm, `<arm>_output`, `<arm>_tokens`,
    `<arm>_prompt_tokens`, `<arm>_confidence` and `<arm>_latency_s` (greedy), or
    `<arm>_samples` (a list of `samples` answers at `temperature`); materialized. With
    `probe_text`, also `<arm>_general_ppl` and `base_general_ppl` (the same on every row).
    `quantization`: the served base's bitsandbytes settings (a `QloraSpec` dump), or None."""
    import ray.data

    return examples.map_batches(
        _Generate,
        fn_constructor_kwargs={
            "model_dir": model_dir,
            "dtype": dtype,
            "chat_template": chat_template,
            "gpus": gpus_per_worker,
            "attention": attention,
            "quantization": quantization,
            "arms": arms,
            "max_new_tokens": max_new_tokens,
            "few_shot": few_shot or [],
            "temperature": temperature,
            "samples": samples,
            "seed": seed,
            "probe_text": probe_text,
        },
        batch_size=batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker,
    ).materialize()


def with_few_shot(messages: list[dict], shots: list[dict]) -> list[dict]:
    """`shots` (user/assistant turns) inserted after the system message, before the query."""
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    return [*head, *shots, *messages[len(head) :]]


class _Generate:
    """Per actor: the base model once, every arm's adapter on it by name, full models beside
    it; per batch: every arm's answers."""

    def __init__(
        self,
        model_dir,
        dtype,
        gpus,
        attention,
        quantization,
        arms,
        max_new_tokens,
        few_shot,
        temperature,
        samples,
        seed,
        probe_text,
        chat_template=None,
    ):
        import torch

        torch.manual_seed(seed)  # sampled answers repeat from run to run
        self.tokenizer = load_tokenizer(model_dir, chat_template)
        self.placement = place(gpus, dtype, attention)
        bnb = None if quantization is None else QloraSpec.model_validate(quantization)
        self.base = load_for_inference(model_dir, self.placement, bnb)
        self.peft = None
        self.full = {}
        self._folders = []
        for name, arm in arms.items():
            if arm["kind"] == "base":
                continue
            folder = tempfile.TemporaryDirectory(prefix=f"ftray-{name}-")
            download_dir(arm["uri"], folder.name)
            if arm["kind"] == "model":
                self.full[name] = load_model(folder.name, placement=self.placement).eval()
                folder.cleanup()
                continue
            self._folders.append(folder)  # peft reads adapter files lazily: keep them
            if self.peft is None:
                from peft import PeftModel

                self.peft = PeftModel.from_pretrained(self.base, folder.name, adapter_name=name)
            else:
                self.peft.load_adapter(folder.name, adapter_name=name)
            self.peft.eval()
        self.arms = arms
        self.max_new_tokens = max_new_tokens
        self.few_shot = few_shot
        self.temperature = temperature
        self.samples = samples
        self.general = {}
        if probe_text:
            for name, kind in [("base", "base")] + [(n, a["kind"]) for n, a in arms.items()]:
                self.general[name] = self._perplexity(name, kind, probe_text)

    def __call__(self, batch):
        chats = [with_few_shot(json.loads(m), self.few_shot) for m in batch["messages"]]
        prompts = [render_prompt(self.tokenizer, chat) for chat in chats]
        prompt_tokens = [
            len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        ]
        for name, value in self.general.items():
            batch[f"{name}_general_ppl"] = [value] * len(prompts)
        for name, arm in self.arms.items():
            started = time.perf_counter()
            results = self._run(name, arm["kind"], prompts)
            latency = (time.perf_counter() - started) / len(prompts)
            if self.samples > 1:
                k = self.samples
                batch[f"{name}_samples"] = [
                    [r["text"] for r in results[i * k : (i + 1) * k]] for i in range(len(prompts))
                ]
                continue
            batch[f"{name}_output"] = [r["text"] for r in results]
            batch[f"{name}_tokens"] = [r["tokens"] for r in results]
            batch[f"{name}_confidence"] = [r["confidence"] for r in results]
            batch[f"{name}_prompt_tokens"] = prompt_tokens
            batch[f"{name}_latency_s"] = [latency] * len(prompts)
        return batch

    def _run(self, name: str, kind: str, prompts: list[str]) -> list[dict]:
        options = {"temperature": self.temperature, "samples": self.samples}
        with self._model(name, kind) as model:
            return generate_texts(model, self.tokenizer, prompts, self.max_new_tokens, **options)

    @contextlib.contextmanager
    def _model(self, name: str, kind: str):
        """The arm's model: a full model, the base with the arm's adapter, or the bare base."""
        if kind == "model":
            yield self.full[name]
        elif kind == "adapter":
            self.peft.set_adapter(name)
            yield self.peft
        elif self.peft is not None:
            with self.peft.disable_adapter():
                yield self.peft
        else:
            yield self.base

    def _perplexity(self, name: str, kind: str, text: str) -> float:
        """exp(mean next-token loss) over `text`, in consecutive windows of the model's
        context (at most 512 tokens each: the probe's score does not depend on batch size)."""
        import torch

        ids = self.tokenizer(text, return_tensors="pt").input_ids[0]
        window = min(512, getattr(self.base.config, "max_position_embeddings", 512))
        total, count = 0.0, 0
        with self._model(name, kind) as model, torch.no_grad():
            for start in range(0, len(ids) - 1, window):
                chunk = ids[start : start + window].unsqueeze(0).to(model.device)
                if chunk.shape[1] < 2:
                    break
                loss = model(input_ids=chunk, labels=chunk).loss.item()
                total += loss * (chunk.shape[1] - 1)
                count += chunk.shape[1] - 1
        return math.exp(total / count)
