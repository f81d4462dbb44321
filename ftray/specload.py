"""Load a job spec from YAML, apply `--set` overrides, and report every problem at once."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ftray.errors import UserError
from ftray.spec import JobSpec

# Where a cluster's shared storage is mounted; used when a job spec sets no `storage`.
STORAGE_ENV = "FTRAY_STORAGE"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: where, what was there, the rule broken, and a fix."""

    path: str
    value: Any
    rule: str
    fix: str

    def __str__(self) -> str:
        value = "(missing)" if self.value is _MISSING else json.dumps(self.value, default=str)
        return f"  {self.path or '<top>'}: {value}\n    rule: {self.rule}\n    fix:  {self.fix}"


_MISSING = object()


class SpecError(UserError):
    """Every problem found in one job spec, listed together."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        body = "\n".join(str(p) for p in problems)
        super().__init__(f"{source}: {count} in the job spec\n{body}")


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read a job spec from YAML, apply `a.b=value` overrides and validate it.

    Raises:
        SpecError: listing every problem, each with its YAML path and a fix.
        UserError: when the file is missing or is not YAML.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"job spec not found: looked for {path.resolve()}. "
            "Pass the path of a YAML job spec, e.g. `ftray run jobs/quickstart.yaml`."
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise UserError(f"{path}:{where} is not valid YAML: {problem}") from None
    if raw is None:
        raw = {}
    return validate_spec(raw, overrides or [], source=str(path))


def validate_spec(raw: Any, overrides: list[str], source: str = "<spec>") -> JobSpec:
    """Validate a spec already parsed into Python data; see `load_spec`."""
    if not isinstance(raw, dict):
        raise SpecError(
            source,
            [Problem("", raw, "a job spec is a YAML mapping", "start from jobs/quickstart.yaml")],
        )
    data = json.loads(json.dumps(raw, default=str))  # a deep copy the overrides may change
    if "storage" not in data and os.environ.get(STORAGE_ENV):
        data["storage"] = os.environ[STORAGE_ENV]  # the cluster's shared storage (Helm chart)
    problems = [p for item in overrides for p in _apply_override(data, item)]
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as err:
        problems += [_problem(e, data) for e in err.errors()]
        spec = None
    if problems:
        raise SpecError(source, problems)
    return spec


def spec_hash(spec: BaseModel) -> str:
    """A stable content hash of a (sub-)spec."""
    text = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _apply_override(data: dict, item: str) -> list[Problem]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        return [
            Problem(f"--set {item}", item, "an override is KEY=VALUE", "e.g. --set train.lr=1e-4")
        ]
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            return [
                Problem(where, child, f"--set {key} needs {where} to be a mapping", "fix the key")
            ]
        node = child
    node[parts[-1]] = value
    return []


def _problem(error: dict, data: dict) -> Problem:
    loc = [str(part) for part in error["loc"]]
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1, cutoff=0.6) or [
            name for name in allowed if loc[-1].startswith(name) or name.startswith(loc[-1])
        ]
        hint = f"did you mean `{close[0]}`? " if close else ""
        return Problem(
            ".".join(loc),
            error["input"],
            f"unknown key `{loc[-1]}`",
            f"{hint}allowed here: {', '.join(sorted(allowed))}",
        )
    if kind == "missing":
        description = _description_at(loc)
        return Problem(".".join(loc), _MISSING, "required key is missing", f"add it: {description}")
    rule = error["msg"]
    if kind == "value_error" and error["msg"].startswith("Value error, "):
        # section validators begin their message with the field they judge: "field: why"
        field, _, why = error["msg"].removeprefix("Value error, ").partition(": ")
        where = [*loc, field]
        return Problem(".".join(where), _value_at(data, where), why.split(";")[0], why)
    return Problem(".".join(loc), error["input"], rule, _fix(kind, loc, error))


def _fix(kind: str, loc: list[str], error: dict) -> str:
    key = ".".join(loc)
    ctx = error.get("ctx") or {}
    if kind == "literal_error":
        return f"set {key} to one of {ctx.get('expected')}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"set {key} to a number that satisfies: {error['msg'].lower()}"
    if kind == "string_pattern_mismatch":
        return f"set {key} to match {ctx.get('pattern')} — {_description_at(loc)}"
    if kind == "too_short":
        return f"give {key} at least {ctx.get('min_length')} item(s)"
    return f"{key}: {_description_at(loc)}"


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = JobSpec
    for part in loc:
        if model is None:
            return None
        if part.isdigit():
            continue  # list index: same item model
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _fields_at(loc: list[str]) -> list[str]:
    model = _model_at(loc)
    return list(model.model_fields) if model else []


def _description_at(loc: list[str]) -> str:
    parent = _model_at(loc[:-1]) if loc else None
    field = parent.model_fields.get(loc[-1]) if parent else None
    return (field.description or "see `ftray schema`") if field else "see `ftray schema`"


def _value_at(data: Any, loc: list[str]) -> Any:
    for part in loc:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data
