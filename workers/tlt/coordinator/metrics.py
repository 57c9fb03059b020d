"""Prometheus metrics of the RL loop (served with the engine's registry by job pods and `tlt run`)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tlt.engine.metrics import metric_set

STEP_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600, 7200)


@dataclass
class CoordinatorMetrics:
    step_seconds: Histogram
    steps: Counter
    reward: Gauge
    accuracy: Gauge
    acceptance_length: Gauge
    lent_fraction: Gauge
    drafter_version: Gauge

    def record_step(self, record: dict) -> None:
        for phase in ("rollout", "reward", "train", "sync"):
            self.step_seconds.labels(phase=phase).observe(record[f"time_{phase}"])
        self.step_seconds.labels(phase="total").observe(record["step_seconds"])
        self.steps.inc()
        self.reward.set(record["reward_mean"])
        self.acceptance_length.set(record["acceptance_length"])
        self.lent_fraction.set(record["lent_fraction"])
        self.drafter_version.set(record["drafter_version"])


def _coordinator_metrics(registry: CollectorRegistry) -> CoordinatorMetrics:
    return CoordinatorMetrics(
        step_seconds=Histogram("tlt_coordinator_step_seconds", "RL step time by phase (rollout, reward, train, sync, total)",
                               ["phase"], buckets=STEP_BUCKETS, registry=registry),
        steps=Counter("tlt_coordinator_steps", "RL steps completed", registry=registry),
        reward=Gauge("tlt_coordinator_reward_mean", "mean training reward of the last step", registry=registry),
        accuracy=Gauge("tlt_coordinator_heldout_accuracy", "held-out accuracy at the last evaluation", registry=registry),
        acceptance_length=Gauge("tlt_coordinator_acceptance_length", "mean acceptance length in the last step's rollout",
                                registry=registry),
        lent_fraction=Gauge("tlt_coordinator_lent_fraction", "fraction of rollout worker time lent to drafter training",
                            registry=registry),
        drafter_version=Gauge("tlt_coordinator_drafter_version", "drafter version in use", registry=registry),
    )


def coordinator_metrics(registry: CollectorRegistry | None = None) -> CoordinatorMetrics:
    """The loop's metrics in `registry` (default: the engine's), created once per registry."""
    return metric_set(_coordinator_metrics, registry)
