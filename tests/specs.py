"""ReasoningRLJob manifests for tests: the built-in tiny model on the arith task, changed per test."""

from __future__ import annotations

import copy

from tlt.api.load import parse_job


def manifest(name: str = "job", spec: dict | None = None, **metadata) -> dict:
    """A job on the built-in tiny model and the arith task; `spec`'s top-level fields replace or add to those."""
    return {
        "apiVersion": "tlt.dev/v1alpha1",
        "kind": "ReasoningRLJob",
        "metadata": {"name": name, **metadata},
        "spec": {"model": {"builtin": "tiny-arith"}, "task": {"name": "arith"}, **copy.deepcopy(spec or {})},
    }


def with_fields(body: dict, **changes) -> dict:
    """A copy of `body` with spec fields set by dotted path: `with_fields(body, **{"rollout.replicas": 2})`."""
    body = copy.deepcopy(body)
    for path, value in changes.items():
        node = body["spec"]
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return body


def spec_of(body: dict, **changes):
    """The parsed, defaulted spec of `body` with `changes` (as in `with_fields`)."""
    return parse_job(with_fields(body, **changes)).spec
