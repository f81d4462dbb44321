"""`ftray prepare` on messy input: every rule, duplicates, leakage, stratification, versions;
per-line accounting, bad bytes and blank lines; clean, all-rejected and interrupted runs."""

from __future__ import annotations

import csv
import json
import os
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import ROOT

QUERIES = list(csv.DictReader((ROOT / "data/banking77/quickstart.csv").open()))
EXAMPLES = ("train", "validation", "eval")


def _job(tmp_path: Path, data: dict) -> Path:
    job = tmp_path / "job.yaml"
    spec = {"project": "messy", "storage": str(tmp_path / "store"), "model": {"base": "tiny"}}
    job.write_text(yaml.safe_dump({**spec, "data": data}))
    return job


def _dataset(tmp_path: Path, dataset_id: str | None = None) -> Path:
    root = tmp_path / "store" / "messy" / "datasets"
    if dataset_id:
        return root / dataset_id
    (only,) = list(root.iterdir())
    return only


def _rows(folder: Path) -> list[dict]:
    return pq.read_table(folder).to_pylist() if folder.exists() else []


@pytest.fixture(scope="module")
def messy(tmp_path_factory, ray_address):
    """A jsonl with a record for every rule, plus a saved HF dataset of clean queries."""
    from datasets import Dataset

    from tests.conftest import cli

    tmp = tmp_path_factory.mktemp("messy")
    card = [q for q in QUERIES if q["category"] == "card_arrival"][:20]
    rate = [q for q in QUERIES if q["category"] == "exchange_rate"][:20]
    lines = [json.dumps({"q": q["text"], "a": q["category"]}) for q in card]  # rows 1-20
    lines += [
        '{"q": "broken json", "a": ',  # 21 malformed
        json.dumps({"a": "card_arrival"}),  # 22 missing_field
        json.dumps({"q": 42, "a": "card_arrival"}),  # 23 wrong_type
        json.dumps({"q": "   ", "a": "card_arrival"}),  # 24 empty_field
        json.dumps({"q": "what is a swift code?", "a": "swift"}),  # 25 label_not_allowed
        json.dumps(["not", "an", "object"]),  # 26 malformed
        json.dumps({"q": "this bank is bullshit, where is my card", "a": "card_arrival"}),  # 27
        json.dumps({"q": "email me at jo@example.com about my card", "a": "card_arrival"}),  # 28
        json.dumps({"q": card[0]["text"].upper() + "!", "a": "card_arrival"}),  # 29 duplicate
        json.dumps({"q": card[1]["text"] + " please", "a": "card_arrival"}),  # 30 near dup
    ]
    raw = [line.encode() for line in lines]
    raw += [
        b'{"q": "my card caf\xe9 never came", "a": "card_arrival"}',  # 31 not UTF-8
        b"",  # 32 blank
        b"   \r",  # 33 blank (whitespace, CRLF)
        json.dumps({"q": "ring me on +44 7700 900123 about my card", "a": "card_arrival"}),
        json.dumps({"q": "or on 07700 900123, where is my card", "a": "card_arrival"}),  # 35
        json.dumps({"q": "which intent", "a": {"people": "4"}}),  # 36: an object, as JSON text
        b"\xff\xfe",  # 37 not UTF-8
    ]
    raw = [line.encode() if isinstance(line, str) else line for line in raw]
    (tmp / "data.jsonl").write_bytes(b"\n".join(raw) + b"\n")
    Dataset.from_list([{"q": q["text"], "a": q["category"]} for q in rate]).save_to_disk(
        str(tmp / "hf")
    )
    data = {
        "sources": [{"path": str(tmp / "data.jsonl")}, {"path": str(tmp / "hf")}],
        "prompt_field": "q",
        "completion_field": "a",
        "labels": ["card_arrival", "exchange_rate"],
        "eval_fraction": 0.25,
        "pii": {"action": "drop"},
        # every rule over three shard actors, each key on its owner, as on large data (the
        # default, one shard: test_data_show_and_diff_between_versions's second prepare)
        "dedup": {"shards": 3},
    }
    job = _job(tmp, data)
    out = cli(ray_address, "prepare", str(job)).stdout
    return tmp, job, out


