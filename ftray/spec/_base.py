"""The base of every spec section: strict (unknown keys are errors) and immutable."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class SpecRuleError(ValueError):
    """A broken spec rule, raised by a section's validator.

    pydantic carries it in the error's `ctx['error']`, so the loader can show the field it
    names (relative to the section), the offending value, the rule and the fix.
    """

    def __init__(self, field: str, value: Any, rule: str, fix: str):
        self.field, self.value, self.rule, self.fix = field, value, rule, fix
        super().__init__(f"{field}: {rule}; {fix}")


class _Section(BaseModel):
    # NaN or infinity in a wait, TTL, rate or threshold is never meant (YAML reads `.inf`
    # and `.nan` as floats), and every comparison with NaN is false.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads `true` as 1; strict mode would also refuse '1e-4', which
        # YAML (1.1) reads as a string, so only booleans are refused here.
        if isinstance(value, bool) and info.field_name:
            kinds = _leaf_types(cls.model_fields[info.field_name].annotation)
            if bool not in kinds and kinds & {int, float}:
                raise SpecRuleError(
                    "",
                    value,
                    f"a number is needed, not the boolean {str(value).lower()}",
                    f"write a number for `{info.field_name}`",
                )
        return value


def _leaf_types(annotation: Any) -> set:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return set().union(*(_leaf_types(arg) for arg in typing.get_args(annotation)))
    return {annotation}
