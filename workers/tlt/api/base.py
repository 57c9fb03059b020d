"""Building blocks of the typed spec: the base model and cross-field rules.

A `Rule` is written once and serves twice: as a Python check in `tlt validate` (and
everywhere a spec is loaded) and as a CEL `x-kubernetes-validations` entry in the
generated CRD, so the API server rejects the same manifests at `kubectl apply`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError


@dataclass(frozen=True)
class Rule:
    """A cross-field constraint of one spec object.

    `check(obj)` returns None when the object is fine, else the message (it may
    include the offending values). `cel` is the same rule for the API server, where
    it can be expressed (None where it cannot: then only `tlt validate` and the
    operator enforce it). `field` is the path, relative to the object, that the
    error names.
    """

    field: str
    check: Callable[[Any], str | None]
    cel: str | None = None
    cel_message: str | None = None


class SpecModel(BaseModel):
    """Base of every spec object: camelCase in YAML, unknown fields rejected, strict types."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        validate_default=False,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self):
        broken = []
        for rule in type(self).rules:
            message = rule.check(self)
            if message:
                broken.append({"field": rule.field, "message": message})
        if broken:
            # One error carrying all broken rules; tlt.api.errors expands it into one
            # FieldError per rule, each with its own path.
            raise PydanticCustomError("tlt_rules", "cross-field rules failed", {"broken": broken})
        return self

    def to_manifest(self) -> dict:
        """The object as it appears in YAML: camelCase keys, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
