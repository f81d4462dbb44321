"""Host memory per rank: ZeRO-3 with and without partitioned construction, sharded LoRA vs DDP.

    python -m bench.memory [--steps 2] [--tokens 32]

A random-init Llama of ~340M parameters, built here from a config (no download) and saved
once in bf16, as released checkpoints are, trains in fp32 for a few optimizer steps on 2 gloo
ranks (DS_ACCELERATOR=cpu), through ftray's own engines (`ftray.train.methods.build_engine`),
one run after another, each run in fresh processes:

- `full_zero3_partitioned`: `method: full`, ZeRO-3, as ftray runs it: the model built inside
  `deepspeed.zero.Init`, every weight loaded straight into its partitions;
- `full_zero3_whole`: the same with partitioned construction switched off (the behaviour
  before it): every rank builds the whole fp32 model, then `deepspeed.initialize` partitions it;
- `lora_zero3`: `method: lora, sharding: zero3` (base and adapter partitioned);
- `lora_ddp`: `method: lora, sharding: none` (a whole base on every rank, DDP).

Per rank it reports the peak resident set (the kernel's VmHWM: private memory plus the
mapped pages of the safetensors file) and the peak private memory (RssAnon, sampled every
10 ms) over three nested phases, each from the start of construction:

- `load`: the model built and its weights loaded (`ftray.models.load_model`); the phase
  partitioned construction changes, and on a GPU node the one that holds the weights in host
  memory (under zero.Init each partition goes straight to the device);
- `construction`: + `deepspeed.initialize` (or the DDP wrap), ZeRO's flat fp32 partitions and
  optimizer state included: on this CPU-only machine they are host memory, on a GPU node not;
- `run`: + the steps.

Also: the memory the process held after imports, and the parameter bytes the rank holds.
Each run's numbers are its worst rank's; ratios compare each run with its baseline. Results
go to bench/results/memory.json; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "memory.json"
WORLD = 2
# ~340M parameters: 24 layers of 1024, a 32k vocabulary with tied embeddings
MODEL = {
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "vocab_size": 32000,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}
RUNS = {
    "full_zero3_partitioned": {"method": "full", "deepspeed": {"stage": 3}},
    "full_zero3_whole": {"method": "full", "deepspeed": {"stage": 3}},
    "lora_zero3": {"method": "lora", "sharding": "zero3"},
    "lora_ddp": {"method": "lora", "sharding": "none"},
}


def build_model(out: Path) -> int:
    """Save the random-init model to `out` in bf16; return its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**MODEL))
    model.to(torch.bfloat16).save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


class _Peak:
    """RssAnon sampled on a thread; the peak since the last `reset`."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status("RssAnon"))
            time.sleep(0.01)

    def reset(self) -> int:
        """The peak so far; start a new one."""
        peak, self.peak = max(self.peak, _status("RssAnon")), 0
        return peak


def _status(key: str) -> int:
    """A /proc/self/status memory line, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux ≥ 4.0)


class _Context:
    """The bits of a `WorkerContext` the engines read: CPU, DDP over the gloo group."""

    device = "cpu"

    def wrap_model(self, model, move: bool = True):
        import torch

        return torch.nn.parallel.DistributedDataParallel(model)


