"""The rollout engine's speculation policy from a job's spec: the one translation that the
rollout shards (`tlt.coordinator.shard`) and the cluster simulator (`tlt.sim`) share."""

from __future__ import annotations

from collections.abc import Sequence

from tlt.speculative.adaptive import AdaptiveManager, FixedStrategy, Strategy


def speculates(spec) -> bool:
    """Rollout speculates at all: `speculative.mode` is not off and the job has a drafter."""
    return spec.speculative.mode != "off" and spec.drafter.enabled


def speculation_controller(spec, threshold: int, seed: int | None = None,
                           strategies: Sequence[Strategy] | None = None):
    """None (no speculation), the first strategy always (`mode: always`), or the adaptive manager:
    the bandit over the strategies at running batches up to `threshold` (`auto` already resolved).

    `seed`: the bandit's (default `algorithm.seed`); `strategies`: default the spec's arms."""
    if not speculates(spec):
        return None
    s = spec.speculative
    arms = list(strategies) if strategies is not None else [Strategy.parse(x) for x in s.strategies]
    if s.mode == "always":
        return FixedStrategy(arms[0])
    return AdaptiveManager(
        strategies=arms,
        batch_threshold=threshold,
        epsilon=s.epsilon,
        window=s.window,
        compute_budget=s.max_verify_tokens_per_batch,
        buckets=list(s.bucket_bounds),
        seed=spec.algorithm.seed if seed is None else seed,
    )
