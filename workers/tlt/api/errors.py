"""Validation errors a user can act on: field path, bad value, what is allowed.

pydantic reports errors with its own vocabulary and locations; this module turns
them into `spec.rollout.replicas: must be >= 1, got 0`.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass

from pydantic import BaseModel, TypeAdapter, ValidationError

from tlt.api.model import DNS_LABEL, QUANTITY_PATTERN, STRATEGY_PATTERN

PATTERN_MEANINGS = {
    STRATEGY_PATTERN: "is not steps_topk_verifyTokens (three positive integers, e.g. 4_2_8)",
    DNS_LABEL: "is not a DNS label (lowercase letters, digits and '-', starting and ending alphanumeric)",
    QUANTITY_PATTERN: "is not a Kubernetes quantity (e.g. 16Gi, 512Mi)",
    r"^/": "must be an absolute path (starting with /)",
    r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$": "is not package.module:function",
}

# Location parts pydantic adds for union members and validators; they are not fields.
_UNION_TAG = re.compile(r"^(int|str|float|bool|none|constrained-\w+|literal\[.*\]|function-\w+\[.*\]|.*\[.*\])$")


@dataclass(frozen=True, order=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(Exception):
    """A manifest that is not a valid ReasoningRLJob; carries every error found."""

    def __init__(self, errors: list[FieldError]):
        self.errors = sorted(set(errors))
        super().__init__("\n".join(str(e) for e in self.errors))


def join_path(parts) -> str:
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part:
            path += f".{part}" if path else str(part)
    return path


def _show(value) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _model_at(root: type[BaseModel], parts) -> type[BaseModel] | None:
    """The model class found at a location (aliases, indices), to list its fields."""
    current: object = root
    for part in parts:
        model = _unwrap_model(current)
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        if field is None:
            return None
        current = field.annotation
    return _unwrap_model(current)


def _unwrap_model(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _unwrap_model(arg)
            if found is not None:
                return found
    return None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _message(err: dict, root: type[BaseModel], parts) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    got = f", got {_show(value)}"
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        parent = _model_at(root, parts[:-1])
        allowed = _field_names(parent) if parent else []
        close = difflib.get_close_matches(str(parts[-1]), allowed, n=1)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        return f"unknown field{hint} (allowed: {', '.join(allowed)})" if allowed else "unknown field"
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return f"must be {op} {ctx[key]}{got}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}{got}".replace("'", '"')
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer{got}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number{got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false{got}"
    if kind == "string_type":
        return f"must be a string{got}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping of fields{got}"
    if kind == "list_type":
        return f"must be a list{got}"
    if kind == "string_pattern_mismatch":
        meaning = PATTERN_MEANINGS.get(ctx.get("pattern"), f"does not match {ctx.get('pattern')}")
        return f"{_show(value)} {meaning}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters, got {len(value)}"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} item(s)"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg']}{got}"


def from_validation_error(exc: ValidationError, root: type[BaseModel]) -> list[FieldError]:
    """One FieldError per problem; union alternatives for one field are merged."""
    by_path: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        parts = [p for p in err["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p))]
        if err["type"] == "tlt_rules":
            for broken in err["ctx"]["broken"]:
                path = join_path([*parts, *broken["field"].split(".")])
                by_path.setdefault(path, []).append(broken["message"])
            continue
        message = _message(err, root, parts)
        index = re.match(r"^\[(\d+)\] (.*)$", message)  # item errors of list validators
        if index:
            parts, message = [*parts, int(index.group(1))], index.group(2)
        by_path.setdefault(join_path(parts), []).append(message)
    errors = []
    for path, messages in by_path.items():
        unique = list(dict.fromkeys(messages))
        if len(unique) > 1 and all(m.startswith("must be") for m in unique):
            # int | "auto": "must be an integer, got x" + 'must be one of "auto", got x'
            value = unique[0].rsplit(", got ", 1)[-1] if ", got " in unique[0] else None
            alternatives = " or ".join(m.removeprefix("must be ").rsplit(", got ", 1)[0] for m in unique)
            unique = [f"must be {alternatives}" + (f", got {value}" if value else "")]
        errors.extend(FieldError(path, m) for m in unique)
    return errors


def lenient_rule_errors(model: type[BaseModel], raw: object, parts: tuple = ()) -> list[FieldError]:
    """Cross-field rule errors of a manifest that also has field errors.

    pydantic skips an object's rules when any of its fields is invalid; to report
    every error at once, rebuild each object from its valid fields (defaults for the
    rest) and run its rules, skipping a rule whose inputs are themselves broken.
    """
    errors: list[FieldError] = []
    _lenient(model, raw, parts, errors)
    return errors


def _lenient(model: type[BaseModel], raw: object, parts: tuple, errors: list[FieldError]):
    if not isinstance(raw, dict):
        return None
    values = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in raw:
            continue
        value, sub = raw[key], _unwrap_model(field.annotation)
        if sub is not None and isinstance(value, dict):
            built = _lenient(sub, value, (*parts, key), errors)
        elif sub is not None and isinstance(value, list):
            built = [_lenient(sub, item, (*parts, key, i), errors) for i, item in enumerate(value)]
            built = None if any(b is None for b in built) else built
        else:
            try:
                kind = typing.Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
                built = TypeAdapter(kind).validate_python(value)
            except (ValidationError, TypeError, ValueError):
                built = None
        if built is not None:
            values[name] = built
    try:
        obj = model.model_construct(**values)
        obj.model_post_init(None)
    except Exception:  # a required field is broken: this object's rules cannot run
        return None
    for rule in getattr(model, "rules", ()):
        try:
            message = rule.check(obj)
        except Exception:
            continue
        if message:
            errors.append(FieldError(join_path([*parts, *rule.field.split(".")]), message))
    return obj
