"""What every task provides, and the registry that finds a task by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Problem:
    """One prompt with its verifiable answer; `trace` is a reference response (may be imperfect)."""

    prompt: str
    answer: str
    trace: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)


class Task(Protocol):
    name: str

    def problems(self, split: str, count: int, seed: int = 0) -> list[Problem]:
        """`count` problems of `split` ("train" or "heldout"), the same list for the same seed."""

    def verify(self, prompt: str, response: str, answer: str) -> float:
        """1.0 when `response` ends with the correct final answer in the task's format, else 0.0."""


_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(name: str, factory: Callable[..., Task]) -> None:
    _REGISTRY[name] = factory


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str, **options) -> Task:
    """The task called `name`, built with `options` (e.g. max_response_tokens for "arith")."""
    if name not in _REGISTRY:
        known = ", ".join(task_names()) or "none"
        raise KeyError(f"unknown task {name!r}: known tasks are {known}")
    return _REGISTRY[name](**options)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def iter_chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
