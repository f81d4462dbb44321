"""The job-spec reference as Markdown, generated from `ftray.spec` (`ftray schema --markdown`).

The README embeds this text between markers, and a test keeps the two identical.
"""

from __future__ import annotations

import json
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ftray.spec import JobSpec
from ftray.specload import inner_model


def spec_reference() -> str:
    """One table per section: key, type, default, description."""
    out: list[str] = []
    _section(JobSpec, "", out)
    return "\n".join(out).rstrip() + "\n"


def _section(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    title = prefix.rstrip(".") or "top level"
    out += [f"#### `{title}`", "", (model.__doc__ or "").strip(), ""]
    out += ["| key | type | default | description |", "|---|---|---|---|"]
    nested = []
    for name, field in model.model_fields.items():
        inner = inner_model(field.annotation)
        if inner is not None:
            is_list = typing.get_origin(field.annotation) is list
            nested.append((inner, f"{prefix}{name}{'[]' if is_list else ''}."))
        out.append(
            f"| `{prefix}{name}` | {_type(field.annotation)} | {_default(field)} | "
            f"{(field.description or '').replace('|', '/')} |"
        )
    out.append("")
    for inner, inner_prefix in nested:
        _section(inner, inner_prefix, out)


def _type(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " / ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else ""
        )
    if origin is list:
        return f"list of {_type(args[0])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "see below" if isinstance(value, BaseModel) else f"`{json.dumps(value)}`"
    if field.default is PydanticUndefined:
        return "**required**"
    return f"`{json.dumps(field.default)}`"


START, END = "<!-- spec-reference:start -->", "<!-- spec-reference:end -->"


def with_reference(readme: str) -> str:
    """`readme` with the text between the spec-reference markers replaced by the reference."""
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{spec_reference()}{END}{tail}"


if __name__ == "__main__":  # python -m ftray.specdoc README.md: refresh the README's reference
    import sys
    from pathlib import Path

    target = Path(sys.argv[1])
    target.write_text(with_reference(target.read_text()))
