"""Elastic data parallel for the drafter: replicas of one drafter version train on
whatever workers are lent (`tlt.coordinator.shard.RolloutShard`); at a sync point
(`WorkerPool.sync_drafters`) their weights are averaged, weighted by the optimizer
steps each trained on that version, into version v+1, which every shard loads.

A worker that trained nothing this version (lent late, never lent, or without a
trainable drafter) does not count; none trained: no new version.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

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


def average_replicas(reports: Iterable[tuple[int, Mapping[str, torch.Tensor] | None]]) -> dict[str, torch.Tensor] | None:
    """The next drafter version from `(optimizer steps in this version, weights)` per replica
    (weights None: a worker without a trainable drafter), or None when no replica trained."""
    trained = [(steps, state) for steps, state in reports if state is not None and steps > 0]
    if not trained:
        return None
    return weighted_average([state for _, state in trained], [float(steps) for steps, _ in trained])
