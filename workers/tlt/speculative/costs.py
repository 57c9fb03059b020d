"""The cost table: what one decode iteration costs on a machine, by running batch size (pure, no torch).

One class for the measurement and its consumers: `tlt bench costs` (`tlt.engine.costs.measure_costs`)
measures it and writes it as JSON (`to_json`); the coordinator resolves `batchThreshold: auto`
from it (`auto_threshold`); the simulator (`tlt.sim.costs`) reads it, or a hand-written or
built-in table, and times decode iterations with it (`iteration_seconds`).

- `target_seconds[batch][width]`: one target forward of `width` new tokens per sequence (the
  verify width; 1 is plain decoding) with a KV cache of `context_len` tokens per sequence
  (0: an empty cache, the simulator's convention, which adds the KV term per context held).
- `drafter_ratio`: a drafter forward over a target forward of the same shape.
- `kv_seconds_per_token`: a forward's growth per token of KV cache held; `attention_reads`:
  how that counts context, each sequence's own (`sum`, paged attention) or every row up to
  the longest (`longest`, the torch engine).
- `step_overhead_seconds[batch]`, `round_overhead_seconds[batch]`: the engine's own time on top
  of the forwards per plain iteration and per speculative round (`round_strategy`).
- `prefill_fixed_seconds`, `prefill_tokens_per_second`: admitting fresh requests.
- `device`, `model`, `drafter_seconds[batch]`: what was measured, for the record.

Every field but the forward table is optional (a hand-written table gives what it knows).
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field, replace

from tlt.speculative.adaptive import Strategy

MIN_SPEEDUP = 1.05  # `auto` speculates where the table predicts at least this much

_BATCH_MAPS = ("drafter_seconds", "step_overhead_seconds", "round_overhead_seconds")


class CostTableError(ValueError):
    """A cost table that cannot be used; the message names the fix."""


@dataclass(frozen=True, kw_only=True)
class CostTable:
    device: str = ""
    context_len: int = 0  # KV tokens per sequence the forwards held
    target_seconds: dict[int, dict[int, float]]  # [batch][width] seconds of one target forward
    drafter_ratio: float = 0.1  # drafter forward / target forward, median over batch sizes at width 1
    drafter_seconds: dict[int, float] = field(default_factory=dict)  # [batch] at width 1
    model: str = ""
    # Engine terms (empty / 0 when not measured; see the module docstring).
    kv_seconds_per_token: float = 0.0
    attention_reads: str = "sum"
    step_overhead_seconds: dict[int, float] = field(default_factory=dict)  # [batch]
    round_overhead_seconds: dict[int, float] = field(default_factory=dict)  # [batch]
    round_strategy: str = ""
    prefill_fixed_seconds: float = 0.0
    prefill_tokens_per_second: float = 0.0

    def __post_init__(self):
        if not self.target_seconds or any(not row for row in self.target_seconds.values()):
            raise CostTableError("the cost table has no forward times; give forward_seconds: {batch: {width: seconds}}")
        if any(1 not in row for row in self.target_seconds.values()):
            raise CostTableError("every batch size of the cost table needs the plain-decoding width 1")
        if self.attention_reads not in ("sum", "longest"):
            raise CostTableError(f"attention_reads must be sum or longest, got {self.attention_reads!r}")
        object.__setattr__(self, "_memo", {})

    # ---- the file `tlt bench costs` writes ----
    def to_json(self) -> dict:
        d = asdict(self)
        d["target_seconds"] = {str(b): {str(w): s for w, s in row.items()} for b, row in self.target_seconds.items()}
        for key in _BATCH_MAPS:
            d[key] = {str(b): s for b, s in getattr(self, key).items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "CostTable":
        d = dict(d)
        d["target_seconds"] = {int(b): {int(w): float(s) for w, s in row.items()}
                               for b, row in d["target_seconds"].items()}
        for key in _BATCH_MAPS:
            d[key] = {int(b): float(s) for b, s in (d.get(key) or {}).items()}
        return cls(**d)

    # ---- what it predicts ----
    def auto_threshold(self, strategy: Strategy, acceptance_length: float = 2.0) -> int:
        """The largest measured batch size up to which `strategy` is predicted to pay (every smaller
        measured size pays too); 0 when it never pays."""
        best = 0
        for batch in sorted(self.target_seconds):
            if self.predicted_speedup(batch, strategy, acceptance_length) < MIN_SPEEDUP:
                break
            best = batch
        return best

    def predicted_speedup(self, batch: int, strategy: Strategy, acceptance_length: float) -> float:
        """Plain time per token over speculative time per token at `batch`: a round drafts, verifies
        and emits `acceptance_length` tokens per sequence, plain decoding one per iteration, each with
        the engine's own overhead where the table measured it."""
        return acceptance_length * self.iteration_seconds(batch, None) / self.iteration_seconds(batch, strategy)

    def at_context(self, context_len: int) -> "CostTable":
        """The table as if its forwards held `context_len` KV tokens per sequence (the KV term moves each
        forward by kv x batch x the difference; a forward keeps at least a tenth of its measured time)."""
        kv, moved = self.kv_seconds_per_token, context_len - self.context_len
        table = {b: {w: max(0.1 * t, t + kv * b * moved) for w, t in row.items()} for b, row in self.target_seconds.items()}
        return replace(self, target_seconds=table, context_len=context_len)

    def forward_seconds(self, batch: int, width: int) -> float:
        """Target forward time, linear in batch and in width between measured points (linear beyond)."""
        batches = sorted(self.target_seconds)
        lo, hi, frac = _bracket(batches, batch)
        at_lo = _interp(self.target_seconds[lo], width)
        at_hi = _interp(self.target_seconds[hi], width)
        return max(0.0, at_lo + (at_hi - at_lo) * frac)

    def iteration_seconds(self, batch: int, strategy: Strategy | None) -> float:
        """One decode iteration without the KV term: a plain forward, or draft + verify, plus
        the engine's measured overhead per iteration or round (0 unless measured)."""
        key = (batch, strategy)
        if key not in self._memo:
            if strategy is None:
                self._memo[key] = self.forward_seconds(batch, 1) + self.step_overhead(batch)
            else:
                verify = self.forward_seconds(batch, strategy.verify_tokens + 1)
                draft = strategy.steps * self.drafter_ratio * self.forward_seconds(batch, strategy.topk)
                self._memo[key] = verify + draft + self.round_overhead(batch)
        return self._memo[key]

    def step_overhead(self, batch: int) -> float:
        """The engine's time per plain iteration on top of the forward, at `batch`."""
        return _overhead(self.step_overhead_seconds, batch)

    def round_overhead(self, batch: int) -> float:
        """The engine's time per speculative round on top of its forwards, at `batch`."""
        return _overhead(self.round_overhead_seconds, batch)

    def peak_tokens_per_second(self) -> float:
        """Most tokens one forward processes per second: a stand-in for prefill throughput."""
        return max(b * w / s for b, row in self.target_seconds.items() for w, s in row.items() if s > 0)


def _overhead(per_batch: dict[int, float], batch: int) -> float:
    """An engine overhead at `batch`: linear between measured batch sizes, the nearest end beyond."""
    if not per_batch:
        return 0.0
    batches = sorted(per_batch)
    if batch <= batches[0]:
        return per_batch[batches[0]]
    if batch >= batches[-1]:
        return per_batch[batches[-1]]
    lo, hi, frac = _bracket(batches, batch)
    return per_batch[lo] + (per_batch[hi] - per_batch[lo]) * frac


def _bracket(points: list[int], x: float) -> tuple[int, int, float]:
    """Neighbours of x among sorted points and x's fraction between them (beyond the ends: extrapolate)."""
    if len(points) == 1:
        return points[0], points[0], 0.0
    i = bisect.bisect_left(points, x)
    i = min(max(i, 1), len(points) - 1)
    lo, hi = points[i - 1], points[i]
    return lo, hi, (x - lo) / (hi - lo)


def _interp(row: dict[int, float], width: int) -> float:
    widths = sorted(row)
    lo, hi, frac = _bracket(widths, width)
    if frac < 0:  # below the smallest measured width: no cheaper than it
        frac = 0.0
    return row[lo] + (row[hi] - row[lo]) * frac
