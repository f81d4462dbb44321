"""One record at a time: normalise to chat messages, check, fingerprint, tokenize.

`CheckRecords` runs inside Ray Data actors (one tokenizer per actor); every record comes out
as one row, either passing (rule '') or rejected with a named rule and a reason. Rules:

  malformed, missing_field, wrong_type, empty_field   the record itself
  same_answers                                        a preference pair's answers are equal
  label_not_allowed, bad_output                       the output contract
  pii, toxic                                          content filters
  too_long                                            the token limit (unless truncated)
"""

from __future__ import annotations

import json
import math

from ftray.data.checks import (
    band_keys,
    contract_checker,
    exact_key,
    find_pii,
    lsh_bands,
    minhash,
    redact_pii,
    toxicity_checker,
)
from ftray.data.tokenize import messages_for, tokenize_example
from ftray.models import load_tokenizer
from ftray.spec import DataSpec

ROLES = ("system", "user", "assistant")
# Not a rule: a blank line is counted (`blank`), neither kept nor quarantined.
BLANK = "blank"


class Reject(Exception):
    """A record fails a rule; carries the rule's name and the reason."""

    def __init__(self, rule: str, reason: str):
        super().__init__(reason)
        self.rule, self.reason = rule, reason


class CheckRecords:
    """Per actor: the tokenizer and checkers once; per batch: one output row per record."""

    def __init__(self, data: dict, model_dir: str, chat_template: str | None = None):
        self.spec = DataSpec.model_validate(data)
        self.tokenizer = load_tokenizer(model_dir, chat_template)
        self.contract = contract_checker(self.spec.labels, self.spec.output_schema)
        tox = self.spec.toxicity
        self.toxic = toxicity_checker(tox.word_list, tox.hook) if tox.enabled else None
        self.bands = lsh_bands(self.spec.dedup.num_perm, self.spec.dedup.threshold)

    def __call__(self, batch):
        import pandas as pd

        return pd.DataFrame([self.one(record) for record in batch.to_dict("records")])

    def one(self, record: dict) -> dict:
        out = {
            "source": record["source"],
            "row": int(record["row"]),
            "read": int(record["read"]),
            "raw": record["raw"],
            "order": int(record["order"]),
            "origin": record["origin"],
            "fields": record["fields"],
            "prompt": None,
            "completion": None,
            "rejected": None,  # a preference pair's worse answer (data.preference)
            "messages": None,
            "input_ids": [],
            "labels": [],
            "rejected_input_ids": [],
            "rejected_labels": [],
            "weight": 1.0,  # a preference pair's weight (data.preference.weight_field)
            "num_tokens": 0,
            "pii_redacted": 0,
            "truncated": False,
            "exact_key": "",
            "band_keys": [],
            "signature": b"",
            "rule": "",
            "reason": "",
        }
        if record["blank"]:
            return {**out, "rule": BLANK, "reason": "blank line"}
        try:
            if record["error"]:
                raise Reject("malformed", record["error"])
            fields = json.loads(record["fields"])
            messages, completion = self._parse(fields)
            prompt = "\n".join(m["content"] for m in messages if m["role"] != "system")
            rejected = self._rejected(fields, completion) if self.spec.preference else None
            out.update(prompt=prompt, completion=completion, rejected=rejected)
            if self.spec.preference:
                out["weight"] = self._weight(fields)
            messages, completion = self._content(messages, completion, out)
            out["completion"] = completion
            if rejected is None:
                messages, tokens = self.fit(messages, completion, out)
            else:
                messages, tokens = self._fit_pair(messages, completion, out)
        except Reject as reject:
            return {**out, "rule": reject.rule, "reason": reject.reason}
        # a pair is a duplicate only when the prompt and both answers repeat
        text = "\n".join(filter(None, [out["prompt"], completion, out["rejected"]]))
        dedup = self.spec.dedup
        signature = minhash(text, dedup.num_perm, dedup.shingle)
        return {
            **out,
            "messages": json.dumps(messages),
            "input_ids": tokens["input_ids"],
            "labels": tokens["labels"],
            "num_tokens": len(tokens["input_ids"]),
            "exact_key": exact_key(text),
            "band_keys": band_keys(signature, *self.bands),
            "signature": signature.tobytes(),  # uint32 × num_perm
        }

    def _rejected(self, fields: dict, chosen: str) -> str:
        """A preference pair's worse answer, read and checked as the completion is."""
        assert self.spec.preference is not None
        name = self.spec.preference.rejected_field
        rejected = self._answer(fields, "rejected", name)
        if rejected == chosen:
            raise Reject("same_answers", f"the chosen and {name!r} answers are the same")
        return rejected

    def _weight(self, fields: dict) -> float:
        """A preference pair's weight: a number ≥ 0 (a csv cell's text too); 1 where the
        record has none. Raises Reject."""
        assert self.spec.preference is not None
        name = self.spec.preference.weight_field
        value = fields.get(name) if name else None
        if value is None or (isinstance(value, str) and not value.strip()):
            return 1.0
        try:
            weight = float(value) if isinstance(value, (int, float, str)) else math.nan
        except ValueError:
            weight = math.nan
        if isinstance(value, bool) or not math.isfinite(weight) or weight < 0:
            raise Reject("wrong_type", f"weight field {name!r} is {value!r}, not a number ≥ 0")
        return weight

    def _fit_pair(self, messages: list[dict], chosen: str, out: dict) -> tuple[list, dict]:
        """As `fit`, for the longer of the two answers (then both fit); the rejected
        answer's tokens go into `out`."""
        rejected = out["rejected"]
        longer = max(
            (chosen, rejected),
            key=lambda answer: len(self._tokens(messages, answer)["input_ids"]),
        )
        messages, _ = self.fit(messages, longer, out)
        worse = self._tokens(messages, rejected)
        out.update(rejected_input_ids=worse["input_ids"], rejected_labels=worse["labels"])
        return messages, self._tokens(messages, chosen)

    def fit(self, messages: list[dict], completion: str, out: dict) -> tuple[list, dict]:
        """Tokenize; over `max_seq_len`, quarantine or (truncation: prompt_start) drop words
        from the start of the last user message until it fits. Raises Reject."""
        limit = self.spec.max_seq_len
        tokens = self._tokens(messages, completion)
        full = len(tokens["input_ids"])
        if full <= limit:
            return messages, tokens
        last = max(i for i, m in enumerate(messages) if m["role"] == "user")
        words = messages[last]["content"].split()
        if self.spec.truncation == "prompt_start":
            low, high, best = 1, len(words) - 1, None  # words to drop
            while low <= high:
                cut = (low + high) // 2
                trial = [*messages]
                trial[last] = {**trial[last], "content": " ".join(words[cut:])}
                fitted = self._tokens(trial, completion)
                if len(fitted["input_ids"]) <= limit:
                    best, high = (trial, fitted), cut - 1
                else:
                    low = cut + 1
            if best is not None:
                out["truncated"] = True
                out["prompt"] = "\n".join(m["content"] for m in best[0] if m["role"] != "system")
                return best
        raise Reject("too_long", f"{full} tokens > data.max_seq_len {limit}")

    def _tokens(self, messages: list[dict], completion: str) -> dict:
        """The example's tokens and labels; a preference pair labels only its answer (the
        DPO loss compares the two answers, and they share every earlier turn)."""
        train_on = "last_assistant" if self.spec.preference else self.spec.train_on
        return tokenize_example(self.tokenizer, messages, completion, train_on)

    def _parse(self, fields: dict) -> tuple[list[dict], str]:
        """(messages before the answer, the answer); raises Reject."""
        spec = self.spec
        if spec.messages_field:
            return self._parse_chat(fields.get(spec.messages_field), spec.messages_field, fields)
        answer = spec.preference.chosen_field if spec.preference else spec.completion_field
        prompt = self._answer(fields, "prompt", spec.prompt_field)
        completion = self._answer(fields, "completion", answer)
        return messages_for(prompt, spec.system_prompt), completion

    def _answer(self, fields: dict, role: str, name: str) -> str:
        """The stripped text of field `name` (a JSON answer or a number as JSON text);
        raises Reject."""
        value = fields.get(name)
        if value is None:
            raise Reject("missing_field", f"no {role} field {name!r} (has: {sorted(fields)})")
        if role != "prompt" and isinstance(value, (dict, list, int, float, bool)):
            # a JSON task's answer is an object; a label may be a number: as JSON text
            value = json.dumps(value, ensure_ascii=False)
        if not isinstance(value, str):
            kind = type(value).__name__
            raise Reject("wrong_type", f"{role} field {name!r} is {kind}, not text")
        if not value.strip():
            raise Reject("empty_field", f"{role} field {name!r} is empty")
        return value.strip()

    def _parse_chat(self, chat, name: str, fields: dict) -> tuple[list[dict], str]:
        if chat is None:
            raise Reject("missing_field", f"no messages field {name!r} (has: {sorted(fields)})")
        if not isinstance(chat, list) or not chat:
            raise Reject("wrong_type", f"messages field {name!r} is not a non-empty list")
        for turn, message in enumerate(chat):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise Reject("wrong_type", f"message {turn} needs a role in {list(ROLES)}")
            if not isinstance(message.get("content"), str) or not message["content"].strip():
                raise Reject("empty_field", f"message {turn} ({message['role']}) has no text")
        if chat[-1]["role"] != "assistant":
            raise Reject("wrong_type", "the last message must be the assistant's answer")
        if not any(m["role"] == "user" for m in chat[:-1]):
            raise Reject("wrong_type", "no user message before the answer")
        messages = [{"role": m["role"], "content": m["content"].strip()} for m in chat[:-1]]
        if self.spec.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.spec.system_prompt})
        return messages, chat[-1]["content"].strip()

    def _content(self, messages: list[dict], completion: str, out: dict) -> tuple[list, str]:
        """Contract, toxicity and PII; returns the (redacted) chat, raises Reject."""
        problem = self.contract(completion)
        if problem:
            raise Reject("label_not_allowed" if self.spec.labels else "bad_output", problem)
        texts = [m["content"] for m in messages if m["role"] != "system"] + [completion]
        texts += [out["rejected"]] if out["rejected"] else []  # filters read both answers
        if self.toxic is not None:
            for text in texts:
                reason = self.toxic(text)
                if reason:
                    raise Reject("toxic", reason)
        action = self.spec.pii.action
        region = self.spec.pii.phone_region
        found = [] if action == "keep" else [k for t in texts for k, _ in find_pii(t, region)]
        if found and action == "drop":
            raise Reject("pii", f"contains {', '.join(sorted(set(found)))}")
        if found:
            messages = [
                m if m["role"] == "system" else {**m, "content": redact_pii(m["content"], region)}
                for m in messages
            ]
            completion = redact_pii(completion, region)
            out["prompt"] = redact_pii(out["prompt"], region)
            if out["rejected"]:
                out["rejected"] = redact_pii(out["rejected"], region)
            out["pii_redacted"] = len(found)
        return messages, completion
