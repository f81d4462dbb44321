"""Chat formatting and completion-only labels: the one place that decides what a model sees.

Training, evaluation and serving all build prompts with `render_prompt`, so the tuned model is
asked exactly the way it was taught.
"""

from __future__ import annotations

IGNORE_INDEX = -100


def messages_for(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    """The chat messages of a prompt, with the job's system prompt first."""
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*head, {"role": "user", "content": prompt}]


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The chat template applied to `messages`, ending where the assistant's answer starts."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tokenize_example(tokenizer, messages: list[dict[str, str]], completion: str) -> dict:
    """input_ids and labels for one example; labels cover only the completion.

    The prompt and the completion are tokenized separately and joined, so the label boundary is
    exact and the prompt tokens match what generation feeds the model.
    """
    prompt = render_prompt(tokenizer, messages)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": completion}], tokenize=False
    )
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently inside a full chat")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        "prompt_tokens": len(prompt_ids),
    }
