"""Malformed job specs, as files on disk: each one exits 2 naming where it is wrong, never a
traceback, a hang, or a spec that passes validate and then crashes prepare or serve."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ftray.cli import main
from ftray.errors import UserError
from ftray.specload import MAX_SPEC_BYTES, SpecError, load_spec
from tests.conftest import BIN, ROOT


def spec(model: str = "{base: tiny}", data: str = "", train: str = "", extra: str = "") -> str:
    """A valid job spec (its data file is written by the `workdir` fixture), with lines added
    to the model, data and train blocks and at the top level."""
    return (
        f"project: demo\nmodel: {model}\ndata:\n  sources: [{{path: data.csv}}]\n"
        f"  labels: [a, b]\n{data}train:\n  batch_size: 4\n  scaling: {{num_workers: 2}}\n"
        f"{train}{extra}"
    )


_LAUGHS = "project: demo\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)

# (id, file content, where the problem is: a YAML path for spec problems, else None,
#  text the message must contain)
MALFORMED = [
    # the file itself
    ("not-utf8", b"project: d\xe9mo\n", None, "not UTF-8"),
    ("binary", b"\x7fELF\x02\x01\x01\x00\x00\x00project", None, "binary file"),
    ("billion-laughs", _LAUGHS, None, "more than 10000 values"),
    (
        "alias-chain",
        "a0: &a0 x\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 99)),
        None,
        "levels",
    ),
    ("alias-cycle", "project: &a [*a]\n", None, "refers to its own anchor"),
    ("too-deep-flow", "project: " + "[" * 100_000 + "]" * 100_000 + "\n", None, "levels deep"),
    (
        "too-deep-block",
        "".join(f"{' ' * depth}k{depth}:\n" for depth in range(100)) + " " * 100 + "x: 1\n",
        None,
        "levels deep",
    ),
    ("too-big", "# " + "x" * MAX_SPEC_BYTES + "\n", None, "too big"),
    ("too-many-values", "project: [" + "a, " * 12_000 + "]\n", None, "10000 values"),
    ("yaml-syntax", "project: demo\nmodel: {base: tiny\n", None, "line 3"),
    ("python-tag", "project: !!python/object/apply:os.system [ls]\n", None, "not valid YAML"),
    ("tab-indent", "project: demo\ndata:\n\tsources: []\n", None, "not valid YAML"),
    ("top-level-list", "- project: demo\n", "", "a YAML mapping"),
    ("empty-file", "", "project", "required key is missing"),
    # duplicate keys, at any depth
    ("duplicate-section", spec(extra="train:\n  epochs: 1\n"), "train", "line 6 and line 9"),
    ("duplicate-nested", spec(data="  labels: [c]\n"), "data.labels", "duplicate key"),
    ("duplicate-flow", spec(train="  lora: {r: 4, r: 8}\n"), "train.lora.r", "duplicate key"),
    # contradictions
    (
        "qlora-with-deepspeed",
        spec(train="  method: qlora\n  deepspeed: {stage: 3}\n"),
        "train.deepspeed",
        "would be ignored",
    ),
    ("lora-with-deepspeed", spec(train="  deepspeed: {stage: 2}\n"), "train.deepspeed", "full"),
    ("lora-with-qlora", spec(train="  qlora: {bits: 8}\n"), "train.qlora", "would be ignored"),
    (
        "offload-params-stage2",
        spec(train="  method: full\n  deepspeed: {stage: 2, offload_params: true}\n"),
        "train.deepspeed.offload_params",
        "ZeRO stage 3",
    ),
    (
        "autoscaling-min-over-max",
        spec(extra="serve:\n  autoscaling: {min_replicas: 4, max_replicas: 2}\n"),
        "serve.autoscaling.min_replicas",
        "more than max_replicas",
    ),
    (
        "max-new-tokens-over-limit",
        spec(extra="serve:\n  max_new_tokens: 600\n  max_tokens_limit: 512\n"),
        "serve.max_new_tokens",
        "above max_tokens_limit",
    ),
    ("open-host-no-key", spec(extra="serve: {host: 0.0.0.0}\n"), "serve.host", "api_key_env"),
    ("lan-host-no-key", spec(extra="serve: {host: 10.1.2.3}\n"), "serve.host", "API key"),
    (
        "primary-metric-not-computed",
        spec(extra="eval: {primary_metric: bleu}\n"),
        "eval.primary_metric",
        "not among the metrics",
    ),
    (
        "sweep-loguniform-from-zero",
        spec(extra="sweep:\n  parameters: {train.lr: {type: loguniform, low: 0, high: 1}}\n"),
        "sweep.parameters.train.lr.low",
        "above 0",
    ),
    (
        "sweep-low-over-high",
        spec(extra="sweep:\n  parameters: {train.lr: {type: uniform, low: 0.1, high: 0.01}}\n"),
        "sweep.parameters.train.lr.high",
        "low < high",
    ),
    # infinite and NaN floats
    ("inf-ttl", spec(extra="serve: {cache_ttl_s: .inf}\n"), "serve.cache_ttl_s", "finite"),
    (
        "nan-wait",
        spec(extra="serve: {batch_wait_timeout_s: .nan}\n"),
        "serve.batch_wait_timeout_s",
        "finite",
    ),
    (
        "inf-flush",
        spec(extra="monitor: {flush_interval_s: .inf}\n"),
        "monitor.flush_interval_s",
        "finite",
    ),
    ("inf-weight-decay", spec(train="  weight_decay: .inf\n"), "train.weight_decay", "finite"),
    (
        "nan-unbounded-gate",
        spec(extra="eval:\n  gate: {min_improvement: .nan}\n"),
        "eval.gate.min_improvement",
        "finite",
    ),
    # booleans where numbers belong
    ("bool-epochs", spec(train="  epochs: true\n"), "train.epochs", "not the boolean true"),
    ("bool-lr", spec(train="  lr: true\n"), "train.lr", "boolean"),
    ("bool-port", spec(extra="serve: {port: false}\n"), "serve.port", "boolean"),
    (
        "bool-optional-float",
        spec(extra="eval:\n  gate: {min_primary: true}\n"),
        "eval.gate.min_primary",
        "boolean",
    ),
    # empty or wrongly shaped values
    ("empty-labels", spec().replace("[a, b]", "[]"), "data.labels", "at least 1"),
    (
        "data-not-a-mapping",
        "project: demo\nmodel: {base: tiny}\ndata: data.csv\n",
        "data",
        "valid dictionary",
    ),
    # output_schema that is no JSON Schema
    (
        "schema-bad-type",
        spec(data="  output_schema: {type: objekt}\n"),
        "data.output_schema",
        "not a valid JSON Schema",
    ),
    (
        "schema-bad-required",
        spec(data="  output_schema: {type: object, required: name}\n"),
        "data.output_schema",
        "JSON Schema",
    ),
    # files that do not exist
    ("model-relative-missing", spec(model="{base: ./models/mine}"), "model.base", "no model at"),
    ("model-absolute-missing", spec(model="{base: /no/such/model}"), "model.base", "no model at"),
    (
        "model-folder-no-config",
        spec(model="{base: ./empty-model}"),
        "model.base",
        "without config.json",
    ),
    ("model-gguf-missing", spec(model="{base: ./model.gguf}"), "model.base", "GGUF file not found"),
    (
        "model-package-missing",
        spec(model="{base: 'package:no_such_ftray_pkg'}"),
        "model.base",
        "no installed Python package",
    ),
    (
        "source-missing",
        spec().replace("data.csv", "missing.csv"),
        "data.sources.0.path",
        "no such file",
    ),
    (
        "source-glob-no-match",
        spec().replace("data.csv", "'shards/*.jsonl'"),
        "data.sources.0.path",
        "no file matches",
    ),
    (
        "eval-source-missing",
        spec(data="  eval_sources: [{path: held-out.jsonl}]\n"),
        "data.eval_sources.0.path",
        "no such file",
    ),
    (
        "primary-lower-is-better",
        spec(extra="eval: {primary_metric: hallucination_rate}\n"),
        "eval.primary_metric",
        "lower is better",
    ),
    (
        "word-list-missing",
        spec(data="  toxicity: {word_list: nope.txt}\n"),
        "data.toxicity.word_list",
        "no such file",
    ),
    (
        "word-list-empty",
        spec(data="  toxicity: {word_list: empty.txt}\n"),
        "data.toxicity.word_list",
        "holds no words",
    ),
    (
        "word-list-comments-only",
        spec(data="  toxicity: {word_list: comments.txt}\n"),
        "data.toxicity.word_list",
        "holds no words",
    ),
]
IDS = [case[0] for case in MALFORMED]
# These go through the installed `ftray` command in a subprocess; the rest through `main`.
BY_SUBPROCESS = {
    "not-utf8",
    "binary",
    "billion-laughs",
    "duplicate-section",
    "qlora-with-deepspeed",
    "inf-ttl",
    "schema-bad-type",
    "model-relative-missing",
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder holding the files the valid spec names; ftray runs in it."""
    (tmp_path / "data.csv").write_text("prompt,completion\nhi,a\n")
    (tmp_path / "empty-model").mkdir()
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "comments.txt").write_text("# slurs go here\n\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write(folder: Path, content: str | bytes) -> Path:
    path = folder / "job.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def test_the_table_is_big_and_every_case_is_distinct():
    assert len(MALFORMED) >= 40
    assert len(set(IDS)) == len(IDS)
    assert len({case[1] for case in MALFORMED}) == len(MALFORMED)


def test_the_base_spec_is_valid(workdir):
    assert load_spec(_write(workdir, spec())).project == "demo"


@pytest.mark.parametrize(("name", "content", "where", "text"), MALFORMED, ids=IDS)
def test_malformed_spec_is_a_clear_error(workdir, capsys, name, content, where, text):
    path = _write(workdir, content)
    with pytest.raises(UserError) as caught:
        load_spec(path)
    if where is None:
        assert not isinstance(caught.value, SpecError)
    else:
        assert isinstance(caught.value, SpecError), caught.value
        problems = {p.path: p for p in caught.value.problems}
        assert where in problems, f"no problem at {where!r}: {caught.value}"
        assert problems[where].fix
    assert text in str(caught.value), str(caught.value)
    if name in BY_SUBPROCESS:
        return
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err
    if where:
        assert f"  {where}: " in err


@pytest.mark.parametrize("name", sorted(BY_SUBPROCESS))
def test_ftray_validate_exits_2_without_traceback(workdir, name):
    _, content, where, text = MALFORMED[IDS.index(name)]
    path = _write(workdir, content)
    # this checkout's ftray, whichever one the environment has installed
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run(
        [str(BIN / "ftray"), "validate", str(path)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert text in output and "Traceback" not in output, output
    if where:
        assert f"  {where}: " in output, output


def test_the_offending_value_is_shown_not_null(workdir):
    path = _write(workdir, spec(extra="eval: {primary_metric: bleu}\n"))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    (problem,) = caught.value.problems
    assert problem.value == "bleu"
    assert '  eval.primary_metric: "bleu"' in str(caught.value)


def test_every_problem_is_listed_at_once(workdir):
    path = _write(workdir, spec(data="  labels: [c]\n", extra="train:\n  epochs: 1\n"))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert {p.path for p in caught.value.problems} == {"data.labels", "train"}
    path = _write(workdir, spec(model="{base: ./nope}", data="  eval_sources: [{path: x.csv}]\n"))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert {p.path for p in caught.value.problems} == {"model.base", "data.eval_sources.0.path"}


@pytest.mark.parametrize(
    ("content", "overrides"),
    [
        (spec(train="  lr: 1e-4\n"), []),  # YAML 1.1 reads 1e-4 as a string; pydantic parses it
        (spec(), ["train.lr=1e-4", "eval.gate.min_improvement=-0.01"]),
        (spec().replace("data.csv", "s3://bucket/train.jsonl"), []),  # URIs need the network
        (spec().replace("data.csv", "'*.csv'"), []),
        (spec(model="{base: HuggingFaceTB/SmolLM2-135M-Instruct}"), []),
        (spec(extra="serve: {host: 0.0.0.0, api_key_env: FTRAY_KEY}\n"), []),
        (spec(extra="serve: {host: 0.0.0.0, allow_unauthenticated: true}\n"), []),
        (spec(extra="serve: {host: localhost}\n"), []),
        (spec(train="  method: full\n  deepspeed: {stage: 3}\n"), []),
        (spec(train="  method: qlora\n  qlora: {bits: 8}\n"), []),
        (  # a ZeRO-3 LoRA run is a DeepSpeed run
            spec(train="  sharding: zero3\n  deepspeed: {stage: 3, offload_params: true}\n"),
            [],
        ),
        (  # a sweep over methods may set each method's section
            spec(
                train="  deepspeed: {stage: 2}\n",
                extra="sweep:\n  parameters: {train.method: {type: grid, values: [lora, full]}}\n",
            ),
            [],
        ),
        (  # anchors, aliases and merge keys are fine; own keys override merged ones
            spec(train="  lora: &adapter {r: 4, alpha: 8}\n")
            + "eval:\n  gate: {<<: {promote: false, max_regression: 0.1}, promote: true}\n",
            [],
        ),
        (spec(data="  toxicity: {word_list: words.txt}\n"), []),
        (spec(data="  output_schema: {type: object, required: [name]}\n"), []),
    ],
)
def test_valid_specs_still_pass(workdir, content, overrides):
    (workdir / "words.txt").write_text("# one per line\nbadword\n")
    loaded = load_spec(_write(workdir, content), overrides)
    assert loaded.project == "demo"
    assert 0 < loaded.train.lr < 1


def test_merge_keys_resolve_as_yaml_says(workdir):
    content = spec() + "eval:\n  gate: {<<: {promote: false, max_regression: 0.1}, promote: true}\n"
    gate = load_spec(_write(workdir, content)).eval.gate
    assert gate.promote is True and gate.max_regression == 0.1


def test_overrides_are_parsed_within_the_same_bounds(workdir):
    path = _write(workdir, spec())
    laughs = (
        "["
        + ", ".join(
            f"&{a} [" + ", ".join([f"*{b}" if b else "x"] * 9) + "]"
            for a, b in zip("abcdef", ["", *"abcde"], strict=True)
        )
        + "]"
    )
    with pytest.raises(UserError, match="more than 10000 values"):
        load_spec(path, [f"train.deepspeed.config={laughs}"])
    # too deep to parse: taken as a string, like any value that is not YAML
    with pytest.raises(SpecError, match="valid dictionary"):
        load_spec(path, ["train.deepspeed.config=" + "[" * 100_000 + "]" * 100_000])
    with pytest.raises(SpecError) as caught:
        load_spec(path, ["train.lora={r: 4, r: 8}", "train.lr=-1"])
    assert {p.path for p in caught.value.problems} == {"train.lora.r", "train.lr"}


def test_missing_input_files_stop_the_stages_but_not_the_registry_verbs(workdir, capsys):
    # A laptop looking at a cluster's registry has the job spec but not the data.
    path = _write(workdir, spec())
    (workdir / "data.csv").unlink()
    assert main(["validate", str(path)]) == 2
    assert "data.sources.0.path" in capsys.readouterr().err
    assert main(["models", "list", str(path), "--set", f"storage={workdir / 'store'}"]) == 0
    assert load_spec(path, check_files=False).project == "demo"
