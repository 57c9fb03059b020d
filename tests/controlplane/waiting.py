"""Polling with a deadline, shared by the control-plane tests."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 60, interval: float = 0.5, what: str = "condition",
             retry_on: tuple[type[BaseException], ...] = ()):
    """The first truthy value of `predicate()`, or AssertionError naming `what` and the last value.

    Exceptions of the `retry_on` types count as "not yet" (e.g. an object the API server has
    not created yet); the last one is named if time runs out.
    """
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except retry_on as err:
            last = err
        if last and not isinstance(last, BaseException):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
