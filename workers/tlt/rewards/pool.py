"""Scoring responses in a pool while generation goes on.

Submit each response as soon as it finishes; `gather()` waits for the rest at
the end of the rollout. Workers look the reward up by name, so a process pool
needs nothing picklable beyond strings. A call that runs longer than the pool's
`timeout` (spec.reward.timeoutSeconds) scores 0 and is logged; it is left running
in a daemon thread (Python cannot stop a thread), and the pool's worker moves on.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import threading
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

from tlt.rewards.registry import RewardError, get_reward

log = logging.getLogger("tlt.rewards")
TIMED_OUT = "timed out"  # what a worker returns for a call that overran the timeout


@functools.lru_cache(maxsize=None)
def _cached_reward(name: str):
    return get_reward(name)


def score(name: str, prompt: str, response: str, answer: str, meta: dict, timeout: float | None = None):
    """The reward of one response, or TIMED_OUT when it ran longer than `timeout` seconds."""
    reward = _cached_reward(name)
    if timeout is None:
        return reward(prompt, response, answer, **meta)
    box: dict = {}

    def call():
        try:
            box["value"] = reward(prompt, response, answer, **meta)
        except BaseException as err:  # re-raised in the pool's worker below
            box["error"] = err

    runner = threading.Thread(target=call, daemon=True, name="reward-call")
    runner.start()
    runner.join(timeout)
    if runner.is_alive():
        return TIMED_OUT
    if "error" in box:
        raise box["error"]
    return box["value"]


class RewardPool:
    """A pool of `workers` threads (default) or processes that score with reward `name`.

    The reward is resolved once here, so a bad name or plugin fails at
    construction with its clear message, not in the middle of a rollout.
    """

    def __init__(self, name: str, workers: int = 2, kind: str = "thread", timeout: float | None = None):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        get_reward(name)
        self.name = name
        self.timeout = timeout
        self.timed_out: list = []  # keys of the responses that scored 0 because their reward overran
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
        future = self._executor.submit(score, self.name, prompt, response, str(answer), meta, self.timeout)
        self._pending.append((key, future))
        return future

    def gather(self) -> dict:
        """Wait for every submitted response: {key: reward}. Clears the pending list."""
        pending, self._pending = self._pending, []
        results = {}
        for key, future in pending:
            try:
                value = future.result()
            except RewardError:
                raise
            except Exception as err:
                raise RewardError(
                    f"reward {self.name!r} failed on response {key!r}: "
                    f"{type(err).__name__}: {err}") from err
            if value == TIMED_OUT:
                value = 0.0
                self.timed_out.append(key)
                log.warning("reward %r ran longer than %gs on response %r: scored 0 (spec.reward.timeoutSeconds)",
                            self.name, self.timeout, key)
            results[key] = value
        return results

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
