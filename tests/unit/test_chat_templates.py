"""Base models without a chat template (`model.chat_template`) and multi-turn loss masks
(`data.train_on`), without Ray: prepare's record checker, the training loop, the evaluation
generator and the serving engine each load the template-less base with the job's template."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from ftray.chat_templates import CHATML_TEMPLATE, LLAMA3_TEMPLATE
from ftray.data.records import CheckRecords
from ftray.data.tokenize import IGNORE_INDEX
from ftray.errors import UserError
from ftray.models import load_tokenizer, resolve_model
from ftray.spec import DataSpec, ModelSpec
from ftray.store import Store

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "where is my card?"},
    {"role": "assistant", "content": "on its way"},
    {"role": "user", "content": "thanks"},
    {"role": "assistant", "content": "any time"},
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return resolve_model(ModelSpec(base="tiny"), Store(str(tmp_path_factory.mktemp("s")), "t"))


@pytest.fixture(scope="module")
def base_dir(tiny_dir, tmp_path_factory):
    """The tiny model as base checkpoints ship: the same weights and tokenizer, no template."""
    folder = tmp_path_factory.mktemp("base") / "tiny-base"
    shutil.copytree(tiny_dir, folder, ignore=shutil.ignore_patterns("chat_template.jinja"))
    return str(folder)


def _record(fields: dict) -> dict:
    raw = json.dumps(fields)
    return {"source": "x.jsonl", "row": 1, "read": 1, "order": 1, "origin": "train"} | {
        "fields": raw,
        "raw": raw,
        "error": None,
        "blank": False,
    }


def test_a_base_without_template_is_refused_naming_the_setting(base_dir, tmp_path):
    with pytest.raises(UserError, match=r"ships no chat template.*set model\.chat_template"):
        load_tokenizer(base_dir)
    # prepare says so before any Ray work starts
    from ftray.data.prepare import prepare
    from ftray.progress import Progress

    (tmp_path / "d.jsonl").write_text('{"prompt": "hi", "completion": "hello"}\n')
    data = DataSpec(sources=[{"path": str(tmp_path / "d.jsonl")}])
    with pytest.raises(UserError, match=r"model\.chat_template"):
        prepare(data, ModelSpec(base=base_dir), Store(str(tmp_path / "store"), "t"), Progress())


def test_a_named_template_renders_and_stops_as_the_instruct_tokenizer_does(tiny_dir, base_dir):
    instruct = load_tokenizer(tiny_dir)  # the tiny tokenizer ships ChatML itself
    base = load_tokenizer(base_dir, "chatml")
    assert base.chat_template == CHATML_TEMPLATE and base.eos_token == "<|im_end|>"
    render = {"tokenize": False, "add_generation_prompt": True}
    assert base.apply_chat_template(CHAT, **render) == instruct.apply_chat_template(CHAT, **render)
    jinja = load_tokenizer(base_dir, "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert jinja.apply_chat_template(CHAT[1:2], tokenize=False) == "hi"
    zephyr = load_tokenizer(base_dir, "zephyr")
    assert zephyr.eos_token == "<|im_end|>", "zephyr ends turns with the tokenizer's own EOS"
    assert zephyr.apply_chat_template(CHAT[1:3], tokenize=False) == (
        "<|user|>\nhi<|im_end|>\n<|assistant|>\nhello<|im_end|>\n"
    )


def test_a_template_whose_end_of_turn_is_not_one_token_is_refused(base_dir):
    with pytest.raises(UserError, match=r"<\|eot_id\|>.*choose 'chatml' or 'zephyr'"):
        load_tokenizer(base_dir, "llama3")


def test_llama3_template_renders_meta_format():
    from jinja2 import Template

    text = Template(LLAMA3_TEMPLATE).render(
        messages=CHAT[1:3], bos_token="<|begin_of_text|>", add_generation_prompt=False
    )
    assert text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nhello<|eot_id|>"
    )


def _assistant_spans(text: str, answers: list[str]) -> list[tuple[int, int]]:
    """Character spans of each answer's text plus its end-of-turn marker in ChatML `text`."""
    spans, start = [], 0
    for answer in answers:
        head = text.index("<|im_start|>assistant\n" + answer, start)
        begin = head + len("<|im_start|>assistant\n")
        end = begin + len(answer + "<|im_end|>\n")
        spans.append((begin, end))
        start = end
    return spans


