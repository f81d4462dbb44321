"""Chat formatting and assistant-only labels: the one place that decides what a model sees.

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


def tokenize_example(
    tokenizer,
    messages: list[dict[str, str]],
    completion: str,
    train_on: str = "all_assistant",
) -> dict:
    """input_ids and labels for one example; labels cover only what the assistant says.

    `train_on`: 'all_assistant' labels every assistant turn of the chat (the earlier ones in
    `messages` too), 'last_assistant' only `completion`. The chat is rendered once per
    assistant turn, and each turn's text is tokenized apart from the text before it, so the
    label boundaries are exact and a prompt's tokens match what generation feeds the model.
    """
    chat = [*messages, {"role": "assistant", "content": completion}]
    first_user = next(i for i, m in enumerate(chat) if m["role"] == "user")
    # an assistant turn before any user turn (a greeting) is context, not an answer
    turns = [i for i, m in enumerate(chat) if m["role"] == "assistant" and i > first_user]
    if train_on == "last_assistant":
        turns = turns[-1:]
    input_ids: list[int] = []
    labels: list[int] = []
    done = ""  # the text tokenized so far
    for turn in turns:
        prompt = render_prompt(tokenizer, chat[:turn])
        full = tokenizer.apply_chat_template(chat[: turn + 1], tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError("the chat template renders a turn differently inside a longer chat")
        context = tokenizer(prompt[len(done) :], add_special_tokens=False)["input_ids"]
        answer = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        input_ids += context + answer
        labels += [IGNORE_INDEX] * len(context) + answer
        done = full
    return {"input_ids": input_ids, "labels": labels}
