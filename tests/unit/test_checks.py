"""Record checks without Ray: PII, toxicity, the output contract, fingerprints, every rule."""

from __future__ import annotations

import json

import pytest

from ftray.data.checks import (
    band_keys,
    contract_checker,
    exact_key,
    find_pii,
    lsh_bands,
    minhash,
    redact_pii,
    similarity,
    toxicity_checker,
)
from ftray.data.records import CheckRecords
from ftray.errors import UserError
from ftray.models import resolve_model
from ftray.spec import DataSpec, ModelSpec
from ftray.store import Store


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("write to jane.doe+bank@example.co.uk today", ["email"]),
        ("call +44 20 7946 0958 or (415) 555-0132", ["phone", "phone"]),
        ("my card 4111 1111 1111 1111 was charged", ["card_number"]),
        ("card 4111-1111-1111-1112 fails the Luhn check", []),
        ("on 2024-11-28 I sent 250.00 EUR, ref 12345", []),
        ("order 1234567890123 arrived", []),
        ("text me on +44 7700 900123 or 07700 900123", ["phone", "phone"]),
        ("ring 07700900123 after six", ["phone"]),
        ("ref 2024112812", ["phone"]),  # a possible number: over-redaction, as documented
        ("Berlin office: +49 30 1234567", ["phone"]),
        ("at 2024-11-28 10:15, 1,000,000.00 GBP, v1.2.3.4, sort code 20-00-00", []),
    ],
)
def test_find_pii(text, kinds):
    assert [kind for kind, _ in find_pii(text)] == kinds


def test_phone_region_reads_national_numbers():
    """A number without +country code is read by the region's numbering plan."""
    assert find_pii("call 32 12 34 56", "DK") == [("phone", "32 12 34 56")]  # 8 digits
    assert find_pii("call 32 12 34 56", "GB") == []
    assert find_pii("call (415) 555-0132", "US") == [("phone", "(415) 555-0132")]
    assert redact_pii("on 07700 900123 now") == "on [PHONE] now"


def test_redact_pii_replaces_each_match():
    out = redact_pii("mail a@b.io, card 5500 0000 0000 0004, tel 020 7946 0958")
    assert out == "mail [EMAIL], card [CARD_NUMBER], tel [PHONE]"


def test_toxicity_word_list_and_hook(tmp_path):
    default = toxicity_checker(None, None)
    assert "bullshit" in default("this fee is bullshit")
    assert default("the Scunthorpe branch is closed") is None, "words match at word starts"
    words = tmp_path / "words.txt"
    words.write_text("# ours\nrefund scam\n")
    assert toxicity_checker(str(words), None)("is this a refund scam?")
    hook = toxicity_checker(None, "tests.unit.test_checks:_shouting")
    assert hook("WHERE IS MY MONEY") == "shouting" and hook("where is it") is None


@pytest.mark.parametrize("content", ["", "# only a comment\n\n   \n"])
def test_empty_word_list_is_an_error_not_a_match_for_everything(tmp_path, content):
    words = tmp_path / "words.txt"
    words.write_text(content)
    with pytest.raises(UserError, match="holds no words"):
        toxicity_checker(str(words), None)
    with pytest.raises(UserError, match="cannot read"):
        toxicity_checker(str(tmp_path / "missing.txt"), None)


def _shouting(text: str) -> str | None:
    return "shouting" if text.isupper() else None


def test_output_contract_labels_and_schema():
    labels = contract_checker(["a", "b"], None)
    assert labels("a") is None and "not in data.labels" in labels("c")
    schema = {
        "type": "object",
        "properties": {"intent": {"enum": ["refund", "card"]}},
        "required": ["intent"],
    }
    check = contract_checker(None, schema)
    assert check('{"intent": "card"}') is None
    assert "not JSON" in check("card")
    assert "at intent" in check('{"intent": "loan"}')
    assert "'intent' is a required property" in check("{}")


PARAPHRASES = [
    (
        "How do I top up my card with Apple Pay please",
        "How do I top up my card with Apple Pay, please?",
    ),
    ("I lost my card yesterday, what should I do", "i lost my card yesterday what should i do now"),
    ("Why was I charged a fee for my transfer?", "Why was I charged a fee for my transfer??!"),
]


@pytest.mark.parametrize(("one", "two"), PARAPHRASES)
def test_near_duplicates_share_a_bucket_and_pass_the_threshold(one, two):
    bands, rows = lsh_bands(128, 0.8)
    a, b = minhash(one, 128, 5), minhash(two, 128, 5)
    assert similarity(a, b) >= 0.8
    assert set(band_keys(a, bands, rows)) & set(band_keys(b, bands, rows))


def test_different_texts_are_not_near_duplicates():
    a = minhash("How do I top up my card with Apple Pay please", 128, 5)
    b = minhash("What is the exchange rate for euros today", 128, 5)
    assert similarity(a, b) < 0.2


def test_exact_key_ignores_case_punctuation_and_spacing():
    assert exact_key("Where is my CARD?") == exact_key("where is  my card")
    assert exact_key("where is my card") != exact_key("where is my pin")