@pytest.mark.parametrize("train_on", ["all_assistant", "last_assistant"])
def test_multi_turn_labels_cover_the_assistant_turns_and_nothing_else(base_dir, train_on):
    """Token by token: a token is a label exactly when it lies inside a trained answer."""
    spec = DataSpec(sources=[{"path": "x"}], messages_field="chat", train_on=train_on)
    checker = CheckRecords(spec.model_dump(mode="json"), base_dir, "chatml")
    out = checker.one(_record({"chat": CHAT}))
    assert out["rule"] == "" and out["completion"] == "any time"
    tokenizer = checker.tokenizer
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert tokenizer.decode(out["input_ids"]) == text, "the tokens are the whole chat"
    answers = ["hello", "on its way", "any time"]
    trained = answers if train_on == "all_assistant" else answers[-1:]
    spans = _assistant_spans(text, answers)[-len(trained) :]
    offset = 0
    for token, label in zip(out["input_ids"], out["labels"], strict=True):
        piece = tokenizer.decode([token])
        inside = any(begin <= offset and offset + len(piece) <= end for begin, end in spans)
        assert label == (token if inside else IGNORE_INDEX), (offset, piece, label)
        offset += len(piece)
    labelled = tokenizer.decode([t for t in out["labels"] if t != IGNORE_INDEX])
    assert labelled == "".join(f"{answer}<|im_end|>\n" for answer in trained)


def test_the_loop_trains_and_probes_on_a_base_with_the_job_template(base_dir, tmp_path):
    from ftray.train.config import ProbeConfig
    from ftray.train.context import LocalContext
    from ftray.train.loop import train_loop
    from tests.unit.test_train_loop import _config, _dataset, _generation_task, _probe_rows, _spec

    _dataset(tmp_path / "ds", load_tokenizer(base_dir, "chatml"), 16)
    probe = ProbeConfig(task=_generation_task(), examples=_probe_rows(2), max_new_tokens=2)
    config = _config(base_dir, _spec(epochs=1)) | {"probe": probe.model_dump(mode="json")}
    with pytest.raises(UserError, match=r"model\.chat_template"):
        train_loop(config, LocalContext(str(tmp_path / "ds"), str(tmp_path / "no")))
    ctx = LocalContext(str(tmp_path / "ds"), str(tmp_path / "ckpt"))
    final = train_loop(config | {"chat_template": "chatml"}, ctx)
    assert final["step"] == 2 and final["best_task_metric"] is not None


def test_evaluation_and_serving_render_with_the_job_template(tiny_dir, base_dir):
    """The generator and the engine on the template-less base answer exactly as on the tiny
    model, whose tokenizer ships the same template (same weights, greedy decoding)."""
    from ftray.evaluate.generate import _Generate
    from ftray.serve.engine import Engine, Request

    batch = pd.DataFrame({"messages": [json.dumps(CHAT[:4]), json.dumps(CHAT[:2])]})
    answers = {}
    for name, folder, template in (("base", base_dir, "chatml"), ("instruct", tiny_dir, None)):
        options = {"few_shot": [], "temperature": 0.0, "samples": 1, "seed": 0}
        arms = {"base": {"kind": "base"}}
        generator = _Generate(
            model_dir=folder,
            dtype="float32",
            gpus=0,
            attention="sdpa",
            quantization=None,
            arms=arms,
            max_new_tokens=4,
            probe_text=None,
            chat_template=template,
            **options,
        )
        engine = Engine(folder, "float32", chat_template=template)
        prompt = engine.render(CHAT[:4])
        served = engine.generate([Request(None, prompt, 4)])
        answers[name] = (list(generator(batch)["base_output"]), prompt, served[0]["text"])
    assert answers["base"] == answers["instruct"]
    assert answers["base"][1].endswith("<|im_start|>assistant\n")
    with pytest.raises(UserError, match=r"model\.chat_template"):
        Engine(base_dir, "float32")
