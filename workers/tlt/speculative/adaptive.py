"""When to speculate and with which strategy (pure control logic, no torch).

- `ThresholdSwitch`: speculation on while the running batch is at or below the
  threshold, off above threshold + hysteresis once on (so a batch hovering around the
  threshold does not flap every step).
- `Strategy` arms `steps_topk_verifyTokens`; a `BucketedBandit` keeps, per batch-size
  bucket, a sliding window of rewards (accepted tokens per second) per arm and picks
  the arm with the best median, exploring with probability epsilon, each arm in proportion
  to its median over the leader's (a slow arm's round is long).
- A compute guard drops arms whose verification width x batch exceeds the budget.
- The `auto` threshold comes from the measured cost table (`tlt.speculative.costs.CostTable`).
"""

from __future__ import annotations

import bisect
import random
import statistics
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Strategy:
    steps: int  # draft depth
    topk: int  # candidates per expanded node
    verify_tokens: int  # drafted nodes sent to verification (tree size without the root)

    def __post_init__(self):
        if self.steps < 1 or self.topk < 1 or self.verify_tokens < 1:
            raise ValueError(f"strategy {self.name}: steps, topk and verifyTokens must be >= 1")
        most = self.topk + (self.steps - 1) * self.topk * self.topk
        if self.verify_tokens > most:
            raise ValueError(
                f"strategy {self.name}: verifyTokens {self.verify_tokens} exceeds the {most} nodes "
                f"a depth-{self.steps}, top-{self.topk} tree can hold; lower verifyTokens"
            )

    @property
    def name(self) -> str:
        return f"{self.steps}_{self.topk}_{self.verify_tokens}"

    @classmethod
    def parse(cls, text: str) -> "Strategy":
        try:
            steps, topk, verify = (int(x) for x in str(text).split("_"))
        except ValueError:
            raise ValueError(
                f"strategy {text!r} is not of the form steps_topk_verifyTokens, e.g. 4_1_4 or 3_2_6"
            ) from None
        return cls(steps, topk, verify)


class ThresholdSwitch:
    def __init__(self, threshold: int, hysteresis: int = 0):
        if threshold < 0 or hysteresis < 0:
            raise ValueError("batchThreshold and hysteresis must be >= 0")
        self.threshold = threshold
        self.hysteresis = hysteresis
        self.on = False

    def update(self, running_batch: int) -> bool:
        if self.on:
            self.on = running_batch <= self.threshold + self.hysteresis
        else:
            self.on = running_batch <= self.threshold
        return self.on


def default_buckets(max_batch: int = 1024) -> list[int]:
    edges, b = [], 1
    while b < max_batch:
        edges.append(b)
        b *= 2
    return edges + [max_batch]


class BucketedBandit:
    """Epsilon-greedy over arms, one independent window of rewards per batch bucket."""

    def __init__(self, arms: list[Strategy], buckets: list[int] | None = None, epsilon: float = 0.1,
                 window: int = 32, seed: int = 0):
        if not arms:
            raise ValueError("the bandit needs at least one strategy")
        self.arms = list(arms)
        self.buckets = sorted(buckets or default_buckets())
        self.epsilon = epsilon
        self.window = window
        self.rng = random.Random(seed)
        self.rewards: dict[tuple[int, Strategy], deque] = {}

    def bucket(self, batch: int) -> int:
        """Index of the smallest bucket edge >= batch (the last bucket takes the rest)."""
        return min(bisect.bisect_left(self.buckets, batch), len(self.buckets) - 1)

    def median(self, batch: int, arm: Strategy) -> float | None:
        window = self.rewards.get((self.bucket(batch), arm))
        return statistics.median(window) if window else None

    def select(self, batch: int, allowed: list[Strategy] | None = None) -> Strategy:
        arms = allowed or self.arms
        untried = [a for a in arms if self.median(batch, a) is None]
        if untried:
            return untried[0]
        leader = self.leader(self.bucket(batch), arms)
        if len(arms) > 1 and self.rng.random() < self.epsilon:
            arm = self.rng.choice(arms)
            # A round of an arm k times slower than the leader costs k of the leader's: explore it
            # 1/k as often, so exploring costs under epsilon of the time whatever an arm costs. A young
            # drafter's 8-token chain at batch 1 runs ~4x slower than plain decoding: explored
            # uniformly (half of epsilon's rounds) it would add 0.05 x 3 = 15% to that part of the tail.
            if arm == leader or self.rng.random() * self.median(batch, leader) < self.median(batch, arm):
                return arm
        return leader

    def record(self, batch: int, arm: Strategy, reward: float) -> None:
        key = (self.bucket(batch), arm)
        self.rewards.setdefault(key, deque(maxlen=self.window)).append(reward)

    def leader(self, bucket: int, arms: list) -> object | None:
        """Among the measured `arms`, the one with the best median in bucket index `bucket` (ties: the
        earlier in `arms`); None when none is measured there."""
        measured = [a for a in arms if self.rewards.get((bucket, a))]
        if not measured:
            return None
        return max(measured, key=lambda a: (statistics.median(self.rewards[(bucket, a)]), -arms.index(a)))

    def forget(self, arms, bucket: int | None = None) -> None:
        """Drop the rewards of `arms` in bucket index `bucket` (default: every bucket): each is tried
        again before it competes there."""
        self.rewards = {key: window for key, window in self.rewards.items()
                        if key[1] not in arms or (bucket is not None and key[0] != bucket)}


