"""Drafter tracking: Prometheus metrics and acceptance length per drafter and policy version.

Every rollout shard (`tlt.coordinator.shard.RolloutShard`) records into
`drafter_metrics()`, which lives in the engine's registry: a job pod serves them on
/metrics beside the engine's. Metric names (all prefixed `tlt_drafter_`):

- `loss` (gauge, by worker): mean loss of the last optimizer step
- `tokens_trained_total` (counter, by worker)
- `steps_total` (counter, by worker): optimizer steps
- `preemptions_total` (counter, by worker)
- `version` (gauge): the drafter version the shard's engine runs
- `version_pushes_total` (counter): drafter versions loaded into the shard's engine
- `acceptance_length` (gauge, by drafter_version and policy_version): running mean
  of accepted tokens per verification round (including the bonus token)
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from prometheus_client import CollectorRegistry, Counter, Gauge

from tlt.engine.metrics import metric_set


class AcceptanceTracker:
    """Mean acceptance length per (drafter version, policy version), in memory."""

    def __init__(self, keep: int = 256):
        self._lock = threading.Lock()
        self._sums: OrderedDict[tuple[int, int], list[float]] = OrderedDict()  # key -> [tokens, rounds]
        self.keep = keep

    def record(self, drafter_version: int, policy_version: int, tokens: float, rounds: int) -> float:
        key = (int(drafter_version), int(policy_version))
        with self._lock:
            acc = self._sums.setdefault(key, [0.0, 0])
            acc[0] += tokens
            acc[1] += rounds
            self._sums.move_to_end(key)
            while len(self._sums) > self.keep:
                self._sums.popitem(last=False)
            return acc[0] / acc[1] if acc[1] else 0.0

    def mean(self, drafter_version: int | None = None, policy_version: int | None = None) -> float | None:
        with self._lock:
            rows = [v for (d, p), v in self._sums.items()
                    if (drafter_version is None or d == drafter_version)
                    and (policy_version is None or p == policy_version)]
        tokens = sum(r[0] for r in rows)
        rounds = sum(r[1] for r in rows)
        return tokens / rounds if rounds else None

    def table(self) -> list[dict]:
        with self._lock:
            return [{"drafter_version": d, "policy_version": p, "acceptance_length": v[0] / v[1],
                     "rounds": v[1]} for (d, p), v in self._sums.items() if v[1]]


class DrafterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.loss = Gauge("tlt_drafter_loss", "Drafter loss of the last optimizer step", ["worker"], registry=r)
        self.tokens = Counter("tlt_drafter_tokens_trained_total", "Target tokens the drafter trained on",
                              ["worker"], registry=r)
        self.steps = Counter("tlt_drafter_steps_total", "Drafter optimizer steps", ["worker"], registry=r)
        self.preemptions = Counter("tlt_drafter_preemptions_total",
                                   "Drafter training runs preempted by rollout work", ["worker"], registry=r)
        self.version = Gauge("tlt_drafter_version", "Current drafter version", registry=r)
        self.pushes = Counter("tlt_drafter_version_pushes_total",
                              "Drafter versions pushed to rollout engines", registry=r)
        self.acceptance = Gauge("tlt_drafter_acceptance_length",
                                "Mean accepted tokens per verification round",
                                ["drafter_version", "policy_version"], registry=r)
        self.tracker = AcceptanceTracker()

    # called by the spot trainer and the shard
    def trained(self, worker: str, loss: float, tokens: int) -> None:
        self.loss.labels(worker).set(loss)
        self.tokens.labels(worker).inc(tokens)
        self.steps.labels(worker).inc()

    def preempted(self, worker: str) -> None:
        self.preemptions.labels(worker).inc()

    def set_version(self, version: int) -> None:
        self.version.set(version)

    def pushed(self) -> None:
        self.pushes.inc()

    # called by rollout shards with the rounds verified since their last call
    def accepted(self, drafter_version: int, policy_version: int, tokens: float, rounds: int) -> None:
        mean = self.tracker.record(drafter_version, policy_version, tokens, rounds)
        self.acceptance.labels(str(drafter_version), str(policy_version)).set(mean)



def drafter_metrics(registry: CollectorRegistry | None = None) -> DrafterMetrics:
    """The drafter metrics of `registry` (default: the engine's, which job pods serve), made once."""
    return metric_set(DrafterMetrics, registry)