def _rank(rank: int, name: str, model_dir: str, steps: int, tokens: int, port: int, out: str):
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "DS_ACCELERATOR": "cpu",
        }
    )
    import deepspeed  # noqa: F401  (imported before measuring: its import is not the model)
    import torch
    import torch.distributed as dist
    import transformers  # noqa: F401

    import ftray.train.methods as methods
    from ftray.spec import TrainSpec

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    if name == "full_zero3_whole":  # the baseline: whole weights on every rank, then partitioned
        methods.partitioned_construction = lambda config: None
    spec = TrainSpec.model_validate(
        {
            **RUNS[name],
            "batch_size": WORLD,
            "lr": 1e-4,
            "warmup_ratio": 0,
            "lora": {"r": 16, "dropout": 0.0},
            "scaling": {"num_workers": WORLD},
        }
    )
    sampler = _Peak()
    load = {}
    load_model = methods.load_model

    def measured_load(*args, **kwargs):  # the engine's own call, its peak recorded
        model = load_model(*args, **kwargs)
        load.update(peak_rss=_status("VmHWM"), peak_private=sampler.peak)
        return model

    methods.load_model = measured_load
    dist.barrier()
    imported = _status("VmRSS")
    _reset_hwm()
    sampler.reset()
    started = time.perf_counter()
    engine = methods.build_engine(spec, model_dir, "float32", _Context(), steps)
    construction = {
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss": _status("VmHWM"),
        "peak_private": sampler.reset(),
    }
    held = sum(
        (p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()) * p.element_size()
        for p in engine.module.parameters()
    )
    generator = torch.Generator().manual_seed(rank)
    ids = torch.randint(0, MODEL["vocab_size"], (1, tokens), generator=generator)
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    losses = []
    for _ in range(steps):
        items = torch.tensor(float(WORLD * (tokens - 1)))
        losses.append(round(float(engine.micro_step(batch, True, items, WORLD)), 4))
    result = {
        "rank": rank,
        "after_imports": imported,
        "load": load,
        "construction": construction,
        # VmHWM spans construction and steps; the private peak is the steps' own
        "run": {
            "peak_rss": _status("VmHWM"),
            "peak_private": max(sampler.reset(), construction["peak_private"]),
        },
        "parameter_bytes": held,
        "losses": losses,
    }
    Path(out, f"{name}-{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def run(name: str, model_dir: str, steps: int, tokens: int) -> list[dict]:
    """One run on `WORLD` fresh processes; each rank's measurements."""
    import torch.multiprocessing as mp

    from ftray.runtime import free_loopback_port

    with tempfile.TemporaryDirectory() as out:
        args = (name, model_dir, steps, tokens, free_loopback_port(), out)
        mp.start_processes(_rank, args=args, nprocs=WORLD, start_method="spawn")
        return [json.loads(Path(out, f"{name}-{r}.json").read_text()) for r in range(WORLD)]


def _gib(value: float) -> float:
    return round(value / 2**30, 3)


def _summary(ranks: list[dict]) -> dict:
    """The worst rank's numbers, in GiB."""

    def worst(path: tuple[str, ...]) -> int:
        values = []
        for rank in ranks:
            value = rank
            for key in path:
                value = value[key]
            values.append(value)
        return max(values)

    return {
        "after_imports_gib": _gib(worst(("after_imports",))),
        "load_peak_rss_gib": _gib(worst(("load", "peak_rss"))),
        "load_peak_private_gib": _gib(worst(("load", "peak_private"))),
        "construction_peak_rss_gib": _gib(worst(("construction", "peak_rss"))),
        "construction_peak_private_gib": _gib(worst(("construction", "peak_private"))),
        "construction_seconds": worst(("construction", "seconds")),
        "run_peak_rss_gib": _gib(worst(("run", "peak_rss"))),
        "run_peak_private_gib": _gib(worst(("run", "peak_private"))),
        "parameter_gib_per_rank": _gib(worst(("parameter_bytes",))),
        "losses_rank0": ranks[0]["losses"],
    }


_COMPARED = (
    "load_peak_rss_gib",
    "load_peak_private_gib",
    "construction_peak_rss_gib",
    "construction_peak_private_gib",
    "run_peak_rss_gib",
    "run_peak_private_gib",
    "parameter_gib_per_rank",
)


def _ratios(runs: dict, name: str, baseline: str) -> dict:
    return {
        key.removesuffix("_gib"): round(runs[name][key] / runs[baseline][key], 3)
        for key in _COMPARED
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--only", nargs="*", choices=list(RUNS), default=list(RUNS))
    args = parser.parse_args()

    import deepspeed
    import torch

    with tempfile.TemporaryDirectory(prefix="ftray-bench-memory-") as tmp:
        params = build_model(Path(tmp))
        runs = {}
        for name in args.only:
            print(f"{name} ...", flush=True)
            ranks = run(name, tmp, args.steps, args.tokens)
            runs[name] = {**_summary(ranks), "ranks": ranks}
            print(json.dumps(_summary(ranks)), flush=True)
    results = {
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, deepspeed "
        f"{deepspeed.__version__}, {WORLD} gloo ranks (DS_ACCELERATOR=cpu), fp32",
        "model": {"parameters": params, "fp32_gib": _gib(4 * params), **MODEL},
        "steps": args.steps,
        "tokens_per_step_per_rank": args.tokens,
        "runs": runs,
    }
    if {"full_zero3_partitioned", "full_zero3_whole"} <= runs.keys():
        results["ratio_partitioned_vs_whole"] = _ratios(
            runs, "full_zero3_partitioned", "full_zero3_whole"
        )
    if {"lora_zero3", "lora_ddp"} <= runs.keys():
        results["ratio_lora_zero3_vs_ddp"] = _ratios(runs, "lora_zero3", "lora_ddp")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
