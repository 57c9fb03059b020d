"""Reward functions by name: the task verifier, math answers, exact match, or a plugin.

A reward function has the signature `(prompt, response, answer, **meta) -> float`.
Names: "task" (the built-in task's verifier; `meta["task"]` names the task,
default "arith"), "math", "exact", or "package.module:function" for your own.
"""

from __future__ import annotations

import importlib
import math
import numbers
from typing import Callable, Protocol

from tlt.rewards.math_answer import math_reward


class RewardFn(Protocol):
    def __call__(self, prompt: str, response: str, answer: str, **meta) -> float: ...


class RewardError(ValueError):
    """A reward function that cannot be found, loaded or trusted; the message names the fix."""


def exact_reward(prompt: str, response: str, answer: str, **meta) -> float:
    """1.0 when the response equals the answer after trimming surrounding whitespace."""
    return 1.0 if response.strip() == str(answer).strip() else 0.0


def task_reward(prompt: str, response: str, answer: str, **meta) -> float:
    """The verifier of the task named by `meta["task"]` (default the built-in "arith")."""
    from tlt.tasks import get_task

    return get_task(meta.get("task", "arith")).verify(prompt, response, answer)


BUILTIN: dict[str, RewardFn] = {"task": task_reward, "math": math_reward, "exact": exact_reward}


def get_reward(name: str) -> RewardFn:
    """The reward function called `name`, checked so that it always returns a float."""
    if not isinstance(name, str) or not name.strip():
        raise RewardError("reward name is empty: use task, math, exact or module:function")
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" not in name:
        raise RewardError(
            f"unknown reward {name!r}: use one of {', '.join(BUILTIN)} or a plugin written "
            "as 'package.module:function'")
    return checked(load_plugin(name), name)


def load_plugin(spec: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise RewardError(f"reward plugin {spec!r} must be written as 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any import-time failure of user code
        raise RewardError(
            f"reward plugin {spec!r}: cannot import module {module_name!r} ({type(err).__name__}: "
            f"{err}); install it or put it on PYTHONPATH") from err
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise RewardError(
                f"reward plugin {spec!r}: module {module_name!r} has no attribute {attr!r}; "
                "check the function name after the colon")
        target = getattr(target, part)
    if not callable(target):
        raise RewardError(
            f"reward plugin {spec!r}: {attr!r} is a {type(target).__name__}, not a function; "
            "point it at a callable (prompt, response, answer, **meta) -> float")
    return target


def checked(fn: Callable, name: str) -> RewardFn:
    """Wrap `fn` so a non-number (or NaN) result raises RewardError naming the plugin."""
    return _Checked(fn, name)


class _Checked:
    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name
        self.__name__ = getattr(fn, "__name__", "reward")

    def __call__(self, prompt: str, response: str, answer: str, **meta) -> float:
        value = self.fn(prompt, response, answer, **meta)
        # bool is a number here on purpose: `return predicted == answer` is a fine reward.
        if not isinstance(value, numbers.Real):
            raise RewardError(
                f"reward plugin {self.name!r} returned {value!r} ({type(value).__name__}); it "
                "must return a number (float, int or bool)")
        value = float(value)
        if math.isnan(value):
            raise RewardError(f"reward plugin {self.name!r} returned NaN; it must return a number")
        return value
