"""`ftray export` through the CLI: a registered LoRA adapter merged into its base answers as
the base plus the adapter does, loaded by plain transformers (no peft, no ftray)."""

from __future__ import annotations

import json

import pytest
import torch

from ftray.cli import main
from ftray.models import add_lora, load_model, load_tokenizer, resolve_model
from ftray.registry import register
from ftray.specload import load_spec
from ftray.store import Store

PROMPTS = ["I lost my card yesterday", "What is the exchange rate?", "Cancel my transfer"]


@pytest.fixture
def job(tmp_path):
    overrides = [f"storage={tmp_path / 'store'}"]
    spec = load_spec("jobs/tiny.yaml", overrides)
    return spec, Store(spec.storage, spec.project), ["jobs/tiny.yaml", "--set", *overrides]


def _register(
    store, tmp_path, model, kind: str, base_model: str = "tiny", chat_template=None
) -> str:
    folder = tmp_path / f"weights-{kind}-{base_model.replace('/', '_')}"
    model.save_pretrained(folder)
    card = register(
        store,
        run_id=f"run-{kind}-{base_model}",
        weights_uri=str(folder),
        kind=kind,
        dataset_id="ds-0",
        eval_id="eval-0",
        metrics={},
        gate={"passed": True, "rules": []},
        spec_hash="0",
        base_model=base_model,
        system_prompt=None,
        chat_template=chat_template,
    )
    return card["model_id"]


def _logits(model, tokenizer) -> torch.Tensor:
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**encoded).logits


def test_a_merged_adapter_answers_as_base_plus_adapter(job, tmp_path, capsys):
    spec, store, args = job
    base_dir = resolve_model(spec.model, store)
    tokenizer = load_tokenizer(base_dir)
    base_logits = _logits(load_model(base_dir, "float32"), tokenizer)
    adapted = add_lora(load_model(base_dir, "float32"), spec.train.lora)
    torch.manual_seed(0)
    for name, weight in adapted.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: give the adapter an effect to merge
            torch.nn.init.normal_(weight, std=0.2)
    adapted.eval()
    expected = _logits(adapted, tokenizer)
    assert not torch.allclose(expected, base_logits, atol=1e-3), "the adapter changes answers"
    model_id = _register(store, tmp_path, adapted, "adapter")

    out = tmp_path / "exported"
    assert main(["export", *args, "--model", model_id, "--out", str(out)]) == 0
    assert f"exported to {out}" in capsys.readouterr().out
    assert not (out / "adapter_config.json").exists(), "a plain model, not an adapter"
    assert json.loads((out / "ftray_model_card.json").read_text())["model_id"] == model_id
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(out)
    exported_tokenizer = AutoTokenizer.from_pretrained(out)
    assert exported_tokenizer.chat_template == tokenizer.chat_template
    exported_tokenizer.padding_side, exported_tokenizer.pad_token = "left", tokenizer.pad_token
    assert torch.allclose(_logits(merged, exported_tokenizer), expected, atol=1e-4)

    # a full fine-tune is exported as it is
    full = load_model(base_dir, "float32")
    with torch.no_grad():
        full.lm_head.weight.mul_(1.5)
    full_id = _register(store, tmp_path, full, "model")
    assert main(["export", *args, "--model", full_id, "--out", str(tmp_path / "full")]) == 0
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    assert torch.allclose(_logits(again, tokenizer), _logits(full, tokenizer), atol=1e-5)


def test_export_refuses_what_it_cannot_write(job, tmp_path, capsys):
    spec, store, args = job
    resolve_model(spec.model, store)
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("not ours")

    assert main(["export", *args, "--out", str(out)]) == 2
    assert "no model is in production yet" in capsys.readouterr().err
    assert main(["export", *args, "--model", "model-nope", "--out", str(out)]) == 2
    assert "no model 'model-nope'" in capsys.readouterr().err

    model = load_model(resolve_model(spec.model, store), "float32")
    other = _register(store, tmp_path, model, "model", base_model="some/other-model")
    assert main(["export", *args, "--model", other, "--out", str(tmp_path / "new")]) == 2
    assert "was trained on model.base 'some/other-model'" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()

    tiny = _register(store, tmp_path, model, "model")
    assert main(["export", *args, "--model", tiny, "--out", str(out)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"], "nothing written into it"


def test_a_base_model_exports_with_the_template_it_was_tuned_with(job, tmp_path, capsys):
    """A base checkpoint ships no template: the exported tokenizer carries the job's, and
    stops at its end of turn, so the folder chats with no ftray."""
    import shutil

    from ftray.chat_templates import CHATML_TEMPLATE

    _, store, args = job
    tiny = resolve_model(load_spec("jobs/tiny.yaml", args[3:]).model, store)
    base = tmp_path / "tiny-base"
    shutil.copytree(tiny, base, ignore=shutil.ignore_patterns("chat_template.jinja"))
    model = add_lora(load_model(str(base), "float32"), load_spec("jobs/tiny.yaml").train.lora)
    model_id = _register(store, tmp_path, model, "adapter", str(base), chat_template="chatml")
    on_base = [*args, "--set", f"model.base={base}"]

    out = tmp_path / "exported"
    assert main(["export", *on_base, "--model", model_id, "--out", str(out)]) == 2
    assert "was trained with model.chat_template 'chatml'" in capsys.readouterr().err
    with_template = [*on_base, "--set", "model.chat_template=chatml"]
    assert main(["export", *with_template, "--model", model_id, "--out", str(out)]) == 0
    from transformers import AutoTokenizer

    exported = AutoTokenizer.from_pretrained(out)
    assert exported.chat_template == CHATML_TEMPLATE and exported.eos_token == "<|im_end|>"