def test_every_rule_quarantined_with_its_location(messy):
    tmp, _, out = messy
    assert "15 quarantined, 2 blank" in out
    dataset = _dataset(tmp)
    manifest = json.loads((dataset / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["input"] == 55 and counts["blank"] == 2 and counts["read"] == 57
    assert counts["train"] + counts["validation"] + counts["eval"] + counts["quarantine"] == 55
    jsonl, hf = manifest["files"]
    assert jsonl == {
        "path": str(tmp / "data.jsonl"),
        "format": "jsonl",
        "read": 37,
        "train": 13,
        "validation": 2,
        "eval": 5,
        "quarantine": 15,
        "blank": 2,
    }
    assert hf["read"] == 20 and hf["train"] + hf["validation"] + hf["eval"] == 20
    rows = {r["row"]: r for r in _rows(dataset / "quarantine")}
    expected = {
        21: "malformed",
        22: "missing_field",
        23: "wrong_type",
        24: "empty_field",
        25: "label_not_allowed",
        26: "malformed",
        27: "toxic",
        28: "pii",
        29: "duplicate",
        30: "near_duplicate",
        31: "malformed",
        34: "pii",
        35: "pii",
        36: "label_not_allowed",
        37: "malformed",
    }
    assert {row: r["rule"] for row, r in rows.items()} == expected
    assert "not UTF-8" in rows[31]["reason"] and "caf\\xe9" in rows[31]["raw"]
    assert rows[36]["completion"] == '{"people": "4"}'
    assert all(r["source"] == str(tmp / "data.jsonl") and r["reason"] for r in rows.values())
    assert rows[29]["reason"] == f"same text as {tmp / 'data.jsonl'}:1"
    assert rows[30]["reason"].startswith(f"near-duplicate of {tmp / 'data.jsonl'}:2")
    report = json.loads((dataset / "report.json").read_text())
    assert report["counts_by_rule"]["malformed"] == 4
    assert report["samples_by_rule"]["toxic"][0]["row"] == 27


def test_split_is_stratified_by_label(messy):
    tmp, _, _ = messy
    dataset = _dataset(tmp)
    evals = Counter(r["completion"] for r in _rows(dataset / "eval"))
    assert evals == {"card_arrival": 5, "exchange_rate": 5}  # 25% of 20 clean per label
    validation = Counter(r["completion"] for r in _rows(dataset / "validation"))
    assert validation == {"card_arrival": 2, "exchange_rate": 2}  # 10% of the 15 left
    trains = Counter(r["completion"] for r in _rows(dataset / "train"))
    assert trains == {"card_arrival": 13, "exchange_rate": 13}
    held_out = {r["prompt"] for split in ("eval", "validation") for r in _rows(dataset / split)}
    assert not held_out & {r["prompt"] for r in _rows(dataset / "train")}
    hf_rows = [r for r in _rows(dataset / "train") if r["source"].endswith("hf")]
    assert hf_rows and all(r["row"] >= 1 for r in hf_rows)


def test_data_show_and_diff_between_versions(messy, run_cli):
    tmp, job, _ = messy
    old = _dataset(tmp).name
    # on one shard: the diff below is the near-duplicate the three shards found, and no other
    one = ("--set", "data.dedup.shards=1")
    out = run_cli("prepare", str(job), "--set", "data.dedup.near=false", *one).stdout
    new = next(p.name for p in (tmp / "store/messy/datasets").iterdir() if p.name != old)
    assert "new dataset" in out
    shown = run_cli("data", "show", str(job), old).stdout
    assert "near_duplicate: 1" in shown and "records: 55 in" in shown
    data = tmp / "data.jsonl"
    line = f"{data}: 37 lines read = 13 train + 2 validation + 5 eval + 15 quarantined + 2 blank"
    assert line in shown
    listed = run_cli("data", "show", str(job), old, "--quarantine", "malformed").stdout
    assert [line.split()[0] for line in listed.splitlines() if line.startswith(str(data))] == [
        f"{data}:{row}" for row in (21, 26, 31, 37)
    ]
    assert '    {"q": "broken json", "a": ' in listed and "    \\xff\\xfe" in listed
    assert "4 quarantined line(s)" in listed
    everything = run_cli("data", "show", str(job), old, "--quarantine").stdout
    assert "15 quarantined line(s)" in everything
    unknown = run_cli("data", "show", str(job), old, "--quarantine", "nope", check=False)
    assert unknown.returncode == 2 and "malformed (4)" in unknown.stderr
    diff = json.loads(run_cli("data", "diff", str(job), old, new).stdout)
    assert diff["counts"]["added"] == 1 and diff["counts"]["removed"] == 0
    assert diff["added"][0]["row"] == 30
    listed = run_cli("data", "list", str(job)).stdout
    assert old in listed and new in listed
    missing = run_cli("data", "show", str(job), "ds-nope", check=False)
    assert missing.returncode == 2 and old in missing.stderr


def test_explicit_eval_set_leakage_and_json_contract(tmp_path, run_cli):
    # a JSON task's completions may be objects (even rows) or JSON text (odd rows)
    train = [
        {"prompt": q["text"], "completion": {"intent": q["category"]}}
        if i % 2 == 0
        else {"prompt": q["text"], "completion": json.dumps({"intent": q["category"]})}
        for i, q in enumerate(QUERIES[:12])
    ]
    evals = [
        {"prompt": QUERIES[0]["text"], "completion": json.dumps(train[0]["completion"])},  # leak
        {"prompt": QUERIES[1]["text"] + " thanks", "completion": train[1]["completion"]},  # near
        {"prompt": QUERIES[300]["text"], "completion": json.dumps({"intent": "x"})},  # clean
        {"prompt": QUERIES[301]["text"], "completion": "not json"},  # bad output
    ]
    validation = [
        {"prompt": QUERIES[300]["text"], "completion": evals[2]["completion"]},  # a test example
        {"prompt": QUERIES[2]["text"], "completion": train[2]["completion"]},  # a training one
        {"prompt": QUERIES[302]["text"], "completion": {"intent": "y"}},  # clean
    ]
    for name, rows in (("train", train), ("eval", evals), ("validation", validation)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    schema = {
        "type": "object",
        "required": ["intent"],
        "properties": {"intent": {"type": "string"}},
    }
    job = _job(
        tmp_path,
        {
            "sources": [{"path": str(tmp_path / "train.jsonl")}],
            "eval_sources": [{"path": str(tmp_path / "eval.jsonl")}],
            "validation_sources": [{"path": str(tmp_path / "validation.jsonl")}],
            "output_schema": schema,
        },
    )
    run_cli("prepare", str(job))
    dataset = _dataset(tmp_path)
    trained = _rows(dataset / "train")
    assert len(trained) == 12, "training data is never dropped for a leak, nor carved"
    first = next(r for r in trained if r["row"] == 1)
    assert json.loads(first["completion"]) == {"intent": QUERIES[0]["category"]}
    assert [r["row"] for r in _rows(dataset / "eval")] == [3], "the test set loses no clean row"
    assert [r["row"] for r in _rows(dataset / "validation")] == [3]
    rules = {
        (Path(r["source"]).stem, r["row"]): (r["rule"], r["reason"])
        for r in _rows(dataset / "quarantine")
    }
    assert rules["eval", 1][0] == "leakage"
    assert "eval example is a training example" in rules["eval", 1][1]
    assert rules["eval", 2][0] == "leakage"
    assert rules["eval", 4][0] == "bad_output" and "not JSON" in rules["eval", 4][1]
    assert rules["validation", 1][0] == "leakage"
    assert "validation example is an eval example" in rules["validation", 1][1]
    assert "validation example is a training example" in rules["validation", 2][1]
    counts = json.loads((dataset / "manifest.json").read_text())["counts"]
    assert (counts["train"], counts["validation"], counts["eval"]) == (12, 1, 1)


def test_clean_file_then_an_interrupted_prepare_is_rerun(tmp_path, run_cli):
    """No duplicate pair at all is the normal case; a dataset folder left without its
    manifest (an interrupted prepare) and a stale attempt do not block the next run."""
    rows = [{"prompt": q["text"], "completion": q["category"]} for q in QUERIES[2::5][:60]]
    (tmp_path / "clean.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = _job(tmp_path, {"sources": [{"path": str(tmp_path / "clean.jsonl")}]})
    run_cli("prepare", str(job))
    dataset = _dataset(tmp_path)
    counts = json.loads((dataset / "manifest.json").read_text())["counts"]
    assert counts["read"] == 60 and counts["eval"] == 6 and counts["validation"] == 5, counts
    assert counts["train"] == 60 - 6 - 5
    assert counts["quarantine_by_rule"] == {}
    (dataset / "manifest.json").unlink()
    for part in (dataset / "train").iterdir():
        part.unlink()
        break
    stale = dataset.parent / f"{dataset.name}.attempt-0000dead"
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "part.parquet").write_bytes(b"")
    day_old = time.time() - 2 * 24 * 3600
    os.utime(stale / "train" / "part.parquet", (day_old, day_old))
    running = dataset.parent / f"{dataset.name}.attempt-0000beef"  # another prepare, writing
    (running / "train").mkdir(parents=True)
    (running / "train" / "part.parquet").write_bytes(b"")
    out = run_cli("prepare", str(job)).stdout
    assert "new dataset" in out, out
    left = sorted(p.name for p in dataset.parent.iterdir())
    assert left == sorted([dataset.name, running.name]), "stale leftovers cleared, live kept"
    again = json.loads((dataset / "manifest.json").read_text())["counts"]
    assert again == counts and len(_rows(dataset / "train")) == counts["train"]


def test_all_rejected_or_empty_word_list_is_a_clear_error(tmp_path, run_cli):
    rows = [{"prompt": q["text"], "answer": q["category"]} for q in QUERIES[:8]]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    (tmp_path / "words.txt").write_text("# nothing yet\n")
    data = {"sources": [{"path": str(tmp_path / "data.jsonl")}]}
    job = _job(tmp_path, {**data, "toxicity": {"word_list": str(tmp_path / "words.txt")}})
    empty = run_cli("prepare", str(job), check=False)
    assert empty.returncode == 2 and "holds no words" in empty.stderr, empty.stderr
    (tmp_path / "empty.jsonl").write_bytes(b"")
    nothing = run_cli(
        "prepare",
        str(_job(tmp_path, {"sources": [{"path": str(tmp_path / "empty.jsonl")}]})),
        check=False,
    )
    assert nothing.returncode == 2 and "every file is empty" in nothing.stderr, nothing.stderr
    job = _job(tmp_path, data)  # completion_field 'completion' is in no record
    done = run_cli("prepare", str(job), check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "no training records" in done.stderr and "missing_field: 8" in done.stderr
    assert "9 lines read" in done.stderr and "1 blank" in done.stderr
    dataset = _dataset(tmp_path)
    listed = run_cli("data", "show", str(job), dataset.name, "--quarantine").stdout
    assert "8 quarantined line(s)" in listed and "no completion field" in listed
    again = run_cli("prepare", str(job), check=False)
    assert again.returncode == 2 and "no training records" in again.stderr, "also when reused"


def test_a_correction_replaces_the_record_it_corrects(tmp_path, run_cli):
    """Issue 21: the same short prompt answered 'red' in training data and 'blue' in a
    corrections file. MinHash put the two above the near-duplicate threshold, so the
    correction was quarantined as a near-duplicate of the wrong answer. A correction of a
    test-set prompt replaces it in the test set, not in training."""
    sky = "Which colour is the flag flown over the harbour at noon?"
    sea = "Which colour is the boat moored by the lighthouse at dawn?"
    assert 50 <= len(sky) <= 60 and 50 <= len(sea) <= 60
    rows = [{"prompt": q["text"], "completion": q["category"]} for q in QUERIES[2::5][:12]]
    rows.append({"prompt": sky, "completion": "red"})  # line 13
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tests = [{"prompt": q["text"], "completion": q["category"]} for q in QUERIES[300:303]]
    tests.append({"prompt": sea, "completion": "red"})  # line 4
    test.write_text("".join(json.dumps(r) + "\n" for r in tests))
    data = {"sources": [{"path": str(train)}], "eval_sources": [{"path": str(test)}]}
    run_cli("prepare", str(_job(tmp_path, data)))
    old = _dataset(tmp_path).name
    fixed = tmp_path / "corrections.jsonl"
    fixes = [{"prompt": sky.lower() + "  ", "completion": "blue"}]
    fixes.append({"prompt": sea, "completion": "blue"})
    fixed.write_text("".join(json.dumps(r) + "\n" for r in fixes))
    data["sources"].append({"path": str(fixed), "precedence": 1})
    data["dedup"] = {"shards": 2}  # the conflict rule across two shard actors
    job = _job(tmp_path, data)
    run_cli("prepare", str(job))
    datasets = tmp_path / "store" / "messy" / "datasets"
    dataset = next(p for p in datasets.iterdir() if p.name != old)
    found = {
        r["prompt"].lower().strip(): (split, r["completion"], r["source"])
        for split in EXAMPLES
        for r in _rows(dataset / split)
        if r["prompt"].lower().strip() in (sky.lower(), sea.lower())
    }
    assert len(found) == 2 and found[sea.lower()] == ("eval", "blue", str(fixed)), found
    assert found[sky.lower()][1:] == ("blue", str(fixed)), "the old completion is gone"
    assert found[sky.lower()][0] in ("train", "validation")  # carved by the prompt's hash
    assert sum(len(_rows(dataset / split)) for split in EXAMPLES) == 12 + 3 + 2
    lost = {(r["source"], r["row"]): r for r in _rows(dataset / "quarantine")}
    assert {key: r["rule"] for key, r in lost.items()} == {
        (str(train), 13): "conflict",
        (str(test), 4): "conflict",
    }
    assert lost[str(train), 13]["reason"] == (
        f"same prompt as {fixed}:1, whose completion wins (precedence 1 > 0)"
    )
    assert lost[str(test), 4]["reason"] == (
        f"same prompt as {fixed}:2, whose completion wins (precedence 1 > 0); it takes this "
        "example's place in eval"
    )
    assert '"red"' in lost[str(train), 13]["raw"]
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["counts"]["quarantine_by_rule"] == {"conflict": 2}
    accounts = {Path(f["path"]).name: f for f in manifest["files"]}
    assert (accounts["test.jsonl"]["eval"], accounts["test.jsonl"]["quarantine"]) == (3, 1)
    assert accounts["corrections.jsonl"]["eval"] == 1
    diff = json.loads(run_cli("data", "diff", str(job), old, dataset.name).stdout)
    assert diff["counts"]["replaced"] == 2 and diff["counts"]["added"] == 0
    assert diff["counts"]["removed"] == 0
    replaced = {r["prompt"].strip(): r for r in diff["replaced"]}
    assert replaced[sea]["old"] == [f"{test}:4 (eval)"]
    assert replaced[sea]["new"] == f"{fixed}:2 (eval)"
    assert all(r["old_completion"] == ["red"] for r in replaced.values())
    assert all(r["new_completion"] == "blue" for r in replaced.values())


def test_a_base_model_prepares_multi_turn_chats_with_the_job_template(tmp_path, run_cli):
    """A model with no chat template, given `model.chat_template: chatml`: every assistant
    turn of every chat is labelled by the Ray Data actors, and nothing else."""
    import shutil

    from ftray.models import load_tokenizer, resolve_model
    from ftray.spec import ModelSpec
    from ftray.store import Store

    tiny = resolve_model(ModelSpec(base="tiny"), Store(str(tmp_path / "cache"), "t"))
    base = tmp_path / "tiny-base"
    shutil.copytree(tiny, base, ignore=shutil.ignore_patterns("chat_template.jinja"))
    chats = [
        [
            {"role": "user", "content": first["text"]},
            {"role": "assistant", "content": first["category"]},
            {"role": "user", "content": second["text"]},
            {"role": "assistant", "content": second["category"]},
        ]
        for first, second in zip(QUERIES[0::15], QUERIES[7::15], strict=True)
    ]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps({"chat": c}) + "\n" for c in chats))
    job = _job(tmp_path, {"sources": [{"path": str(tmp_path / "chats.jsonl")}]})
    spec = yaml.safe_load(job.read_text())
    spec["model"] |= {"base": str(base), "chat_template": "chatml"}
    spec["data"]["messages_field"] = "chat"
    job.write_text(yaml.safe_dump(spec))

    run_cli("prepare", str(job))
    rows = _rows(_dataset(tmp_path) / "train")
    assert rows
    tokenizer = load_tokenizer(str(base), "chatml")
    for row in rows:
        earlier = [m["content"] for m in json.loads(row["messages"]) if m["role"] == "assistant"]
        answers = [*earlier, row["completion"]]
        assert len(answers) == 2
        labelled = tokenizer.decode([t for t in row["labels"] if t != -100])
        assert labelled == "".join(f"{answer}<|im_end|>\n" for answer in answers)
