"""The inference engine behind the Serve app, runnable without Ray (a GPU box, a test).

One base model (optionally INT8/INT4-quantized by bitsandbytes) carries every loaded LoRA
adapter by name; a batch of requests for different adapters runs as one `generate` call with
peft's per-row `adapter_names`. Fully fine-tuned models load beside it and run in their own
groups. Not thread-safe: the Serve replica serializes calls.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from ftray.models import generate_texts, load_model, load_quantized_model, load_tokenizer
from ftray.spec import QloraSpec

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class Request:
    """One completion to generate: `model` is a loaded name, or None for the base model."""

    model: str | None
    prompt: str
    max_tokens: int
    temperature: float = 0.0


class Engine:
    """The base model, the loaded adapters and full models, and batched generation."""

    def __init__(self, model_dir: str, dtype: str, quantization: str = "none"):
        self.tokenizer = load_tokenizer(model_dir)
        if quantization == "none":
            self.base = load_model(model_dir, dtype)
        else:
            bits = {"int8": 8, "int4": 4}[quantization]
            self.base = load_quantized_model(model_dir, QloraSpec(bits=bits))
        self.base.eval()
        self.quantization = quantization
        self.peft = None
        self.full: dict[str, object] = {}

    def load_adapter(self, name: str, folder: str) -> None:
        """Put the LoRA adapter in `folder` on the base model under `name`."""
        if self.peft is None:
            from peft import PeftModel

            self.peft = PeftModel.from_pretrained(self.base, folder, adapter_name=name)
        else:
            self.peft.load_adapter(folder, adapter_name=name)
        self.peft.eval()

    def load_full(self, name: str, folder: str, dtype: str) -> None:
        """Load a fully fine-tuned model (same tokenizer as the base) under `name`."""
        self.full[name] = load_model(folder, dtype).eval()

    def unload(self, name: str) -> None:
        """Free an adapter or a full model (the last adapter stays: peft needs one)."""
        self.full.pop(name, None)
        if (
            self.peft is not None
            and name in self.peft.peft_config
            and len(self.peft.peft_config) > 1
        ):
            self.peft.delete_adapter(name)

    def generate(self, requests: list[Request]) -> list[dict]:
        """Answers in request order. Base and adapter requests with equal temperature share one
        mixed-adapter `generate` call; each full model runs its own."""
        results: list[dict | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            target = request.model if request.model in self.full else "peft"
            groups.setdefault((target, request.temperature), []).append(i)
        for (target, temperature), rows in groups.items():
            batch = [requests[i] for i in rows]
            model, extra = self._model_for(target, batch)
            answers = generate_texts(
                model,
                self.tokenizer,
                [r.prompt for r in batch],
                max(r.max_tokens for r in batch),
                temperature=temperature,
                limits=[r.max_tokens for r in batch],
                **extra,
            )
            for i, answer in zip(rows, answers, strict=True):
                results[i] = answer
        return results

    def stream(self, request: Request) -> Iterator[str]:
        """The answer's text in pieces as it is generated."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        model, extra = self._model_for(
            request.model if request.model in self.full else "peft", [request]
        )
        encoded = self.tokenizer([request.prompt], return_tensors="pt", add_special_tokens=False)
        sampling = {"do_sample": True, "temperature": request.temperature}
        worker = threading.Thread(
            target=model.generate,
            kwargs={
                **encoded.to(model.device),
                **extra,
                "max_new_tokens": request.max_tokens,
                "streamer": streamer,
                "pad_token_id": self.tokenizer.pad_token_id,
                **(sampling if request.temperature else {"do_sample": False}),
            },
        )
        worker.start()
        yield from (piece for piece in streamer if piece)
        worker.join()

    def memory(self) -> dict:
        """Bytes held by the base model's weights and by each full model."""
        return {
            "quantization": self.quantization,
            "base_bytes": int(self.base.get_memory_footprint()),
            "adapters": sorted(set(self.peft.peft_config) if self.peft else set()),
            "full_models": {n: int(m.get_memory_footprint()) for n, m in self.full.items()},
        }

    def _model_for(self, target: str, batch: list[Request]):
        if target != "peft":
            return self.full[target], {}
        if self.peft is None:
            return self.base, {}
        return self.peft, {"adapter_names": [r.model or BASE for r in batch]}
