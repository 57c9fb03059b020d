"""Scoring responses in a pool while generation goes on.

Submit each response as soon as it finishes; `gather()` waits for the rest at
the end of the rollout. Workers look the reward up by name, so a process pool
needs nothing picklable beyond strings.
"""

from __future__ import annotations

import functools
import multiprocessing
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

from tlt.rewards.registry import RewardError, get_reward


@functools.lru_cache(maxsize=None)
def _cached_reward(name: str):
    return get_reward(name)


def score(name: str, prompt: str, response: str, answer: str, meta: dict) -> float:
    return _cached_reward(name)(prompt, response, answer, **meta)


class RewardPool:
    """A pool of `workers` threads (default) or processes that score with reward `name`.

    The reward is resolved once here, so a bad name or plugin fails at
    construction with its clear message, not in the middle of a rollout.
    """

    def __init__(self, name: str, workers: int = 2, kind: str = "thread"):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        get_reward(name)
        self.name = name
        self._executor: Executor
        if kind == "thread":
            self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reward")
        elif kind == "process":
            # spawn, not fork: the parent usually holds torch threads and locks.
            self._executor = ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        else:
            raise ValueError(f"kind must be 'thread' or 'process', got {kind!r}")
        self._pending: list[tuple[object, Future]] = []

    def submit(self, key, prompt: str, response: str, answer: str, **meta) -> Future:
        """Start scoring one response; `key` identifies it in `gather()`'s result."""
        future = self._executor.submit(score, self.name, prompt, response, str(answer), meta)
        self._pending.append((key, future))
        return future

    def gather(self) -> dict:
        """Wait for every submitted response: {key: reward}. Clears the pending list."""
        pending, self._pending = self._pending, []
        results = {}
        for key, future in pending:
            try:
                results[key] = future.result()
            except RewardError:
                raise
            except Exception as err:
                raise RewardError(
                    f"reward {self.name!r} failed on response {key!r}: "
                    f"{type(err).__name__}: {err}") from err
        return results

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
