"""How many tokens a speculation round emits, and how the drafter gets better.

The model (simple on purpose, every knob in the profile):

- The drafter's quality is its per-token acceptance rate alpha for a chain draft.
  It grows with the tokens the drafter has learned from, K:
      alpha(K) = alpha_max - (alpha_max - alpha_initial) * exp(-K / tokens_scale)
- Each RL step adds the tokens trained on idle GPUs to K, but at most `epochs`
  passes over the step's rollouts: more GPUs go through the data faster, they do
  not make more data.
- A policy update makes part of what the drafter learned stale: K *= (1 - drift).
- A tree with `topk` candidates per level (at most verify_tokens / steps of them
  fit the verification budget) accepts a level with probability
      p = 1 - (1 - alpha) * (1 - alpha / 2) ** (width - 1)
  (candidates beyond the first are worth half as much: they are less likely).
- A round accepts j levels with probability p^j (1 - p) (j < steps) or p^steps, and
  emits j + 1 tokens (the target's own token at the first mismatch or the end).

Fixed distributions per strategy (e.g. measured by the engine) replace the model
when given; then acceptance does not change with training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tlt.speculative.adaptive import Strategy


@dataclass(frozen=True)
class AcceptanceModel:
    alpha_initial: float = 0.35
    alpha_max: float = 0.75
    tokens_scale: float = 1.0e8
    drift: float = 0.05
    epochs: float = 1.0
    lengths: dict[str, dict[int, float]] = field(default_factory=dict)  # strategy name -> {tokens: prob}

    def __post_init__(self):
        for name, dist in self.lengths.items():
            Strategy.parse(name)
            total = sum(dist.values())
            if total <= 0 or any(p < 0 for p in dist.values()) or any(n < 1 for n in dist):
                raise ValueError(f"acceptance lengths of {name}: need tokens >= 1 with non-negative probabilities")

    @classmethod
    def from_dict(cls, body: dict) -> "AcceptanceModel":
        lengths = {
            str(name): {int(k): float(v) for k, v in dist.items()} for name, dist in (body.get("lengths") or {}).items()
        }
        names = ("alpha_initial", "alpha_max", "tokens_scale", "drift", "epochs")
        numbers = {k: float(body[k]) for k in names if k in body}
        return cls(lengths=lengths, **numbers)

    def alpha(self, knowledge: float) -> float:
        gap = self.alpha_max - self.alpha_initial
        return self.alpha_max - gap * math.exp(-max(0.0, knowledge) / self.tokens_scale)

    def learned(self, trained_tokens: float, rollout_tokens: float) -> float:
        """What a step's drafter training adds to K: its tokens, at most `epochs` passes over the rollouts."""
        return min(trained_tokens, self.epochs * rollout_tokens)

    def after_policy_update(self, knowledge: float) -> float:
        return knowledge * (1.0 - self.drift)

    def distribution(self, strategy: Strategy, knowledge: float) -> tuple[np.ndarray, np.ndarray]:
        """(tokens emitted per round, probabilities) for one sequence."""
        fixed = self.lengths.get(strategy.name)
        if fixed:
            values = np.array(sorted(fixed), dtype=np.int64)
            probs = np.array([fixed[v] for v in values], dtype=float)
            return values, probs / probs.sum()
        return chain_distribution(strategy, self.alpha(knowledge))

    def mean(self, strategy: Strategy, knowledge: float) -> float:
        values, probs = self.distribution(strategy, knowledge)
        return float(values @ probs)

    def describe(self) -> dict:
        return {
            "alpha_initial": self.alpha_initial,
            "alpha_max": self.alpha_max,
            "tokens_scale": self.tokens_scale,
            "drift": self.drift,
            "epochs": self.epochs,
            "fixed_strategies": sorted(self.lengths),
        }


def level_acceptance(strategy: Strategy, alpha: float) -> float:
    width = max(1.0, min(float(strategy.topk), strategy.verify_tokens / strategy.steps))
    return 1.0 - (1.0 - alpha) * (1.0 - alpha / 2.0) ** (width - 1.0)


def chain_distribution(strategy: Strategy, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    p = level_acceptance(strategy, alpha)
    depth = strategy.steps
    probs = np.array([p**j * (1.0 - p) for j in range(depth)] + [p**depth])
    return np.arange(1, depth + 2, dtype=np.int64), probs / probs.sum()
