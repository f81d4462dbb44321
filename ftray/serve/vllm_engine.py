"""The vLLM engine behind the Serve app (`serve.engine: vllm`), the same seam as
`ftray.serve.engine.Engine`.

One `AsyncLLM` per replica holds the base model; it batches every request in flight itself
(continuous batching, prefix caching on), so the app sends each request as it comes, with no
batch queue or lock in front. Registry adapters run as vLLM LoRA requests, one `LoRARequest`
per adapter, read from a copy of the adapter's folder that lives as long as the adapter is
loaded (vLLM reads it again after evicting it from its own cache). A fully fine-tuned model
gets an `AsyncLLM` of its own. Prompts arrive rendered by the app and are tokenized here with
the same tokenizer as the transformers engine, so both engines read the same tokens and stop
at the same end-of-turn token. With a JSON schema (`data.output_schema`), answers are
constrained to it by vLLM's structured outputs unless a request opts out.

vLLM is imported only here and only when a replica builds this engine: the embedded
environment has no vLLM (README: Serve).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ftray.errors import UserError
from ftray.models import load_tokenizer
from ftray.placement import place
from ftray.serve.config import ReplicaConfig
from ftray.serve.engine import ModelBooks, Request


def check_engine(engine: str) -> None:
    """A UserError when `engine` is vllm and this Python has no vLLM (a local Ray runs the
    replicas with this Python too)."""
    if engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise UserError(
            f"serve.engine is 'vllm', but vLLM is not installed in {sys.executable}. On CPU: "
            "`make install-vllm`, then run ftray from that environment "
            "(`.venv-vllm/bin/ftray serve JOB.yaml`); on a CUDA machine: "
            "`pip install 'ftray[vllm]'`. Or use serve.engine: transformers."
        )


def cpu_environment(config: ReplicaConfig) -> dict[str, str]:
    """vLLM's CPU settings for a replica: its KV cache size, and OpenMP threads on as many
    cores as the replica reserves (vLLM reserves none for itself: Ray already did)."""
    threads = max(1, int(config.serve.cpus_per_replica))
    return {
        "VLLM_CPU_KVCACHE_SPACE": f"{config.serve.vllm.cpu_kv_cache_gib:g}",
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }


class VllmEngine(ModelBooks):
    """A replica's vLLM engines: the base model with its LoRA adapters, and full models."""

    def __init__(self, config: ReplicaConfig):
        """Start the base model's engine (minutes on CPU: vLLM compiles and profiles it)."""
        super().__init__()
        serving = config.serve
        self.on_gpu = serving.gpus_per_replica > 0
        if not self.on_gpu:
            os.environ.update(cpu_environment(config))
        self.settings = serving.vllm
        self.timeout_s = serving.generation_timeout_s
        self.max_adapters = serving.max_adapters_per_replica
        self.schema: dict | None = config.output_schema
        self.placement = place(serving.gpus_per_replica, config.model.dtype)
        # The app renders and counts prompts with the job's tokenizer (chat template
        # included); generation reads the same token ids, never vLLM's own tokenization.
        self.tokenizer = load_tokenizer(config.model_dir, config.model.chat_template)
        self.stop_ids = [self.tokenizer.eos_token_id]  # the template's end of turn
        self._folders = Path(tempfile.mkdtemp(prefix="ftray-vllm-"))
        self._ids = itertools.count(1)  # vLLM tells LoRA adapters apart by an int id
        self.base_dir = config.model_dir
        self.base = self._start(config.model_dir, lora=True)
        self.lora: dict[str, Any] = {}  # name -> LoRARequest
        self.full: dict[str, Any] = {}  # name -> AsyncLLM

    def _start(self, model_dir: str, lora: bool):
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args: dict[str, Any] = {
            "model": model_dir,
            "dtype": self.placement.dtype,
            "enable_prefix_caching": True,
            # Compact JSON: a model unsure of the next key otherwise fills max_tokens with
            # the whitespace a schema allows (vLLM sets this per engine, not per request).
            "structured_outputs_config": StructuredOutputsConfig(
                backend="xgrammar", disable_any_whitespace=True
            ),
            "tensor_parallel_size": self.settings.tensor_parallel_size,
            "disable_log_stats": True,
        }
        if self.on_gpu:
            args["gpu_memory_utilization"] = self.settings.gpu_memory_utilization
        if self.settings.max_num_seqs is not None:
            args["max_num_seqs"] = self.settings.max_num_seqs
        if lora:
            args |= {
                "enable_lora": True,
                "max_lora_rank": self.settings.max_lora_rank,
                "max_loras": self.max_adapters,
            }
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` as the model reads it (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: list[dict[str, str]]) -> str:
        """The chat template applied to `messages`, ending where the answer starts."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def has(self, name: str) -> bool:
        """Whether the adapter or full model `name` is loaded (retired or not)."""
        return name in self.lora or name in self.full

    def load_adapter(self, name: str, folder: str) -> None:
        """Serve the LoRA adapter in `folder` under `name` (vLLM reads it on first use)."""
        from vllm.lora.request import LoRARequest

        rank = _lora_rank(folder)
        if rank > self.settings.max_lora_rank:
            raise ValueError(
                f"adapter {name} has LoRA rank {rank}, above serve.vllm.max_lora_rank "
                f"({self.settings.max_lora_rank}): raise it in the job spec"
            )
        kept = self._keep(name, folder)
        self.lora[name] = LoRARequest(name, next(self._ids), kept)
        self.counts["loads"] += 1

    def load_full(self, name: str, folder: str) -> None:
        """Start an engine of its own for the fully fine-tuned model in `folder`."""
        self.full[name] = self._start(self._keep(name, folder), lora=False)
        self.counts["loads"] += 1

    def unload(self, name: str) -> bool:
        """Forget an adapter (vLLM drops it from its own cache when it needs the room) or stop
        a full model's engine; the folder goes with it."""
        self.lora.pop(name, None)
        engine = self.full.pop(name, None)
        if engine is not None:
            engine.shutdown()
        shutil.rmtree(self._folders / name, ignore_errors=True)
        return True

    async def complete(self, request: Request) -> dict:
        """The whole answer to `request`: text, completion tokens and finish reason. A
        generation past serve.generation_timeout_s stops with what it has ('length')."""
        from vllm.sampling_params import RequestOutputKind

        engine, params, lora, ident = self._submit(request, RequestOutputKind.FINAL_ONLY)
        final = None

        async def generate() -> None:
            nonlocal final
            async for output in engine.generate(*params, ident, lora_request=lora):
                final = output.outputs[0]

        # cancelled on time-out (vLLM aborts a cancelled request): the answer so far stands
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(generate(), self.timeout_s)
        if final is None:
            return {"text": "", "tokens": 0, "finish_reason": "length"}
        stopped = final.finish_reason == "stop"
        return {
            "text": self._decode(final.token_ids).strip(),
            "tokens": len(final.token_ids),
            "finish_reason": "stop" if stopped else "length",
        }

    async def stream(self, request: Request) -> AsyncIterator[str]:
        """The answer's text in pieces as vLLM generates it; TimeoutError when no piece comes
        for serve.generation_timeout_s. Leaving early aborts the generation."""
        from vllm.sampling_params import RequestOutputKind

        engine, params, lora, ident = self._submit(request, RequestOutputKind.DELTA)
        outputs = engine.generate(*params, ident, lora_request=lora)
        ids: list[int] = []
        sent = 0  # characters of the decoded answer already yielded
        try:
            while True:
                try:
                    output = await asyncio.wait_for(anext(outputs), self.timeout_s)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    raise TimeoutError(f"no token for {self.timeout_s:g} s") from None
                ids.extend(output.outputs[0].token_ids)
                text = self._decode(ids)
                # as transformers' streamer: hold back a character still missing bytes
                if len(text) > sent and not text.endswith("\ufffd"):
                    yield text[sent:]
                    sent = len(text)
            text = self._decode(ids)
            if len(text) > sent:
                yield text[sent:]
        finally:
            await outputs.aclose()  # vLLM aborts a request whose generator closes early

    def _decode(self, ids) -> str:
        # ftray's tokenizer, not vLLM's detokenizer: the same text as the transformers engine
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _submit(self, request: Request, kind) -> tuple[Any, tuple[dict, Any], Any, str]:
        """(the engine, (prompt, sampling parameters), the LoRA request, a request id)."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        guided = StructuredOutputsParams(json=request.schema) if request.schema else None
        params = SamplingParams(
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            stop_token_ids=self.stop_ids,
            structured_outputs=guided,
            output_kind=kind,
            detokenize=False,  # decoded by `_decode`
        )
        ids = self.tokenizer(request.prompt, add_special_tokens=False)["input_ids"]
        prompt = {"prompt_token_ids": ids}
        if request.model in self.full:
            return self.full[request.model], (prompt, params), None, uuid.uuid4().hex
        lora = self.lora.get(request.model) if request.model else None
        return self.base, (prompt, params), lora, uuid.uuid4().hex

    def failure(self) -> str | None:
        """Why the engine cannot answer any more (its engine process died), or None."""
        dead = [n for n, e in [("base", self.base), *self.full.items()] if e.errored]
        return f"the vLLM engine of {', '.join(dead)} stopped" if dead else None

    def close(self) -> None:
        """Stop every engine process and remove the adapters' folders."""
        for engine in [self.base, *self.full.values()]:
            engine.shutdown()
        shutil.rmtree(self._folders, ignore_errors=True)

    def memory(self) -> dict:
        """The weights' bytes on disk (vLLM holds them in its engine process), where they run,
        and the loaded adapters and full models."""
        return {
            "engine": "vllm",
            "quantization": "none",
            "device": self.placement.device,
            "dtype": self.placement.dtype,
            "base_bytes": _weight_bytes(self.base_dir),
            "adapters": sorted(self.lora),
            "full_models": {n: _weight_bytes(str(self._folders / n)) for n in self.full},
        }

    def _keep(self, name: str, folder: str) -> str:
        """A copy of `folder` that lives while `name` is loaded (the app's goes after load)."""
        kept = self._folders / name
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(folder, kept)
        return str(kept)


def _lora_rank(folder: str) -> int:
    import json

    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    ranks = [config.get("r", 8), *(config.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks)


def _weight_bytes(folder: str) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
