"""The serve stage's spec: the Ray Serve app, its engine, limits, batching, caching and access."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, model_validator

from ftray.spec._base import SpecRuleError, _Section


class AutoscalingSpec(_Section):
    """Ray Serve autoscaling of the model's replicas."""

    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas (0: scale to zero).")
    max_replicas: int = Field(default=2, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(
        default=8, gt=0, description="Requests in flight per replica the autoscaler aims for."
    )

    @model_validator(mode="after")
    def _min_within_max(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise SpecRuleError(
                "min_replicas",
                self.min_replicas,
                f"more than max_replicas ({self.max_replicas})",
                "set min_replicas <= max_replicas",
            )
        return self


class ServeRetrievalSpec(_Section):
    """Retrieval in the Serve app: which index version answers, and for which models."""

    index: str = Field(
        default="latest",
        description="The index version the replicas search: 'latest' follows each new "
        "`ftray index` (no restart), or an index id to pin one.",
    )
    refresh_s: float = Field(
        default=30,
        gt=0,
        description="How often a replica looks for a newer index when `index` is 'latest'.",
    )
    base_k: int = Field(
        default=0,
        ge=0,
        le=32,
        description="Chunks retrieved for chat requests to the base model (0: none). A "
        "registry model trained with data.retrieval always gets its dataset's k chunks.",
    )


class RolloutSpec(_Section):
    """When `ftray models watch` promotes an automatic canary or rolls it back
    (`ftray models canary --auto`), on the online counts of the two arms since it began."""

    min_requests: int = Field(
        default=200,
        ge=10,
        description="Requests each arm must answer (or fail) before the canary is promoted: "
        "the fixed horizon of the comparison.",
    )
    max_error_rate_increase: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Roll back when the canary's 5xx rate exceeds production's by more than "
        "this (absolute) and a one-sided two-proportion test says so at `alpha`; checked from "
        "20 requests per arm on.",
    )
    alpha: float = Field(
        default=0.05, gt=0, lt=1, description="Significance of the error-rate test."
    )
    max_latency_ratio: float = Field(
        default=1.5,
        gt=1,
        description="Roll back when the canary's p95 latency exceeds production's by this "
        "factor (at the horizon).",
    )
    min_ratings: int = Field(
        default=30, ge=1, description="Ratings each arm needs before ratings are compared."
    )
    max_rating_drop: float = Field(
        default=0.25,
        ge=0,
        description="Roll back when the canary's mean rating (1-5) is below production's by "
        "more than this, once both have `min_ratings`.",
    )
    rollback_on_alert: bool = Field(
        default=True,
        description="Roll back when the latest `ftray monitor` run alerts on the canary.",
    )


class VllmSpec(_Section):
    """Settings of the vLLM engine (serve.engine: vllm); ignored by the transformers engine."""

    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        description="GPUs one replica's model is sharded over (tensor parallelism); at most "
        "serve.gpus_per_replica. 1 on CPU.",
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Share of each GPU's memory vLLM takes for weights and KV cache; lower it "
        "when replicas share a GPU (a fractional serve.gpus_per_replica).",
    )
    cpu_kv_cache_gib: float = Field(
        default=2,
        gt=0,
        description="On CPU: memory for the KV cache per replica, in GiB "
        "(vLLM's VLLM_CPU_KVCACHE_SPACE).",
    )
    max_lora_rank: Literal[8, 16, 32, 64, 128, 256] = Field(
        default=64,
        description="Largest LoRA rank (train.lora.r) an adapter may have; vLLM sets memory "
        "aside for adapters of this rank.",
    )
    max_num_seqs: int | None = Field(
        default=None,
        ge=1,
        description="Most sequences generated together (continuous batching). Unset: vLLM's "
        "default.",
    )