# The bandit's arm for "no speculation": plain decoding competes with the strategies on
# measured tokens per second, so a weak drafter (or a cheap target) is simply not used.
PLAIN = "plain"


@dataclass
class AdaptiveManager:
    """Decides per step: speculation off (None) or the strategy to use.

    Below the threshold the bandit chooses among the strategies and plain decoding
    (the PLAIN arm); the engine reports plain steps through `record_plain`.
    """

    strategies: list[Strategy]
    batch_threshold: int
    hysteresis: int | None = None  # default: max(1, threshold // 4)
    epsilon: float = 0.1
    window: int = 32
    compute_budget: int | None = None  # max (verifyTokens + 1) x running batch per verify forward
    buckets: list[int] | None = None
    seed: int = 0
    include_plain: bool = True  # plain decoding is an arm too
    retry_tolerance: float = 0.1  # relative change of acceptance that makes a new drafter re-try the arms
    switch: ThresholdSwitch = field(init=False)
    bandit: BucketedBandit = field(init=False)
    _plain_chosen: bool = field(init=False, default=False)
    # drafter_changed's evidence: (tokens, sequence-rounds) per strategy under the current drafter
    # version, and the acceptance per strategy when the arms were last re-tried
    _version_rounds: dict = field(init=False, default_factory=dict)
    _reference: dict = field(init=False, default_factory=dict)

    def __post_init__(self):
        self.switch = ThresholdSwitch(self.batch_threshold, self._hysteresis_at(self.batch_threshold))
        arms = [*self.strategies, PLAIN] if self.include_plain else self.strategies
        self.bandit = BucketedBandit(arms, self.buckets, self.epsilon, self.window, self.seed)

    def set_threshold(self, threshold: int) -> None:
        """Speculate up to `threshold` from the next decision on (`auto` re-measured); a default
        hysteresis follows it, so raising the threshold from 1 to 64 does not leave the switch
        turning off at 66 instead of 81."""
        self.batch_threshold = self.switch.threshold = threshold
        self.switch.hysteresis = self._hysteresis_at(threshold)

    def _hysteresis_at(self, threshold: int) -> int:
        """The given hysteresis, else a quarter of `threshold` (at least 1)."""
        return self.hysteresis if self.hysteresis is not None else max(1, threshold // 4)

    def allowed(self, batch: int) -> list[Strategy]:
        if self.compute_budget is None:
            return self.strategies
        fit = [s for s in self.strategies if (s.verify_tokens + 1) * batch <= self.compute_budget]
        return fit or [min(self.strategies, key=lambda s: s.verify_tokens)]

    def decide(self, batch: int) -> Strategy | None:
        self._plain_chosen = False
        if batch <= 0 or not self.switch.update(batch):
            return None
        arms = self.allowed(batch) + ([PLAIN] if self.include_plain else [])
        arm = self.bandit.select(batch, arms)
        if arm == PLAIN:
            self._plain_chosen = True
            return None
        return arm

    def record(self, strategy: Strategy, batch: int, tokens: int, seconds: float) -> None:
        if seconds > 0:
            self.bandit.record(batch, strategy, tokens / seconds)
        done, rows = self._version_rounds.get(strategy, (0, 0))
        self._version_rounds[strategy] = (done + tokens, rows + batch)

    @property
    def plain_chosen(self) -> bool:
        """The last `decide` returned None because the bandit picked plain decoding."""
        return self._plain_chosen

    def record_plain(self, batch: int, tokens: int, seconds: float) -> None:
        """A plain decode step's reward, counted when the bandit chose plain decoding."""
        if self._plain_chosen and seconds > 0:
            self.bandit.record(batch, PLAIN, tokens / seconds)

    def drafter_changed(self) -> None:
        """A new drafter version: the strategies' rewards may have been measured with a drafter
        that accepted more or less. When the version just ended accepted about as many tokens
        per round as the one the arms were last re-tried with (within `retry_tolerance`, on the
        strategy it ran most), every reward still holds: re-trying the arms after each of the
        versions the coordinator pushes every step cost the quickstart 15% of its rollout time
        with a warmed-up drafter that no longer changed. Otherwise each bucket re-tries every
        strategy but its leader (a drafter that improves can change which arm wins, and one
        that lost to plain decoding early would rarely be tried again); the leader keeps its
        window, so the arms tried afresh compete with its median, not with one noisy round of it.
        Plain decoding's rewards always hold."""
        rounds, self._version_rounds = self._version_rounds, {}
        ended = {arm: tokens / rows for arm, (tokens, rows) in rounds.items() if rows}
        most = max(ended, key=lambda arm: rounds[arm][1], default=None)  # the strategy it ran most
        ref = self._reference.get(most)
        if ref is not None and abs(ended[most] / ref - 1.0) <= self.retry_tolerance:
            return
        # the ended version's acceptance stands for the new one's until that is measured
        self._reference = ended
        arms = [*self.strategies, PLAIN]
        for bucket in {key[0] for key in self.bandit.rewards}:
            leader = self.bandit.leader(bucket, arms)
            self.bandit.forget([s for s in self.strategies if s != leader], bucket)


@dataclass
class FixedStrategy:
    """Speculation always on with one strategy (the `on` mode and benchmarks)."""

    strategy: Strategy

    def decide(self, batch: int) -> Strategy | None:
        return self.strategy if batch > 0 else None

    def record(self, strategy: Strategy, batch: int, tokens: int, seconds: float) -> None:
        pass

    def record_plain(self, batch: int, tokens: int, seconds: float) -> None:
        pass

    def drafter_changed(self) -> None:
        pass
