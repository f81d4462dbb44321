"""GPU throughput of a ~1B-parameter Llama in bf16: serving, evaluation and a training step.

    python -m bench.gpu [--layers 22] [--batch 16] [--prompt 256] [--new-tokens 128] [--seq 1024]

Needs a CUDA GPU, torch, transformers and accelerate; no Ray, no network. The model is a
TinyLlama-shaped config (hidden 2048, 22 layers, 32 heads, 4 KV heads, vocab 32000: 1.1B
parameters) with random weights, saved to a scratch folder with the tiny model's byte-level
tokenizer, then loaded the way ftray loads inference models (`ftray.placement.place` for one
GPU, bf16 where the GPU has it). Measured, each after an untimed warm-up:

- `generate`: the serve engine (`ftray.serve.engine.Engine`, one GPU) answering `--batch`
  prompts of `--prompt` tokens with `--new-tokens` greedy tokens in one batch: generated
  tokens/s; MFU at 2 FLOPs per parameter per token (decoding is memory-bound: expect it low);
- `prefill`: a forward pass over `--batch` × `--seq` tokens: tokens/s, MFU at 2 FLOPs/param;
- `train_step`: a full fine-tune step (forward, backward, AdamW on bf16 weights) on
  `--batch`/4 × `--seq` tokens with gradient checkpointing off: tokens/s, MFU at 6 FLOPs/param.

MFU is over the GPU's dense bf16 peak (`ftray.train.tracking.peak_flops`; $FTRAY_PEAK_TFLOPS
for GPUs it does not list). Results go to bench/results/gpu.json; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "gpu.json"
ONE_B = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}


def build_model(folder: Path, layers: int) -> int:
    """A random-init Llama of `layers` layers (22: 1.1B parameters) saved in bf16 with the
    tiny model's tokenizer into `folder`; returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftray.models import load_tokenizer, resolve_model
    from ftray.spec import ModelSpec
    from ftray.store import Store

    tiny = resolve_model(ModelSpec(base="tiny"), Store(str(folder / "store"), "bench"))
    tokenizer = load_tokenizer(tiny)
    config = LlamaConfig(
        num_hidden_layers=layers,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        **ONE_B,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    del model
    torch.cuda.empty_cache()
    return params


def bench_generate(model_dir: str, batch: int, prompt: int, new_tokens: int) -> dict:
    """The serve engine on one GPU: one batch of greedy answers."""
    import torch

    from ftray.serve.engine import Engine, Request

    engine = Engine(model_dir, "auto", gpus=1)
    # distinct prompts of `prompt` byte-level tokens each
    prompts = [("".join(chr(97 + (i + j) % 26) for j in range(prompt))) for i in range(batch)]
    requests = [Request(None, p, new_tokens) for p in prompts]
    engine.generate(requests[:2])  # warm-up: CUDA kernels, allocator
    torch.cuda.synchronize()
    started = time.perf_counter()
    answers = engine.generate(requests)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = sum(a["tokens"] for a in answers)
    placement = engine.placement
    devices = sorted({str(p.device) for p in engine.base.parameters()})
    del engine
    torch.cuda.empty_cache()
    return {
        "batch": batch,
        "prompt_tokens": prompt,
        "generated_tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "device": devices,
        "dtype": placement.dtype,
    }


def bench_prefill_and_train(model_dir: str, batch: int, seq: int, steps: int) -> dict:
    """A forward pass (prefill) and full fine-tune steps on random tokens."""
    import torch

    from ftray.models import load_model
    from ftray.placement import place

    model = load_model(model_dir, placement=place(1, "auto"))
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device="cuda")
    with torch.no_grad():
        model(input_ids=ids[:2])
        torch.cuda.synchronize()
        started = time.perf_counter()
        model(input_ids=ids)
        torch.cuda.synchronize()
    prefill_s = time.perf_counter() - started

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    train_ids = ids[: max(1, batch // 4)]

    def step() -> None:
        model(input_ids=train_ids, labels=train_ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocates the optimizer state
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    train_s = (time.perf_counter() - started) / steps
    return {
        "prefill": {"tokens": ids.numel(), "seconds": round(prefill_s, 3)},
        "train_step": {
            "tokens": train_ids.numel(),
            "seconds": round(train_s, 3),
            "steps": steps,
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        },
    }


def run(layers: int, batch: int, prompt: int, new_tokens: int, seq: int, steps: int) -> dict:
    """Every measurement, as the JSON written to bench/results/gpu.json."""
    import torch

    from ftray.train.tracking import peak_flops

    with tempfile.TemporaryDirectory(prefix="ftray-bench-gpu-") as tmp:
        params = build_model(Path(tmp), layers)
        model_dir = str(Path(tmp) / "model")
        generate = bench_generate(model_dir, batch, prompt, new_tokens)
        measured = bench_prefill_and_train(model_dir, batch, seq, steps)
    peak = peak_flops("cuda:0")

    def with_rate(entry: dict, tokens: int, seconds: float, flops_per_param: int) -> dict:
        rate = tokens / seconds
        mfu = round(rate * flops_per_param * params / peak, 4) if peak else None
        return {**entry, "tokens_per_s": round(rate, 1), "mfu": mfu}

    prefill, train = measured["prefill"], measured["train_step"]
    return {
        "gpu": torch.cuda.get_device_name(0),
        "peak_bf16_tflops": peak / 1e12 if peak else None,
        "params": params,
        "layers": layers,
        "versions": {"torch": torch.__version__},
        "generate": with_rate(generate, generate["generated_tokens"], generate["seconds"], 2),
        "prefill": with_rate(prefill, prefill["tokens"], prefill["seconds"], 2),
        "train_step": with_rate(train, train["tokens"], train["seconds"], 6),
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write bench/results/gpu.json (or `--out`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=22, help="22: 1.1B parameters")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=256, help="prompt tokens per request")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--seq", type=int, default=1024, help="tokens per row (prefill, train)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench.gpu needs a CUDA GPU; nothing measured, nothing written")
    import transformers

    result = run(args.layers, args.batch, args.prompt, args.new_tokens, args.seq, args.steps)
    result["versions"]["transformers"] = transformers.__version__
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
