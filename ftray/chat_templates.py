"""Chat templates: the one place that gives a tokenizer the job's template (`model.chat_template`).

Base checkpoints (e.g. Llama-3.1-8B) ship no chat template, so the spec names one. Every stage
loads its tokenizer through `ftray.models.load_tokenizer`, which calls `use_chat_template`, so
prepare, the training probe, evaluate, assess, serve and export render a conversation alike.

A named template also fixes the token that ends an assistant turn: the tokenizer's end-of-sequence
token becomes it, so generation stops where training taught the model to stop.
"""

from __future__ import annotations

from ftray.errors import UserError
from ftray.spec.model import CHAT_TEMPLATE_NAMES

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Meta's Llama 3 Instruct format (without its tool-calling branches).
LLAMA3_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and bos_token %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
# HuggingFace's Zephyr format: role tags are plain text, turns end with the model's own EOS.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + "
    "eos_token + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
# name -> (Jinja text, the token that ends a turn; None: the tokenizer's own EOS)
NAMED: dict[str, tuple[str, str | None]] = {
    "chatml": (CHATML_TEMPLATE, "<|im_end|>"),
    "llama3": (LLAMA3_TEMPLATE, "<|eot_id|>"),
    "zephyr": (ZEPHYR_TEMPLATE, None),
}
assert tuple(NAMED) == CHAT_TEMPLATE_NAMES, "the spec's names and the templates must agree"


def use_chat_template(tokenizer, setting: str | None, model: str):
    """Give `tokenizer` (of model `model`) the job's chat template, in place; returns it.

    Raises UserError when neither the tokenizer nor the spec has a template, or when a named
    template's end-of-turn token is not a single token of this tokenizer.
    """
    if setting is None:
        if not tokenizer.chat_template:
            raise UserError(
                f"model.base: {model} ships no chat template (a base model, not an instruct "
                f"one); set model.chat_template to one of {', '.join(NAMED)} or a Jinja "
                "template string."
            )
        return tokenizer
    text, end = NAMED.get(setting, (setting, None))
    if end is not None:
        if len(tokenizer(end, add_special_tokens=False)["input_ids"]) != 1:
            raise UserError(
                f"model.chat_template: {setting!r} ends each turn with {end}, which the "
                f"tokenizer of {model} has no single token for, so generation could not stop "
                f"there; choose {_fitting(tokenizer)}, or a Jinja template whose turns end "
                "with {{ eos_token }}."
            )
        tokenizer.eos_token = end
    tokenizer.chat_template = text
    return tokenizer


def _fitting(tokenizer) -> str:
    """The named templates this tokenizer can end turns with, as a phrase."""
    names = [
        name
        for name, (_, end) in NAMED.items()
        if end is None or len(tokenizer(end, add_special_tokens=False)["input_ids"]) == 1
    ]
    return " or ".join(repr(name) for name in names)