class ServeSpec(_Section):
    """The serve stage (Ray Serve, OpenAI-compatible API)."""

    engine: Literal["transformers", "vllm"] = Field(
        default="transformers",
        description="What generates answers inside each replica. 'transformers': the model "
        "with peft adapters, concurrent requests batched (serve.max_batch_size). 'vllm': one "
        "vLLM engine per replica with continuous batching, LoRA adapters, prefix caching "
        "and, when data.output_schema is set, JSON answers constrained to it; needs vLLM "
        "installed where the replicas run (README: Serve).",
    )
    vllm: VllmSpec = Field(default_factory=VllmSpec, description="The vLLM engine's settings.")
    retrieval: ServeRetrievalSpec = Field(
        default_factory=ServeRetrievalSpec,
        description="Retrieval before generation (for models trained with data.retrieval).",
    )
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec,
        description="Automatic canary decisions (`ftray models canary --auto`).",
    )
    host: str = Field(default="127.0.0.1", description="HTTP bind address of the Serve proxy.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the Serve proxy.")
    direct_ingress: bool = Field(
        default=False,
        description="`ftray serve` also has each replica answer HTTP itself, on `host` and a "
        "port of its own that Ray Serve picks (from 30000; printed, and listed in Serve's "
        "target groups), skipping the proxy hop: a cache hit takes about 0.4× the time "
        "(README: Benchmarks). The proxy on `port` still serves every replica; a replica's "
        "own port serves only that replica and changes when the replica is replaced. Serve "
        "must not already be running on the cluster (its controller needs it from the "
        "start); a Serve config (RayService) ignores it. Ray Serve's "
        "RAY_SERVE_ENABLE_DIRECT_INGRESS.",
    )
    max_new_tokens: int = Field(default=32, ge=1, description="Default completion token limit.")
    max_tokens_limit: int = Field(
        default=512, ge=1, description="Largest `max_tokens` a request may ask for (else 400)."
    )
    max_prompt_tokens: int = Field(
        default=2048,
        ge=1,
        description="Longest prompt accepted, in tokens after the chat template (else 400).",
    )
    max_prompt_chars: int = Field(
        default=65_536,
        ge=1,
        description="Longest prompt accepted, in characters (all messages together), checked "
        "before tokenizing (else 400).",
    )
    max_request_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body accepted (else 413)."
    )
    generation_timeout_s: float = Field(
        default=300,
        gt=0,
        description="Longest one generation (a batch or a stream) runs before it stops; a "
        "stream also gives up after this long without a token. /ready answers 503 once a "
        "generation or model load has held the replica's model for over twice this long.",
    )
    example_prompt: str = Field(
        default="Hello!",
        description="The request `ftray serve` sends through the served model after start-up.",
    )
    quantization: Literal["auto", "none", "int8", "int4"] = Field(
        default="auto",
        description="The base model's weights in each replica: as model.dtype ('none'), or "
        "quantized by bitsandbytes to 8-bit ('int8') or 4-bit ('int4', with train.qlora's "
        "settings when the job trains QLoRA with 4 bits, else NF4); adapters run on top "
        "unchanged. 'auto': a QLoRA job's base quantized as it was trained (train.qlora), "
        "else 'none'. Evaluation loads the base the same way.",
    )
    num_replicas: int = Field(
        default=1, ge=1, description="Replicas of the model (ignored when autoscaling is set)."
    )
    autoscaling: AutoscalingSpec | None = Field(
        default=None, description="Scale replicas with load instead of a fixed num_replicas."
    )
    cpus_per_replica: float = Field(default=1, gt=0, description="CPUs reserved per replica.")
    gpus_per_replica: float = Field(
        default=0,
        ge=0,
        description="GPUs reserved per replica; the model loads on them (0: CPU; a fraction "
        "shares a GPU; 2 or more shard it across them).",
    )
    shadow_max_in_flight: int = Field(
        default=4,
        ge=1,
        description="Shadow generations (`ftray models shadow`) a replica runs at once; a "
        "mirrored request beyond them is skipped (counted in ray_ftray_shadow_skipped_total), "
        "so a shadow never queues up behind real traffic without bound.",
    )
    max_adapters_per_replica: int = Field(
        default=8, ge=1, description="Adapters (or full models) kept loaded per replica, LRU."
    )
    max_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Dynamic batching: most requests generated together. Unset: 8 on CPU, 32 "
        "with a GPU.",
    )
    batch_wait_timeout_s: float = Field(
        default=0.01, ge=0, description="Dynamic batching: how long a batch waits to fill."
    )
    cache_entries: int = Field(
        default=1024, ge=0, description="Completion cache size per replica (0 disables it)."
    )
    cache_ttl_s: float = Field(default=600, gt=0, description="Completion cache entry lifetime.")
    api_key_env: str | None = Field(
        default=None,
        description="Name of an environment variable holding the bearer token clients must "
        "send (`Authorization: Bearer …`); unset: no authentication. The token itself never "
        "goes in the spec.",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="Allow a `host` other than loopback without `api_key_env`: anyone who "
        "reaches the port can use the model. Leave false unless something in front "
        "(a gateway, a private network) authenticates.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ServeSpec:
        if self.engine == "vllm" and self.vllm.tensor_parallel_size > max(1, self.gpus_per_replica):
            raise SpecRuleError(
                "vllm.tensor_parallel_size",
                self.vllm.tensor_parallel_size,
                f"more than the GPUs of a replica (serve.gpus_per_replica: "
                f"{self.gpus_per_replica:g})",
                "raise serve.gpus_per_replica to at least the tensor parallel size, or lower it",
            )
        if self.engine == "vllm" and self.quantization in ("int8", "int4"):
            raise SpecRuleError(
                "quantization",
                self.quantization,
                "bitsandbytes quantization is served by the transformers engine only",
                "use serve.engine: transformers, or serve.quantization: none",
            )
        if self.max_new_tokens > self.max_tokens_limit:
            raise SpecRuleError(
                "max_new_tokens",
                self.max_new_tokens,
                f"above max_tokens_limit ({self.max_tokens_limit}), the most a request may ask",
                "lower serve.max_new_tokens or raise serve.max_tokens_limit",
            )
        if not (_is_loopback(self.host) or self.api_key_env or self.allow_unauthenticated):
            raise SpecRuleError(
                "host",
                self.host,
                "a non-loopback address without an API key serves the model to anyone who "
                "reaches the port",
                "set serve.api_key_env to the name of an environment variable holding a "
                "token, or serve.allow_unauthenticated: true if something in front "
                "authenticates, or bind 127.0.0.1",
            )
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface
