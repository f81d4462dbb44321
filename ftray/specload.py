"""Load a job spec from YAML, apply `--set` overrides, and report every problem at once."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ftray.errors import UserError
from ftray.spec import JobSpec
from ftray.spec._base import SpecRuleError

# Where a cluster's shared storage is mounted; used when a job spec sets no `storage`.
STORAGE_ENV = "FTRAY_STORAGE"
# Bounds on what the YAML reader accepts: a job spec is a few KiB and a few hundred values;
# anchors and aliases are fine, but not ones that expand into millions ("billion laughs").
# PyYAML is pure Python, so the size bound also bounds the time to parse.
MAX_SPEC_BYTES = 256 * 1024
MAX_SPEC_VALUES = 10_000
MAX_SPEC_DEPTH = 64
_MERGE_TAG = "tag:yaml.org,2002:merge"


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


def load_spec(
    path: str | Path, overrides: list[str] | None = None, check_files: bool = True
) -> JobSpec:
    """Read a job spec from YAML, apply `a.b=value` overrides and validate it.

    With `check_files`, the local files it names (model folder, data sources, toxicity word
    list) must exist, relative to the current directory; leave it off where only the store is
    used (serving, the registry, monitoring), which may run where the data is not.

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
    raw = _read_yaml(path)
    return validate_spec(raw, overrides or [], source=str(path), check_files=check_files)


def _read_yaml(path: Path) -> Any:
    """Parse a YAML job spec within bounds: size, encoding, alias expansion, duplicate keys.

    Raises:
        UserError: with the line where it can tell, instead of a traceback or a hang.
    """
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise UserError(
            f"{path}: {size} bytes is too big for a job spec (the limit is {MAX_SPEC_BYTES}); "
            "is it the right file? Put data in files that data.sources names."
        )
    data = path.read_bytes()
    if b"\0" in data:
        raise UserError(f"{path}: a binary file (it holds NUL bytes), not a YAML job spec")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(
            f"{path}: line {line} is not UTF-8 ({err.reason} at byte {err.start}); save the "
            "job spec as UTF-8 text"
        ) from None
    try:
        raw = _parse_yaml(text, str(path), [])
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise UserError(f"{path}:{where} is not valid YAML: {problem}") from None
    return {} if raw is None else raw


