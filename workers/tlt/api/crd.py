"""The CustomResourceDefinition, generated from the typed model.

A structural openAPIV3Schema: every object lists its properties, every field has a
type, constraints become minimum/maximum/enum/pattern, defaults are set where they
do not depend on other fields, and cross-field `Rule`s become CEL
`x-kubernetes-validations`. `crds/reasoningrljob.yaml` is this output; a test
fails when they drift.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tlt.api import model as m

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Step", "type": "string", "jsonPath": ".status.stepText", "description": "completed/total steps"},
    {"name": "Rollout", "type": "string", "jsonPath": ".status.rolloutText", "description": "ready/desired rollout workers, lent"},
    {"name": "Drafter", "type": "integer", "jsonPath": ".status.drafter.version", "description": "drafter version"},
    {"name": "Accept", "type": "number", "jsonPath": ".status.drafter.acceptanceLength", "description": "mean acceptance length"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _is_optional(annotation) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) < len(typing.get_args(annotation)):
            return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True
    return annotation, False


def _constraints(schema: dict, metadata) -> None:
    for c in metadata:
        if isinstance(c, annotated_types.Ge):
            schema["minimum"] = c.ge
        elif isinstance(c, annotated_types.Gt):
            schema["minimum"], schema["exclusiveMinimum"] = c.gt, True
        elif isinstance(c, annotated_types.Le):
            schema["maximum"] = c.le
        elif isinstance(c, annotated_types.Lt):
            schema["maximum"], schema["exclusiveMaximum"] = c.lt, True
        elif isinstance(c, annotated_types.MinLen):
            schema["minItems" if schema.get("type") == "array" else "minLength"] = c.min_length
        elif isinstance(c, annotated_types.MaxLen):
            schema["maxItems" if schema.get("type") == "array" else "maxLength"] = c.max_length
        elif hasattr(c, "pattern") and c.pattern:
            schema["pattern"] = c.pattern
        elif isinstance(c, FieldInfo):
            _constraints(schema, c.metadata)
            if isinstance(c.json_schema_extra, dict):
                schema.update(c.json_schema_extra)


def schema_of(annotation, metadata=()) -> dict:
    """The structural OpenAPI v3 schema of a type annotation."""
    annotation, _ = _is_optional(annotation)
    extra_metadata = []
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra_metadata = typing.get_args(annotation)
    schema = _base_schema(annotation)
    _constraints(schema, [*extra_metadata, *metadata])
    return schema


def _base_schema(annotation) -> dict:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return object_schema(annotation)
    if origin is Literal:
        return {"type": _json_type(type(args[0])), "enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        # int | str (quantities) and int | "auto": the only unions the spec uses.
        return {"x-kubernetes-int-or-string": True}
    if origin is list:
        return {"type": "array", "items": schema_of(args[0])}
    if origin is dict:
        value = args[1]
        if value is Any:
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return {"type": "object", "additionalProperties": schema_of(value)}
    if annotation in (int, float, bool, str):
        return {"type": _json_type(annotation)}
    raise TypeError(f"no CRD schema for {annotation!r}")


def _json_type(t: type) -> str:
    return {int: "integer", float: "number", bool: "boolean", str: "string"}[t]


def _default(field: FieldInfo):
    if field.default is not PydanticUndefined and field.default is not None:
        return field.default
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            # The whole default object, not {}: the API server checks CEL rules against
            # a default as written, before nested defaults would fill it.
            return value.to_manifest()
        return value
    return None


def object_schema(model: type[BaseModel]) -> dict:
    properties, required = {}, []
    for name, field in model.model_fields.items():
        key = field.alias or name
        prop = schema_of(field.annotation, field.metadata)
        if isinstance(field.json_schema_extra, dict):
            prop.update(field.json_schema_extra)
        if field.description:
            prop["description"] = " ".join(field.description.split())
        default = _default(field)
        if default is not None:
            prop["default"] = default
        if field.is_required():
            required.append(key)
        properties[key] = prop
    schema: dict = {"type": "object", "properties": properties}
    if model.__doc__:
        schema["description"] = " ".join(model.__doc__.split())
    if required:
        schema["required"] = required
    if model.model_config.get("extra") == "allow":
        schema["x-kubernetes-preserve-unknown-fields"] = True
    rules = [
        # fieldPath makes the server name the same field as `tlt validate` does.
        {"rule": r.cel, "message": r.cel_message, **({"fieldPath": f".{r.field}"} if r.field else {})}
        for r in getattr(model, "rules", ())
        if r.cel
    ]
    if rules:
        schema["x-kubernetes-validations"] = rules
    return schema


def build_crd() -> dict:
    spec = object_schema(m.ReasoningRLJobSpec)
    root = {
        "type": "object",
        "description": " ".join(m.ReasoningRLJob.__doc__.split()),
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": m.MAX_JOB_NAME_LENGTH, "pattern": m.DNS_LABEL},
                },
            },
            "spec": spec,
            "status": object_schema(m.ReasoningRLJobStatus),
        },
        "required": ["spec"],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{m.PLURAL}.{m.API_GROUP}", "labels": {"app.kubernetes.io/part-of": "tlt"}},
        "spec": {
            "group": m.API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": m.KIND,
                "listKind": f"{m.KIND}List",
                "plural": m.PLURAL,
                "singular": m.SINGULAR,
                "shortNames": list(m.SHORT_NAMES),
                "categories": ["tlt", "all"],
            },
            "versions": [
                {
                    "name": m.API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render_crd() -> str:
    header = "# Generated by `tlt crd` from tlt.api.model: do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)
