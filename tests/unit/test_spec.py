"""The job spec: defaults, overrides, and the message every kind of bad spec must give."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from ftray.cli import main
from ftray.spec import JobSpec
from ftray.specload import SpecError, load_spec, spec_hash, validate_spec

GOOD = {
    "project": "demo",
    "model": {"base": "tiny"},
    "data": {"sources": [{"path": "data.csv"}], "labels": ["a", "b"]},
    "train": {"batch_size": 4, "scaling": {"num_workers": 2}},
}


def _with(path: str, value) -> dict:
    """GOOD with the value at a dotted path replaced (or removed when value is DELETE)."""
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()

# (spec, the YAML path the problem must name, text the message must contain)
BAD_SPECS = [
    (_with("project", DELETE), "project", "required key is missing"),
    (_with("project", "Bad Name!"), "project", "match"),
    (_with("model", DELETE), "model", "required key is missing"),
    (_with("model.base", DELETE), "model.base", "required key is missing"),
    (_with("model.dtype", "fp8"), "model.dtype", "one of"),
    (_with("model.baes", "x"), "model.baes", "did you mean `base`"),
    (_with("model.chat_template", "chatlm"), "model.chat_template", "one of chatml, llama3"),
    (_with("model.chat_template", "{{ junk"), "model.chat_template", "not a valid Jinja template"),
    (_with("data.train_on", "all"), "data.train_on", "one of"),
    (_with("data.sources", []), "data.sources", "at least 1 item"),
    (_with("data.sources", [{"pth": "x.csv"}]), "data.sources.0.pth", "did you mean `path`"),
    (_with("data.sources.0.format", "xlsx"), "data.sources.0.format", "one of"),
    (_with("data.eval_fraction", 1.5), "data.eval_fraction", "less than 1"),
    (_with("data.eval_fraction", 0), "data.eval_fraction", "greater than 0"),
    (_with("data.max_seq_len", 2), "data.max_seq_len", "greater than or equal to 8"),
    (_with("data.labels", "a,b"), "data.labels", "valid list"),
    (_with("data.prompt_feild", "q"), "data.prompt_feild", "did you mean `prompt_field`"),
    (_with("train.method", "rlhf"), "train.method", "one of"),
    (_with("train.lr", -1), "train.lr", "greater than 0"),
    (_with("train.lr", "fast"), "train.lr", "valid number"),
    (_with("train.epochs", 0), "train.epochs", "greater than or equal to 1"),
    (_with("train.batch_size", 5), "train.batch_size", "not a multiple of scaling.num_workers"),
    (_with("train.micro_batch_size", 3), "train.micro_batch_size", "whole number of accum"),
    (_with("train.qlora.bits", 2), "train.qlora.bits", "4 or 8"),
    (
        _with("train.deepspeed", {"stage": 2, "offload_params": True}),
        "train.deepspeed.offload_params",
        "needs ZeRO stage 3",
    ),
    (
        _with("train", {"method": "qlora", "sharding": "zero3", "batch_size": 4}),
        "train.sharding",
        "bitsandbytes",
    ),
    (
        _with("train", {"method": "full", "sharding": "zero3", "batch_size": 4}),
        "train.sharding",
        "train.deepspeed.stage: 3",
    ),
    (
        _with("train", {"method": "dpo", "sharding": "zero3", "batch_size": 4}),
        "train.sharding",
        "set train.sharding: none",
    ),
    (_with("train.sharding", "fsdp"), "train.sharding", "one of"),
    (_with("wandb.mode", "cloud"), "wandb.mode", "one of"),
    (
        _with("sweep", {"parameters": {"data.eval_fraction": {"type": "grid", "values": [0.1]}}}),
        "sweep.parameters",
        "is not a train setting",
    ),
    (
        _with("sweep", {"parameters": {"train.lora": {"type": "choice", "values": [{}]}}}),
        "sweep.parameters",
        "names a section",
    ),
    (
        _with("sweep", {"parameters": {"train.lr": {"type": "loguniform", "low": 0, "high": 1}}}),
        "sweep.parameters.train.lr.low",
        "above 0",
    ),
    (_with("train.scaling.num_workers", 0), "train.scaling.num_workers", "greater than or equal"),
    (_with("train.lora.r", 0), "train.lora.r", "greater than or equal to 1"),
    (_with("train.lora.dropout", 1.0), "train.lora.dropout", "less than 1"),
    (_with("train.learning_rate", 1e-4), "train.learning_rate", "allowed here:"),
    (_with("eval.metrics", ["bleu"]), "eval.metrics.0", "one of"),
    (_with("eval.max_new_tokens", 0), "eval.max_new_tokens", "greater than or equal to 1"),
    (
        {**GOOD, "data": {"sources": [{"path": "d.csv"}]}, "eval": {"task": "classification"}},
        "eval.task",
        "needs data.labels",
    ),
    (_with("eval.primary_metric", "rouge_l"), "eval.primary_metric", "not among the metrics"),
    (_with("eval.incumbent", "yesterday"), "eval.incumbent", "match"),
    (_with("eval.gate.max_regression", -1), "eval.gate.max_regression", "greater than or equal"),
    (_with("eval.gate.promte", True), "eval.gate.promte", "did you mean `promote`"),
    (_with("serve.port", 70000), "serve.port", "less than or equal to 65535"),
    (
        _with("serve", {"engine": "vllm", "quantization": "int4"}),
        "serve.quantization",
        "transformers engine only",
    ),
    (
        _with("serve", {"engine": "vllm", "vllm": {"tensor_parallel_size": 2}}),
        "serve.vllm.tensor_parallel_size",
        "raise serve.gpus_per_replica",
    ),
    (
        {**_with("serve", {"engine": "vllm"}), "train": {"method": "qlora"}},
        "serve.engine",
        "serve.quantization: none",
    ),
    (_with("serve.engine", "tgi"), "serve.engine", "one of"),
    (_with("ray.num_cpus", 0), "ray.num_cpus", "greater than or equal to 1"),
    (_with("trian", {}), "trian", "did you mean `train`"),
]


@pytest.mark.parametrize(("raw", "where", "text"), BAD_SPECS, ids=[b[1] for b in BAD_SPECS])
def test_bad_spec_names_path_rule_and_fix(raw, where, text):
    with pytest.raises(SpecError) as caught:
        validate_spec(raw, [])
    problems = {p.path: p for p in caught.value.problems}
    assert where in problems, f"no problem at {where}: {caught.value}"
    problem = problems[where]
    message = f"{problem.rule} {problem.fix}"
    assert text in message, message
    assert problem.fix, "every problem carries a fix"


def test_every_problem_is_reported_at_once():
    raw = _with("train.lr", -1)
    raw["model"]["dtype"] = "fp8"
    raw["serve"] = {"prot": 1}
    with pytest.raises(SpecError) as caught:
        validate_spec(raw, [])
    paths = {p.path for p in caught.value.problems}
    assert {"train.lr", "model.dtype", "serve.prot"} <= paths
    assert "3 problems" in str(caught.value)


def test_defaults_fill_every_section():
    spec = validate_spec(GOOD, [])
    assert spec.train.method == "lora"
    assert 1 <= spec.train.epochs <= 3
    assert spec.eval.metrics is None
    assert spec.eval.resolved_task(spec.data.labels, spec.data.output_schema) == "classification"
    assert spec.eval.resolved_task(None, None) == "generation"
    assert spec.eval.resolved_metrics("generation") == [
        "exact_match",
        "rouge_l",
        "bertscore",
        "hallucination",
        "consistency",
    ]
    assert spec.eval.resolved_primary("classification") == "macro_f1"
    assert spec.eval.gate.require_significant and spec.eval.incumbent == "auto"
    assert spec.serve.host == "127.0.0.1"


def test_every_field_is_described():
    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            assert field.description, f"{prefix}{name} has no description"
            inner = getattr(field.annotation, "model_fields", None)
            if inner is not None:
                walk(field.annotation, f"{prefix}{name}.")

    walk(JobSpec)


def test_overrides_are_typed_and_nested():
    spec = validate_spec(GOOD, ["train.lr=3e-4", "train.lora.r=4", "data.labels=[x, y]"])
    assert spec.train.lr == pytest.approx(3e-4)
    assert spec.train.lora.r == 4
    assert spec.data.labels == ["x", "y"]


def test_bad_override_is_a_problem_not_a_crash():
    with pytest.raises(SpecError) as caught:
        validate_spec(GOOD, ["train.lr", "project.name=x"])
    rules = " ".join(p.rule for p in caught.value.problems)
    assert "KEY=VALUE" in rules
    assert "to be a mapping" in rules


def test_spec_hash_is_stable_and_sensitive():
    one, two = validate_spec(GOOD, []), validate_spec(copy.deepcopy(GOOD), [])
    assert spec_hash(one) == spec_hash(two)
    assert spec_hash(one) != spec_hash(validate_spec(GOOD, ["train.lr=1e-3"]))


def test_yaml_syntax_error_gives_line(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("project: demo\nmodel: {base: tiny\n")
    with pytest.raises(Exception, match=r"line \d+, column \d+"):
        load_spec(path)


def test_cli_validate_prints_problems_without_traceback(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_with("train.lr", -1)))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "fix:" in err
    assert "Traceback" not in err


def test_cli_validate_missing_file(capsys):
    assert main(["validate", "no/such/job.yaml"]) == 2
    assert "job spec not found" in capsys.readouterr().err


def test_cli_validate_and_schema_succeed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data.csv, as the spec names it, relative to where ftray runs
    (tmp_path / "data.csv").write_text("prompt,completion\nhi,a\n")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert main(["validate", str(path), "--set", "train.epochs=3"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["epochs"] == 3
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "train" in schema["properties"] and schema["additionalProperties"] is False


def test_storage_comes_from_the_cluster_env_when_unset(monkeypatch):
    monkeypatch.setenv("FTRAY_STORAGE", "s3://bucket/ftray")
    assert validate_spec(GOOD, []).storage == "s3://bucket/ftray"
    assert validate_spec({**GOOD, "storage": "/data"}, []).storage == "/data"
    monkeypatch.delenv("FTRAY_STORAGE")
    assert validate_spec(GOOD, []).storage == "./ftray-store"


def test_a_trial_gets_an_ordinary_validated_spec():
    from ftray.sweep import with_params

    spec = validate_spec(
        _with("sweep", {"parameters": {"train.lr": {"type": "grid", "values": [0.1]}}}), []
    )
    trial = with_params(spec, {"train.lr": 0.01, "train.lora.r": 32})
    assert trial.train.lr == 0.01 and trial.train.lora.r == 32 and trial.sweep is None
    with pytest.raises(ValueError, match=r"lora\.r"):
        with_params(spec, {"train.lora.r": 0})
