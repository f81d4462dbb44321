"""The inference engine behind the Serve app, runnable without Ray (a GPU box, a test).

One base model (optionally INT8/INT4-quantized by bitsandbytes), on the replica's GPU when it
has one (`ftray.placement.place`), carries every loaded LoRA adapter by name; a batch of
requests for different adapters runs as one `generate` call with peft's per-row
`adapter_names`. Fully fine-tuned models load beside it and run in their own
groups. Loading, unloading and generating are not thread-safe: the Serve replica serializes
them. Counting tokens, rendering prompts and the in-use counts are safe from any thread.

A loaded model is unloaded only when nothing uses it: requests take it with `use` and give it
back with `done`; `retire` marks it for unloading (Serve's LRU evicted it), and
`unload_retired` unloads the retired models no request uses, at a point where no generation
runs.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, cast

from ftray.models import generate_texts, load_for_inference, load_model, load_tokenizer
from ftray.placement import place
from ftray.spec import QloraSpec

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class Request:
    """One completion to generate: `model` is a loaded name, or None for the base model;
    `schema`: a JSON schema the answer must follow (engines that constrain decoding)."""

    model: str | None
    prompt: str
    max_tokens: int
    temperature: float = 0.0
    schema: dict | None = None


class ServingEngine(Protocol):
    """What the Serve app needs from an engine (this module's `Engine`, or
    `ftray.serve.vllm_engine.VllmEngine`).

    How each generates differs: this engine generates a batch or a stream at a time (the app
    batches requests for `generate` and streams through `stream` in a thread, under its
    lock); the vLLM engine answers each request with the async `complete` and `stream` and
    batches whatever is in flight itself. `schema`: the JSON schema the engine constrains
    answers to by default (None: it does not constrain).
    """

    schema: dict | None
    counts: Counter[str]

    def count_tokens(self, text: str) -> int: ...
    def render(self, messages: list[dict[str, str]]) -> str: ...
    def has(self, name: str) -> bool: ...
    def use(self, name: str) -> None: ...
    def done(self, name: str) -> None: ...
    def retire(self, name: str) -> None: ...
    def revive(self, name: str) -> bool: ...
    def unload_retired(self, keep: Iterable[str | None] = ()) -> list[str]: ...
    def load_adapter(self, name: str, folder: str) -> None: ...
    def load_full(self, name: str, folder: str) -> None: ...
    def memory(self) -> dict: ...
    def failure(self) -> str | None: ...
    def close(self) -> None: ...


class ModelBooks:
    """Which loaded models requests use, and which Serve retired: a model is unloaded (by the
    engine's `unload`) only once retired and unused. Safe from any thread."""

    def __init__(self) -> None:
        self._uses: Counter[str] = Counter()
        self._retired: set[str] = set()
        self._books = threading.Lock()  # guards _uses, _retired and the counts
        self.counts = Counter(loads=0, unloads=0, evicted_in_use=0)

    def has(self, name: str) -> bool:
        """Whether the adapter or full model `name` is loaded (retired or not)."""
        raise NotImplementedError

    def unload(self, name: str) -> bool:
        """Free `name`; False when it has to stay loaded for now."""
        raise NotImplementedError

    def use(self, name: str) -> None:
        """Count one more request using `name`: it stays loaded until the matching `done`."""
        with self._books:
            self._uses[name] += 1

    def done(self, name: str) -> None:
        """A request that called `use(name)` no longer needs it."""
        with self._books:
            self._uses[name] -= 1
            if self._uses[name] <= 0:
                del self._uses[name]

    def retire(self, name: str) -> None:
        """Unload `name` at the next `unload_retired` after no request uses it."""
        with self._books:
            self._retired.add(name)
            if self._uses[name]:
                self.counts["evicted_in_use"] += 1

    def revive(self, name: str) -> bool:
        """Keep a retired `name` loaded after all; False when it is not loaded any more."""
        with self._books:
            self._retired.discard(name)
            return self.has(name)

    def unload_retired(self, keep: Iterable[str | None] = ()) -> list[str]:
        """Unload the retired models that no request uses and that are not in `keep` (the
        models of the generation about to run); returns their names."""
        keep = set(keep)
        with self._books:
            idle = sorted(n for n in self._retired if not self._uses[n] and n not in keep)
        unloaded = [name for name in idle if self.unload(name)]
        with self._books:
            self._retired.difference_update(unloaded)
            self.counts["unloads"] += len(unloaded)
        return unloaded


class Engine(ModelBooks):
    """The base model, the loaded adapters and full models, and batched generation."""

    schema: dict | None = None  # answers are not constrained

    def __init__(
        self,
        model_dir: str,
        dtype: str = "auto",
        quantization: QloraSpec | None = None,
        *,
        gpus: float = 0,
        attention: str = "sdpa",
        timeout_s: float = 300,
        chat_template: str | None = None,
    ):
        """`quantization`: bitsandbytes settings of the base (None: unquantized); `gpus`: the
        GPUs Ray reserved for the replica, where the models go."""
        self.tokenizer = load_tokenizer(model_dir, chat_template)
        # A second tokenizer for requests outside generation: batched generation switches the
        # first one's padding on, and a fast tokenizer changed in one thread while another
        # thread encodes with it fails ("Already borrowed").
        self._reader = load_tokenizer(model_dir, chat_template)
        self.timeout_s = timeout_s
        # generations whose stream gave up on them; `settle` waits for them
        self._stragglers: list[threading.Thread] = []
        self.placement = place(gpus, dtype, attention)
        self.base = load_for_inference(model_dir, self.placement, quantization)
        self.quantization = "none" if quantization is None else f"int{quantization.bits}"
        self.peft: Any = None  # a PeftModel once the first adapter is loaded
        self.full: dict[str, Any] = {}
        ModelBooks.__init__(self)

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` as the model reads it (no special tokens added)."""
        return len(self._reader(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: list[dict[str, str]]) -> str:
        """The chat template applied to `messages`, ending where the answer starts."""
        return self._reader.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def has(self, name: str) -> bool:
        """Whether the adapter or full model `name` is loaded (retired or not)."""
        return name in self.full or (self.peft is not None and name in self.peft.peft_config)

    def load_adapter(self, name: str, folder: str) -> None:
        """Put the LoRA adapter in `folder` on the base model under `name`."""
        if self.peft is None:
            from peft import PeftModel

            self.peft = PeftModel.from_pretrained(self.base, folder, adapter_name=name)
        else:
            try:
                self.peft.load_adapter(folder, adapter_name=name)
            except Exception:
                # peft adds the adapter's layers before it reads the weights: a file that
                # fails to load would leave `name` on the model with initial weights,
                # answering as if it had loaded.
                if name in self.peft.peft_config:
                    self.peft.delete_adapter(name)
                raise
        self.peft.eval()
        self.counts["loads"] += 1

    def load_full(self, name: str, folder: str) -> None:
        """Load a fully fine-tuned model (same tokenizer as the base) under `name`, placed as
        the base (never quantized)."""
        self.full[name] = load_model(folder, placement=self.placement).eval()
        self.counts["loads"] += 1

    def unload(self, name: str) -> bool:
        """Free an adapter or a full model. False for the only adapter on the base (peft needs
        one), which stays until another is loaded."""
        if self.full.pop(name, None) is not None:
            return True
        if self.peft is not None and name in self.peft.peft_config:
            if len(self.peft.peft_config) == 1:
                return False
            self.peft.delete_adapter(name)
        return True

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
                max_time=self.timeout_s,
                **extra,
            )
            for i, answer in zip(rows, answers, strict=True):
                results[i] = answer
        return cast("list[dict]", results)  # every request was answered above

    def stream(self, request: Request) -> Iterator[str]:
        """The answer's text in pieces as it is generated.

        Raises the generation's own error if it fails, and TimeoutError when no piece comes
        for `timeout_s` (the generation then runs on in its thread until its `max_time`, the
        same bound: call `settle` before the model serves anything else).
        """
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=self.timeout_s
        )
        model, extra = self._model_for(
            request.model if request.model in self.full else "peft", [request]
        )
        encoded = self.tokenizer([request.prompt], return_tensors="pt", add_special_tokens=False)
        sampling = {"do_sample": True, "temperature": request.temperature}
        failures: list[BaseException] = []

        def generate() -> None:
            try:
                model.generate(
                    **encoded.to(model.device),
                    **extra,
                    max_new_tokens=request.max_tokens,
                    max_time=self.timeout_s,
                    streamer=streamer,
                    pad_token_id=self.tokenizer.pad_token_id,
                    # the template's end of turn (model.chat_template), not the config's EOS
                    eos_token_id=self.tokenizer.eos_token_id,
                    **(sampling if request.temperature else {"do_sample": False}),
                )
            except BaseException as error:  # handed to the reading thread
                failures.append(error)
            finally:
                # A generation that fails never ends the stream itself: the reader would wait
                # forever (and hold the replica's lock). A second end after a normal one only
                # queues a stop signal nobody reads.
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True, name="ftray-stream")
        worker.start()
        try:
            yield from (piece for piece in streamer if piece)
        except queue.Empty:
            self._stragglers.append(worker)
            raise TimeoutError(f"no token for {self.timeout_s:g} s") from None
        worker.join()
        if failures:
            raise failures[0]

    def settle(self) -> None:
        """Wait for generations that outlived their stream (the engine is not thread-safe: the
        next generation must not start while one still runs)."""
        while self._stragglers:
            self._stragglers.pop().join()

    def failure(self) -> str | None:
        """Why the engine cannot answer any more (None: it can); a stuck generation is the
        app's model lock's to report."""
        return None

    def close(self) -> None:
        """Nothing to stop: the models go with the process."""

    def memory(self) -> dict:
        """Bytes held by the base model's weights and by each full model, and where they are."""
        return {
            "engine": "transformers",
            "quantization": self.quantization,
            "device": self.placement.device,
            "dtype": self.placement.dtype,
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
