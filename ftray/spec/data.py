"""The data section: sources, checks, deduplication and the three splits (prepare)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ftray.spec._base import SpecRuleError, _Section


class SourceSpec(_Section):
    """One input file or glob."""

    path: str = Field(
        description="File path, glob or URI, relative to the directory ftray runs in."
    )
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "hf"] = Field(
        default="auto",
        description="File format; 'auto' infers it from the extension, and takes a folder "
        "written by `datasets.Dataset.save_to_disk` as 'hf'.",
    )
    precedence: int = Field(
        default=0,
        description="Which record wins when records give the same prompt different "
        "completions (rule 'conflict') or (near-)duplicate each other: the higher precedence; "
        "at equal precedence a conflict goes to the later source (and line), a duplicate to "
        "the earlier. `ftray retrain` gives its corrections file a precedence above every "
        "other source.",
    )


class PreferenceSpec(_Section):
    """Preference pairs (for `train.method: dpo`): a prompt with a better and a worse answer."""

    chosen_field: str = Field(default="chosen", description="Column holding the better answer.")
    rejected_field: str = Field(
        default="rejected", description="Column holding the worse answer to the same prompt."
    )
    weight_field: str | None = Field(
        default="weight",
        description="Column holding the pair's weight, a number ≥ 0 (`ftray review pairs` "
        "writes the reviewers' agreement there): the DPO loss is the weighted mean over a "
        "batch's pairs, so a pair of weight 0 teaches nothing. A record without it weighs 1; "
        "null: every pair weighs 1.",
    )


class DedupSpec(_Section):
    """Duplicate removal: exact (normalised text) and near (MinHash + LSH), distributed on
    large data."""

    exact: bool = Field(default=True, description="Drop records whose normalised text repeats.")
    near: bool = Field(default=True, description="Drop near-duplicates (MinHash + LSH).")
    conflicts: bool = Field(
        default=True,
        description="Keep one completion per prompt: records with the same normalised prompt "
        "(system prompt and earlier turns included) and another completion lose to the "
        "winner by source precedence (rule 'conflict'). Turn off for tasks with several right "
        "answers per prompt; preference pairs (data.preference) never have it.",
    )
    threshold: float = Field(
        default=0.8,
        gt=0,
        lt=1,
        description="Estimated Jaccard similarity of character shingles at or above which two "
        "records are near-duplicates.",
    )
    num_perm: int = Field(default=128, ge=16, le=1024, description="MinHash permutations.")
    shingle: int = Field(default=5, ge=2, le=20, description="Characters per shingle.")
    shards: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Actors that hold the dedup keys and the split, each owning a hash range "
        "of them (memory, no CPU reserved; spread over the nodes). Default: one per 500,000 "
        "lines read, and at least data.num_workers. The verdicts do not depend on it.",
    )


class PiiSpec(_Section):
    """Emails, phone numbers and payment card numbers in prompts and completions."""

    action: Literal["redact", "drop", "keep"] = Field(
        default="redact",
        description="'redact' replaces each match with [EMAIL], [PHONE] or [CARD_NUMBER]; "
        "'drop' quarantines the record (rule 'pii'); 'keep' leaves it.",
    )
    phone_region: str = Field(
        default="GB",
        pattern=r"^[A-Z]{2}$",
        description="Country (ISO 3166 code, e.g. GB, US, DE) whose numbering plan reads phone "
        "numbers written without a +country code.",
    )


class ToxicitySpec(_Section):
    """Toxic records are quarantined (rule 'toxic'); no network is used."""

    enabled: bool = Field(default=True, description="Check prompts and completions.")
    word_list: str | None = Field(
        default=None,
        description="File of words (one per line) to reject; unset: a short built-in list.",
    )
    hook: str | None = Field(
        default=None,
        description="'module:function' taking a text and returning a reason (str) to reject "
        "it or None; replaces the word list (e.g. a local classifier).",
    )


class RetrievalDataSpec(_Section):
    """Retrieved context in every example (RAFT-style): the model learns to answer from it."""

    index: str = Field(
        default="latest",
        description="The corpus index to retrieve from (`ftray index`): an index id, or "
        "'latest' (the newest index of the project, resolved when prepare runs; the id is "
        "part of the dataset id).",
    )
    k: int = Field(default=4, ge=1, le=32, description="Chunks put before each question.")
    gold_field: str | None = Field(
        default=None,
        description="Column naming each record's gold document, as the index names its "
        "chunks' source (a corpus file's path relative to its index.sources entry, e.g. "
        "'fees.md'): a training example gets that document's best chunk "
        "among its k (replacing the lowest-ranked distractor when retrieval missed it), and "
        "the manifest counts retrieval's gold recall@k. Unset: plain top-k everywhere.",
    )
    p_without_gold: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Share of training examples with a known gold document whose context "
        "leaves every chunk of it out (k distractors), chosen by a hash of data.seed and the "
        "prompt: the model also learns to answer when retrieval misses (RAFT). Validation "
        "and eval examples always get plain top-k retrieval, what serving would retrieve.",
    )
    gold_search_k: int = Field(
        default=50,
        ge=1,
        description="How deep the search for the gold document's best chunk (or for "
        "distractors without it) goes when the top k do not settle it (the index ranks at "
        "most index.candidates chunks per side, so deeper finds no more).",
    )


class DataSpec(_Section):
    """The prepare stage: sources → checked, deduplicated chat records → train/eval parquet."""

    sources: list[SourceSpec] = Field(min_length=1, description="Input files, read in order.")
    eval_sources: list[SourceSpec] | None = Field(
        default=None,
        description="An explicit test set (the `eval` split: scored by `ftray eval`, never "
        "used while training); unset: `eval_fraction` of `sources` is held out. Eval records "
        "that (near-)duplicate training records are removed (rule 'leakage').",
    )
    validation_sources: list[SourceSpec] | None = Field(
        default=None,
        description="An explicit validation set (the `validation` split: checkpoint "
        "selection, early stopping, sweep scores); unset: `validation_fraction` of the "
        "training records is held out. Validation records that (near-)duplicate training or "
        "eval records are removed (rule 'leakage').",
    )
    prompt_field: str = Field(
        default="prompt", description="Column holding the user's input (the prompt)."
    )
    completion_field: str = Field(
        default="completion", description="Column holding the wanted output (the completion)."
    )
    messages_field: str | None = Field(
        default=None,
        description="Column holding a chat: a list of {role, content} with roles system, user, "
        "assistant, ending with the assistant's answer (the completion; earlier turns are "
        "the prompt). When set, prompt_field and completion_field are not used.",
    )
    train_on: Literal["all_assistant", "last_assistant"] = Field(
        default="all_assistant",
        description="Which turns of a multi-turn chat (messages_field) the loss is computed "
        "on: 'all_assistant', every assistant answer; 'last_assistant', only the last one "
        "(the completion). System and user turns never count. Evaluation always scores the "
        "last answer; preference pairs always train on their answers only.",
    )
    preference: PreferenceSpec | None = Field(
        default=None,
        description="Read every record as a preference pair (prompt_field, chosen and rejected "
        "answers) instead of prompt + completion; the chosen answer is the completion that "
        "evaluation scores against. Needs train.method: dpo; not with messages_field.",
    )
    system_prompt: str | None = Field(
        default=None,
        description="System prompt put before every example, as the production API will send "
        "it (a chat's own system message wins).",
    )
    labels: list[str] | None = Field(
        default=None,
        min_length=1,
        description="For classification: the allowed completions. A record whose completion is "
        "not one of them is quarantined (rule 'label_not_allowed').",
    )
    output_schema: dict | None = Field(
        default=None,
        description="For JSON outputs: a JSON Schema every completion must satisfy; others are "
        "quarantined (rule 'bad_output').",
    )
    eval_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="Share of records held out as the test set (the `eval` split), chosen "
        "by a hash of the prompt (within each label when `labels` is set).",
    )
    validation_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="Share of the records left for training after the eval hold-out that is "
        "held out for validation, chosen by the same prompt hash (within each label when "
        "`labels` is set); at least one record when two or more remain.",
    )
    max_seq_len: int = Field(
        default=256,
        ge=8,
        description="Token limit for prompt + completion, chat template included.",
    )
    truncation: Literal["quarantine", "prompt_start"] = Field(
        default="quarantine",
        description="Over max_seq_len: 'quarantine' the record (rule 'too_long'), or "
        "'prompt_start': drop words from the start of the last user message until it fits "
        "(the completion is never cut).",
    )
    retrieval: RetrievalDataSpec | None = Field(
        default=None,
        description="Put top-k chunks retrieved from a corpus index into every example's "
        "prompt (`ftray.rag.context.with_context`, which assess and evaluate use too); "
        "unset: no retrieval.",
    )
    seed: int = Field(
        default=0, description="Salt of the held-out split hash (and of retrieval's gold drop)."
    )
    num_workers: int = Field(
        default=2, ge=1, description="Most Ray Data actors checking and tokenizing records."
    )
    dedup: DedupSpec = Field(default_factory=DedupSpec, description="Duplicate removal.")
    pii: PiiSpec = Field(default_factory=PiiSpec, description="PII handling.")
    toxicity: ToxicitySpec = Field(default_factory=ToxicitySpec, description="Toxicity filter.")

    @model_validator(mode="after")
    def _pairs_from_fields(self) -> DataSpec:
        if self.preference and self.messages_field:
            raise SpecRuleError(
                "preference",
                self.preference.model_dump(),
                "preference pairs are read from prompt_field and the two answer fields, not "
                "from a chat",
                "unset data.messages_field, or data.preference",
            )
        if self.preference and self.retrieval:
            raise SpecRuleError(
                "retrieval",
                self.retrieval.model_dump(),
                "retrieved context is not supported for preference pairs",
                "unset data.retrieval, or data.preference",
            )
        return self

    @field_validator("output_schema")
    @classmethod
    def _schema_is_valid(cls, schema: dict | None) -> dict | None:
        # prepare and evaluate check completions with Draft 2020-12; a broken schema (e.g.
        # `type: objekt`) would pass here and crash there
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(schema or {})
        except SchemaError as err:
            where = "/".join(str(part) for part in err.absolute_path) or "the top"
            raise SpecRuleError(
                "",
                schema,
                f"not a valid JSON Schema (Draft 2020-12): {err.message} at {where}",
                "fix data.output_schema; see https://json-schema.org/understanding-json-schema",
            ) from None
        return schema
