"""Elastic data parallel for the drafter: replicas of one drafter version train on
whatever workers are lent; at a sync point their weights are averaged, weighted by
the optimizer steps each trained on that version, into version v+1, which is pushed
to every rollout engine.

Membership is free: a worker may check out the current version at any time, report
whenever it is preempted or asked to, or vanish; a sync uses the reports it has for
the current version and ignores the rest (stale reports of an older version carry
updates of weights that no longer exist). Nothing here blocks: it is plain state
guarded by a lock, driven by the coordinator.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch


def weighted_average(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """sum_i w_i * state_i / sum_i w_i, per tensor, accumulated in float64 and cast back."""
    if not states or len(states) != len(weights):
        raise ValueError("weighted_average needs as many weights as states, at least one")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError("averaging weights must be >= 0 with a positive sum")
    keys = list(states[0])
    for s in states[1:]:
        if list(s) != keys and set(s) != set(keys):
            raise ValueError("replica states have different parameter names")
    out = {}
    for k in keys:
        ref = states[0][k]
        acc = torch.zeros(ref.shape, dtype=torch.float64, device=ref.device)
        for s, w in zip(states, weights):
            if w:
                acc += s[k].to(ref.device, torch.float64) * (w / total)
        out[k] = acc.to(ref.dtype)
    return out


@dataclass
class Report:
    worker: str
    version: int
    steps: int
    state: dict[str, torch.Tensor]


def _copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


class DrafterSync:
    """Versions of the drafter and the replicas training on the current one."""

    def __init__(self, initial: Mapping[str, torch.Tensor], version: int = 0, metrics=None):
        self._lock = threading.Lock()
        self.version = version
        self.state = _copy(initial)
        self.members: dict[str, int] = {}  # worker -> version it checked out
        self.reports: dict[str, Report] = {}
        self.stale_reports = 0
        self.metrics = metrics
        self.history: list[dict] = []  # one entry per version made: contributors and their steps

    def checkout(self, worker: str) -> tuple[int, dict[str, torch.Tensor]]:
        """Join (or rejoin) as a replica: the current version and a copy of its weights."""
        with self._lock:
            self.members[worker] = self.version
            return self.version, _copy(self.state)

    def report(self, worker: str, version: int, steps: int, state: Mapping[str, torch.Tensor]) -> bool:
        """A replica's weights after `steps` optimizer steps on `version`; the latest report
        of a worker replaces its earlier one. Returns False for a stale version."""
        with self._lock:
            if version != self.version:
                self.stale_reports += 1
                return False
            if steps > 0:
                self.reports[worker] = Report(worker, version, int(steps), _copy(state))
            return True

    def leave(self, worker: str, keep_report: bool = True) -> None:
        """A worker goes back to rollout (its report stays) or is gone (keep_report=False)."""
        with self._lock:
            self.members.pop(worker, None)
            if not keep_report:
                self.reports.pop(worker, None)

    def sync(self) -> int:
        """Average the reports of the current version into the next one; no reports: no
        new version. Returns the (possibly unchanged) current version."""
        with self._lock:
            reports = [r for r in self.reports.values() if r.version == self.version]
            if not reports:
                return self.version
            self.state = weighted_average([r.state for r in reports], [r.steps for r in reports])
            self.history.append({"version": self.version + 1,
                                 "replicas": {r.worker: r.steps for r in reports}})
            self.version += 1
            self.reports.clear()
            if self.metrics is not None:
                self.metrics.set_version(self.version)
            return self.version

    def push(self, engines: Iterable) -> int:
        """Send the current version to every engine; returns how many took it."""
        with self._lock:
            version, state = self.version, _copy(self.state)
        n = 0
        for engine in engines:
            push_to_engine(engine, state, version)
            n += 1
            if self.metrics is not None:
                self.metrics.pushed()
        return n


# Engine methods that take new drafter weights, in order of preference. The torch
# engine and the vLLM backend (tlt.engine) both offer `update_drafter_weights(weights)`;
# the vLLM backend reloads the draft weights through its worker's drafter module where
# the pinned vLLM allows it, and otherwise raises naming the fix (restart with the folder).
PUSH_METHODS = ("update_drafter_weights", "update_drafter", "load_drafter_weights")


def push_to_engine(engine, state: Mapping[str, torch.Tensor], version: int) -> None:
    import inspect

    for name in PUSH_METHODS:
        fn = getattr(engine, name, None)
        if callable(fn):
            try:
                takes_version = "version" in inspect.signature(fn).parameters
            except (TypeError, ValueError):
                takes_version = False
            if takes_version:
                fn(dict(state), version=version)
            else:
                fn(dict(state))
            return
    raise TypeError(
        f"{type(engine).__name__} has no drafter weight update method "
        f"(expected one of {', '.join(PUSH_METHODS)})")