def _parse_yaml(text: str, source: str, at: list[str]) -> Any:
    """YAML text (a spec, or a `--set` value found at YAML path `at`) as Python data.

    Raises:
        yaml.YAMLError: on a syntax error or a bound broken while parsing.
        SpecError: on duplicate keys. UserError: when aliases expand past the bounds.
    """
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        scan = _Scan(source)
        scan.measure(node, at)
        if scan.problems:
            raise SpecError(source, scan.problems)
        return loader.construct_document(node)
    finally:
        loader.dispose()


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing nesting deeper than MAX_SPEC_DEPTH and more values
    than MAX_SPEC_VALUES (before aliases are expanded: `_Scan` bounds them after).

    Without the bounds, deeply nested flow collections ('[[[[…') take time quadratic in the
    depth to scan, the recursive composer runs out of stack, and pure-Python PyYAML builds
    a long list slowly.
    """

    def __init__(self, text: str):
        super().__init__(text)
        self._depth = 0
        self._nodes = 0

    def fetch_flow_collection_start(self, TokenClass):
        if self.flow_level >= MAX_SPEC_DEPTH:
            raise yaml.scanner.ScannerError(
                None, None, f"more than {MAX_SPEC_DEPTH} levels deep", self.get_mark()
            )
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent, index):
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_SPEC_DEPTH or self._nodes > MAX_SPEC_VALUES:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"more than {MAX_SPEC_DEPTH} levels deep or {MAX_SPEC_VALUES} values",
                    mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Scan:
    """Walks the composed YAML, aliases followed: finds duplicate keys, bounds the expansion.

    Each node is measured once (`measured`: id → (values, height)), so this is linear in the
    file's size even when the expansion is not.
    """

    def __init__(self, source: str):
        self.source = source
        self.problems: list[Problem] = []
        self.measured: dict[int, tuple[int, int]] = {}
        self.open: set[int] = set()

    def measure(self, node: yaml.Node, path: list[str]) -> tuple[int, int]:
        """(values, height) of `node` once its aliases are expanded."""
        key = id(node)
        if key in self.measured:
            return self.measured[key]
        if key in self.open:
            line = node.start_mark.line + 1
            raise UserError(f"{self.source}: line {line}: an alias refers to its own anchor")
        self.open.add(key)
        children: list[tuple[int, int]] = []
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:  # `<<: *base` merges; own keys override it
                    children.append(self.measure(value_node, path))
                    continue
                name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                line = key_node.start_mark.line + 1
                if name in seen:
                    self._duplicate([*path, name], seen[name], line)
                seen[name] = line
                children.append(self.measure(value_node, [*path, name]))
        elif isinstance(node, yaml.SequenceNode):
            children = [self.measure(item, [*path, str(i)]) for i, item in enumerate(node.value)]
        values = 1 + sum(size for size, _ in children)
        height = 1 + max((height for _, height in children), default=0)
        if values > MAX_SPEC_VALUES or height > MAX_SPEC_DEPTH:
            raise UserError(
                f"{self.source}: line {node.start_mark.line + 1}: with its aliases (*name) "
                f"expanded, the YAML holds more than {MAX_SPEC_VALUES} values or "
                f"{MAX_SPEC_DEPTH} levels; a job spec needs far fewer. Remove the nested "
                "aliases."
            )
        self.open.discard(key)
        self.measured[key] = (values, height)
        return values, height

    def _duplicate(self, path: list[str], first: int, second: int) -> None:
        name = path[-1]
        self.problems.append(
            Problem(
                ".".join(path),
                f"lines {first} and {second}",
                f"duplicate key `{name}` (line {first} and line {second}); YAML would keep "
                "only the last one",
                f"merge the two `{name}:` entries into one",
            )
        )


def validate_spec(
    raw: Any, overrides: list[str], source: str = "<spec>", *, check_files: bool = False
) -> JobSpec:
    """Validate a spec already parsed into Python data; see `load_spec`.

    `check_files`: also check that the local files the spec names exist (relative to the
    current directory), as `load_spec` does.
    """
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
        problems += [_problem(e) for e in err.errors()]
        spec = None
    if spec is not None:
        rules = _unused_sections(spec, data)
        if check_files:
            from ftray.spec.paths import missing_files

            rules += missing_files(spec)
        problems += [Problem(r.field, r.value, r.rule, r.fix) for r in rules]
    if problems or spec is None:  # a spec that failed validation always added problems
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
    parts = key.strip().split(".")
    try:
        value = _parse_yaml(text, f"--set {key}", parts)
    except yaml.YAMLError:
        value = text
    except SpecError as err:  # duplicate keys in the value
        return err.problems
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


def _problem(error: Mapping[str, Any]) -> Problem:
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
    rule = (error.get("ctx") or {}).get("error")
    if isinstance(rule, SpecRuleError):
        where = [*loc, rule.field] if rule.field else loc
        return Problem(".".join(where), rule.value, rule.rule, rule.fix)
    return Problem(".".join(loc), error["input"], error["msg"], _fix(kind, loc, error))


def _unused_sections(spec: JobSpec, data: dict) -> list[SpecRuleError]:
    """A method's own section (deepspeed, qlora) set for a job that never runs that method.

    Checked on the spec as written, not in the models: a sweep trial's spec carries the
    sections of every method the sweep tries. `train.lora` is left alone: lora and qlora share
    it, and a job tuned for them may be tried with `--set train.method=full`.
    """
    methods = {spec.train.method}
    if spec.sweep and "train.method" in spec.sweep.parameters:
        methods |= set(spec.sweep.parameters["train.method"].values or [])
    if "dpo" in methods:
        methods.add(spec.train.dpo.adapter)  # dpo trains a lora/qlora adapter or every weight
    written = data.get("train") or {}
    problems = []
    # a ZeRO-3 LoRA run is a DeepSpeed run: train.deepspeed applies to it
    deepspeed_runs = spec.train.sharding == "zero3"
    for section, method in (("deepspeed", "full"), ("qlora", "qlora"), ("dpo", "dpo")):
        if section == "deepspeed" and deepspeed_runs:
            continue
        if section in written and method not in methods:
            problems.append(
                SpecRuleError(
                    f"train.{section}",
                    written[section],
                    f"applies to train.method '{method}' only, and this job trains with "
                    f"{' / '.join(sorted(methods))}: it would be ignored",
                    f"remove train.{section}, or set train.method: {method}",
                )
            )
    return problems


def _fix(kind: str, loc: list[str], error: Mapping[str, Any]) -> str:
    key = ".".join(loc)
    ctx = error.get("ctx") or {}
    if kind == "literal_error":
        return f"set {key} to one of {ctx.get('expected')}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"set {key} to a number that satisfies: {error['msg'].lower()}"
    if kind == "string_pattern_mismatch":
        return f"set {key} to match {ctx.get('pattern')} — {_description_at(loc)}"
    if kind == "finite_number":
        return f"set {key} to a finite number (not .inf or .nan)"
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
        model = inner_model(field.annotation)
    return model


def inner_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field's annotation holds (`X`, `X | None`, `list[X]`), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = inner_model(arg)
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