def test_lsh_bands_find_pairs_at_the_threshold():
    for num_perm, threshold in [(128, 0.8), (64, 0.5), (256, 0.9)]:
        bands, rows = lsh_bands(num_perm, threshold)
        assert bands * rows == num_perm
        assert 1 - (1 - threshold**rows) ** bands >= 0.9, "recall at the threshold"
    bands, rows = lsh_bands(128, 0.8)
    assert (bands, rows) == (16, 8)
    assert 1 - (1 - 0.4**rows) ** bands < 0.02, "dissimilar pairs are rarely candidates"


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    model_dir = resolve_model(ModelSpec(base="tiny"), Store(str(tmp_path_factory.mktemp("s")), "t"))
    spec = DataSpec(
        sources=[{"path": "x.jsonl"}],
        labels=["card_arrival", "refund"],
        max_seq_len=200,
        pii={"action": "drop"},
    )
    return CheckRecords(spec.model_dump(mode="json"), model_dir)


def _record(fields=None, error=None, row=1, blank=False):
    return {
        "source": "x.jsonl",
        "row": row,
        "read": 1,
        "order": row,
        "origin": "train",
        "fields": json.dumps(fields) if fields is not None else None,
        "raw": json.dumps(fields),
        "error": error,
        "blank": blank,
    }


RULES = [
    (_record(error="bad JSON line: Expecting value"), "malformed"),
    (_record({"completion": "refund"}), "missing_field"),
    (_record({"prompt": 7, "completion": "refund"}), "wrong_type"),
    (_record({"prompt": {"q": "where"}, "completion": "refund"}), "wrong_type"),
    (_record(blank=True), "blank"),
    (_record({"prompt": "  ", "completion": "refund"}), "empty_field"),
    (_record({"prompt": "where is it", "completion": "loan"}), "label_not_allowed"),
    (_record({"prompt": "this is bullshit", "completion": "refund"}), "toxic"),
    (_record({"prompt": "mail me at a@b.io", "completion": "refund"}), "pii"),
    (_record({"prompt": "where " * 100, "completion": "refund"}), "too_long"),
    (_record({"prompt": "where is my card", "completion": "card_arrival"}), ""),
]


@pytest.mark.parametrize(("record", "rule"), RULES, ids=[r or "pass" for _, r in RULES])
def test_every_rule(checker, record, rule):
    out = checker.one(record)
    assert out["rule"] == rule, out["reason"]
    assert bool(out["reason"]) == bool(rule)
    assert out["raw"] == record["raw"], "quarantine keeps the text as read"
    if not rule:
        assert out["input_ids"] and out["band_keys"] and out["exact_key"]
        assert json.loads(out["messages"])[-1]["role"] == "user"


def test_completion_objects_numbers_and_bools_become_json_text(tmp_path):
    model_dir = resolve_model(ModelSpec(base="tiny"), Store(str(tmp_path), "t"))
    schema = {"type": "object", "required": ["people"]}
    spec = DataSpec(sources=[{"path": "x"}], output_schema=schema)
    checker = CheckRecords(spec.model_dump(mode="json"), model_dir)
    out = checker.one(_record({"prompt": "a table for 4", "completion": {"people": "4"}}))
    assert out["rule"] == "" and json.loads(out["completion"]) == {"people": "4"}
    labels = DataSpec(sources=[{"path": "x"}], labels=["4", "true"])
    checker = CheckRecords(labels.model_dump(mode="json"), model_dir)
    assert checker.one(_record({"prompt": "how many", "completion": 4}))["completion"] == "4"
    assert checker.one(_record({"prompt": "is it", "completion": True}))["completion"] == "true"


def test_chat_records_multi_turn(tmp_path):
    model_dir = resolve_model(ModelSpec(base="tiny"), Store(str(tmp_path), "t"))
    spec = DataSpec(sources=[{"path": "x"}], messages_field="chat", system_prompt="Be brief.")
    checker = CheckRecords(spec.model_dump(mode="json"), model_dir)
    chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "card at a@b.io?"},
        {"role": "assistant", "content": "on its way"},
    ]
    out = checker.one(_record({"chat": chat}))
    assert out["rule"] == "" and out["completion"] == "on its way"
    messages = json.loads(out["messages"])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"] == "card at [EMAIL]?", "PII redacted by default"
    assert out["pii_redacted"] == 1
    bad = checker.one(_record({"chat": chat[:-1]}))
    assert bad["rule"] == "wrong_type" and "assistant's answer" in bad["reason"]


def test_truncation_drops_prompt_start_never_the_answer(tmp_path):
    model_dir = resolve_model(ModelSpec(base="tiny"), Store(str(tmp_path), "t"))
    spec = DataSpec(sources=[{"path": "x"}], max_seq_len=120, truncation="prompt_start")
    checker = CheckRecords(spec.model_dump(mode="json"), model_dir)
    long_prompt = " ".join(f"word{i}" for i in range(60)) + " where is my card"
    out = checker.one(_record({"prompt": long_prompt, "completion": "card_arrival"}))
    assert out["rule"] == "" and out["truncated"] is True
    assert out["num_tokens"] <= 120
    assert out["prompt"].endswith("where is my card") and not out["prompt"].startswith("word0 ")
    assert out["completion"] == "card_arrival"
    hopeless = checker.one(_record({"prompt": "hi", "completion": "x" * 500}))
    assert hopeless["rule"] == "too_long", "the completion is never cut"
