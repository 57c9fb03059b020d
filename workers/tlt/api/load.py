"""Reading ReasoningRLJob manifests from YAML files or dicts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from tlt.api.errors import FieldError, SpecError, from_validation_error, lenient_rule_errors
from tlt.api.model import API_GROUP, API_VERSION, KIND, ReasoningRLJob


class _Loader(yaml.SafeLoader):
    """YAML as Kubernetes reads it: `1e-6` is a number, not the string PyYAML makes of it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass
class Document:
    """One YAML document of a file: where it came from and what it holds."""

    source: str
    index: int
    body: object

    @property
    def where(self) -> str:
        return f"{self.source} (document {self.index + 1})"


def read_documents(path: str | Path) -> list[Document]:
    """All non-empty YAML documents of a file ('-' reads standard input)."""
    source = str(path)
    try:
        text = Path(path).read_text() if source != "-" else __import__("sys").stdin.read()
    except FileNotFoundError:
        raise SpecError([FieldError("", "no such file")]) from None
    except IsADirectoryError:
        raise SpecError([FieldError("", "is a directory; pass the YAML files in it")]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError([FieldError("", f"cannot read: {err}")]) from None
    try:
        bodies = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError([FieldError("", f"invalid YAML{where}: {problem}")]) from None
    return [Document(source, i, body) for i, body in enumerate(bodies) if body is not None]


def parse_job(body: object) -> ReasoningRLJob:
    """A validated ReasoningRLJob from a manifest dict, or SpecError with every problem."""
    if not isinstance(body, dict):
        raise SpecError([FieldError("", f"a manifest must be a mapping, got {type(body).__name__}")])
    api_version, kind = body.get("apiVersion"), body.get("kind")
    expected = f"{API_GROUP}/{API_VERSION}"
    if kind != KIND or api_version != expected:
        problems = []
        if kind != KIND:
            problems.append(FieldError("kind", f'must be "{KIND}", got {kind!r}; tlt reads ReasoningRLJob manifests'))
        if api_version != expected:
            problems.append(FieldError("apiVersion", f'must be "{expected}", got {api_version!r}'))
        raise SpecError(problems)
    try:
        return ReasoningRLJob.model_validate(body)
    except ValidationError as exc:
        errors = from_validation_error(exc, ReasoningRLJob) + lenient_rule_errors(ReasoningRLJob, body)
        raise SpecError(errors) from None


def load_jobs(path: str | Path) -> list[ReasoningRLJob]:
    """Every job of a file; SpecError naming the document and field on the first bad one."""
    jobs = []
    try:
        documents = read_documents(path)
    except SpecError as err:
        raise SpecError([FieldError("", f"{path}: {e.message}") for e in err.errors]) from None
    for doc in documents:
        try:
            jobs.append(parse_job(doc.body))
        except SpecError as err:
            raise SpecError([FieldError(e.path, f"{e.message} [{doc.where}]") for e in err.errors]) from None
    return jobs
