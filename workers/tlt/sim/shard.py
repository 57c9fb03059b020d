"""One rollout shard's decoding, simulated in chunks of decode iterations.

A chunk is a run of iterations over which the adaptive manager's decision holds, so
the simulator jumps over it in one event instead of one per token:

- plain decoding: every sequence emits one token per iteration. While the manager
  keeps speculation off (the batch stays above its threshold, or there is no
  manager) the chunk runs through finishes, batch size shrinking segment by
  segment, exactly; it ends where the batch falls to where a new decision is due.
- speculation: each sequence's tokens over k rounds are one draw of the sum of k
  rounds (multinomial over the acceptance distribution), capped at what it has left;
  a sequence that runs out leaves the batch at the round its own pace reaches its
  end, and later rounds are charged at the smaller batch. The decision is kept while
  the batch stays in the manager's bucket (the bandit learns per bucket), for at
  most `max_chunk_iterations` rounds so the bandit hears back often, and for far
  fewer while the bandit has few rewards of that arm in that bucket (the real engine
  decides every iteration, so trying an arm costs it one round, not a long chunk).
  `exact=True`
  instead keeps k small enough that nobody can finish inside (k x the longest round
  <= the shortest remaining): exact in distribution, for hand-checked schedules.
- a chunk can be interrupted (a consolidation moves sequences now): plain chunks are
  cut exactly; a speculative one is redrawn for the rounds that fit the elapsed time
  (its first draw was never observed, so the redraw has the right distribution).

Iteration time is the cost table's forward time (plus the engine's measured overhead
per iteration or round) plus the KV term times the context held: the sum of every
sequence's own context, or batch x the longest one when the engine pads attention to
it (`attention_reads: longest`, the torch engine); within a speculative chunk each
sequence's context grows at its own even pace. Admitting queued sequences costs the
profile's fixed prefill time plus their prompt tokens at the prefill throughput.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from tlt.sim.costs import Profile
from tlt.speculative.adaptive import PLAIN, Strategy


@dataclass
class Chunk:
    seconds: float  # decode time
    prefill_seconds: float  # admitting queued or moved sequences
    tokens: np.ndarray  # tokens emitted per running sequence
    iterations: int
    strategy: Strategy | None
    batch: int
    # plain chunks: (seconds at the segment's end, iterations at its end, seconds per iteration at its start, growth)
    segments: list[tuple[float, int, float, float]] = field(default_factory=list)
    finish_seconds: list[float] = field(default_factory=list)  # decode seconds of each finish, sorted

    @property
    def total_seconds(self) -> float:
        return self.seconds + self.prefill_seconds


class ShardDecoder:
    """Sequences of one shard: running ones decode, queued ones wait for a slot."""

    def __init__(self, max_batch: int, profile: Profile, rng: np.random.Generator, max_chunk_iterations: int = 256,
                 exact: bool = False):
        self.max_batch = max_batch
        self.profile = profile
        self.rng = rng
        self.max_chunk_iterations = max_chunk_iterations
        self.exact = exact
        self.remaining = np.zeros(0, dtype=np.int64)  # tokens left per running sequence
        self.context = np.zeros(0, dtype=np.int64)  # prompt + generated per running sequence
        self.generated_of = np.zeros(0, dtype=np.int64)
        self.waiting: deque[tuple[int, int, int]] = deque()  # (remaining, context, generated)
        self.finished = 0
        self.generated = 0
        self.pending: Chunk | None = None
        self._acceptance = None

    # -- state -----------------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self.remaining)

    @property
    def queued(self) -> int:
        return len(self.waiting)

    @property
    def work(self) -> int:
        return self.running + self.queued

    def assign(self, lengths: np.ndarray, prompt_tokens: int) -> None:
        """A new step's requests, queued."""
        self.finished = 0
        self.generated = 0
        for n in lengths:
            self.waiting.append((int(n), prompt_tokens, 0))

    def receive(self, moved: list[tuple[int, int, int]]) -> None:
        """Sequences moved here by consolidation: first in line (they were running)."""
        for item in reversed(moved):
            self.waiting.appendleft(item)

    def take(self, count: int) -> list[tuple[int, int, int]]:
        """Give away `count` sequences: queued ones first, then the running ones cheapest to re-prefill."""
        out: list[tuple[int, int, int]] = []
        while self.waiting and len(out) < count:
            out.append(self.waiting.pop())
        left = count - len(out)
        if left > 0 and self.running:
            order = np.argsort(self.context, kind="stable")[:left]
            out += [(int(self.remaining[i]), int(self.context[i]), int(self.generated_of[i])) for i in order]
            keep = np.ones(self.running, dtype=bool)
            keep[order] = False
            self._keep(keep)
        return out

    # -- decoding --------------------------------------------------------------
    def plan_chunk(self, decide, acceptance, stays_off_above: int | None, holds_above=None, rounds_cap=None,
                   chose_plain=None) -> Chunk:
        """Admit queued sequences, ask `decide(batch)` for a strategy, draw the next chunk.

        `acceptance(strategy) -> (values, probs)`. `stays_off_above`: once `decide` said no,
        it keeps saying no for every batch above this size (None: it may change its mind
        at any size). `holds_above(batch)`: a strategy chosen at `batch` is kept while the
        batch stays above this size (the manager's bucket; None: one decision per finish).
        `rounds_cap(batch, strategy)`: most rounds before deciding again (default
        `max_chunk_iterations`). `chose_plain()`: the None just returned was the bandit's
        plain arm (held like a strategy), not the switch being off. The chunk stays
        `pending` until `commit`.
        """
        admitted, prefill_tokens = self._admit()
        batch = self.running
        strategy = decide(batch)
        if strategy is None and chose_plain is not None and chose_plain():
            floor = batch - 1 if holds_above is None or self.waiting else min(batch - 1, holds_above(batch))
            cap = rounds_cap(batch, PLAIN) if rounds_cap else self.max_chunk_iterations
            chunk = self._plain(batch, floor, rounds=cap)
        elif strategy is None:
            floor = batch if stays_off_above is None or self.waiting else stays_off_above
            chunk = self._plain(batch, floor)
        else:
            self._acceptance = acceptance(strategy)
            floor = batch - 1 if holds_above is None or self.waiting else min(batch - 1, holds_above(batch))
            cap = rounds_cap(batch, strategy) if rounds_cap else self.max_chunk_iterations
            chunk = self._speculative(batch, strategy, self._acceptance, floor=floor, cap=cap)
        chunk.prefill_seconds = 0.0
        if admitted:
            chunk.prefill_seconds = (self.profile.prefill_fixed_seconds
                                     + prefill_tokens / self.profile.prefill_tokens_per_second)
        self.pending = chunk
        return chunk

    def _plain(self, batch: int, floor: int, rounds: int | None = None) -> Chunk:
        """Plain iterations through every finish that leaves the batch above `floor` (and the one that
        does not), or `rounds` iterations."""
        finish = self.remaining.astype(float)
        return self._segments(batch, None, finish, self.remaining, np.ones(batch), floor, rounds=rounds)

    def _speculative(self, batch: int, strategy: Strategy, dist, floor: int = 0, rounds: int | None = None,
                     cap: int | None = None) -> Chunk:
        """Rounds of one strategy; the chunk ends about where the batch falls to `floor`."""
        values, probs = dist
        mean = float(values @ probs)
        if rounds is None:
            if self.exact:  # nobody can finish inside: exact in distribution
                rounds = max(1, int(self.remaining.min()) // int(values.max()))
            else:  # until the (batch - floor)-th sequence is expected to finish
                kth = max(1, batch - floor) - 1
                rounds = int(np.ceil(np.partition(self.remaining, kth)[kth] / mean))
            rounds = max(1, min(rounds, cap or self.max_chunk_iterations))
        if rounds == 0:
            draws = np.zeros(batch, dtype=np.int64)
        else:
            draws = self.rng.multinomial(rounds, probs, size=batch) @ values
        rates = draws / max(1, rounds)  # tokens per round of each sequence in this chunk
        leaving = draws >= self.remaining
        if not leaving.any():  # the batch holds for the whole chunk: one segment
            costs = self.profile.costs
            kv = costs.kv_seconds_per_token
            at_start, at_end = self._kv_load(self.context, self.context + draws)
            per = costs.iteration_seconds(batch, strategy) + kv * at_start
            growth = kv * (at_end - at_start) / max(1, rounds)
            seconds = rounds * per + growth * rounds * (rounds - 1) / 2.0
            return Chunk(seconds=seconds, prefill_seconds=0.0, tokens=draws, iterations=rounds, strategy=strategy,
                         batch=batch, segments=[(seconds, rounds, per, growth)])
        tokens = np.minimum(draws, self.remaining)
        # A sequence that runs out leaves the batch at the round its own pace reaches its end.
        finish = np.where(leaving, np.ceil(self.remaining / np.maximum(rates, 1e-12)), rounds)
        finish = np.minimum(finish, rounds)
        return self._segments(batch, strategy, finish, tokens, rates, -1, rounds)

    def _segments(self, batch, strategy, finish, tokens, rates, floor, rounds=None) -> Chunk:
        """Time of iterations whose batch shrinks as sequences leave at their `finish` round.

        Stops after the finish that takes the batch to `floor` or below (plain chunks), or at
        `rounds`. Context grows by each live sequence's rate per iteration (the KV term).
        """
        costs = self.profile.costs
        kv = costs.kv_seconds_per_token
        leaves = tokens >= self.remaining
        order = np.lexsort((~leaves, finish))  # by finish round, leavers first among ties
        fin = finish[order]
        ctx_end = (self.context + tokens)[order]
        context = float(self.context.sum())
        growth = float(rates.sum())
        seconds, done, alive, start = 0.0, 0, batch, 0
        segments, finishes = [], []
        limit = rounds if rounds is not None else int(fin[-1])
        longest = costs.attention_reads == "longest"
        if longest:
            ctx0, pace = self.context[order].astype(float), rates[order].astype(float)
        while alive > 0 and done < limit:
            end = min(int(fin[start]), limit)
            n = end - done
            if longest:  # every row reads up to the longest live context
                load = alive * float((ctx0[start:] + pace[start:] * done).max())
                step_growth = (alive * float((ctx0[start:] + pace[start:] * end).max()) - load) / max(1, n)
            else:
                load, step_growth = context, growth
            per = costs.iteration_seconds(alive, strategy) + kv * load
            seconds += n * per + kv * step_growth * n * (n - 1) / 2.0
            segments.append((seconds, end, per, kv * step_growth))
            context += growth * n
            stop = start
            while stop < batch and fin[stop] <= end and leaves[order[stop]]:
                stop += 1
            if stop > start:
                finishes += [seconds] * (stop - start)
                leaving = order[start:stop]
                context -= float(ctx_end[start:stop].sum())
                growth -= float(rates[leaving].sum())
                alive -= stop - start
            start, done = stop, end
            if alive <= floor:
                break
        if strategy is None:
            tokens = np.minimum(self.remaining, done)
        return Chunk(seconds=seconds, prefill_seconds=0.0, tokens=tokens, iterations=done, strategy=strategy,
                     batch=batch, segments=segments, finish_seconds=finishes)

    def finished_within(self, elapsed: float) -> int:
        """Sequences of the pending chunk that have finished `elapsed` seconds after it started."""
        chunk = self.pending
        if chunk is None or not chunk.finish_seconds:
            return 0
        return bisect.bisect_right(chunk.finish_seconds, elapsed - chunk.prefill_seconds)

    def interrupt(self, elapsed: float) -> None:
        """Cut the pending chunk at the last iteration boundary `elapsed` seconds after it started."""
        chunk = self.pending
        decode = max(0.0, elapsed - chunk.prefill_seconds)
        if decode >= chunk.seconds:
            return
        if chunk.strategy is None:
            before_s, before_it = 0.0, 0
            iterations = 0
            for end_s, end_it, per, growth in chunk.segments:
                if decode < end_s:
                    iterations = before_it + _iterations_within(decode - before_s, per, growth)
                    break
                before_s, before_it = end_s, end_it
            chunk.tokens = np.minimum(self.remaining, iterations)
            chunk.iterations = iterations
            chunk.seconds = decode
            chunk.finish_seconds = []
        else:
            per = chunk.seconds / chunk.iterations
            rounds = min(chunk.iterations - 1, int(decode / per))
            cut = self._speculative(chunk.batch, chunk.strategy, self._acceptance, rounds=rounds)
            chunk.tokens, chunk.iterations, chunk.seconds = cut.tokens, cut.iterations, cut.seconds
        chunk.segments = []

    def commit(self) -> Chunk:
        """Apply the pending chunk; returns it."""
        chunk, self.pending = self.pending, None
        self.remaining = self.remaining - chunk.tokens
        self.context = self.context + chunk.tokens
        self.generated_of = self.generated_of + chunk.tokens
        self.generated += int(chunk.tokens.sum())
        done = self.remaining <= 0
        finished = int(done.sum())
        if finished:
            self.finished += finished
            self._keep(~done)
        return chunk

    def _admit(self) -> tuple[int, int]:
        """Queued sequences into free slots: (how many, their context tokens to prefill)."""
        free = self.max_batch - self.running
        if free <= 0 or not self.waiting:
            return 0, 0
        admitted = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
        rem, ctx, gen = (np.array(col, dtype=np.int64) for col in zip(*admitted))
        self.remaining = np.concatenate([self.remaining, rem])
        self.context = np.concatenate([self.context, ctx])
        self.generated_of = np.concatenate([self.generated_of, gen])
        return len(admitted), int(ctx.sum())

    def _kv_load(self, start: np.ndarray, end: np.ndarray) -> tuple[float, float]:
        """Context tokens one forward reads at the start and at the end of a chunk."""
        if self.profile.costs.attention_reads == "longest" and len(start):
            return len(start) * float(start.max()), len(end) * float(end.max())
        return float(start.sum()), float(end.sum())

    def _keep(self, mask: np.ndarray) -> None:
        self.remaining = self.remaining[mask]
        self.context = self.context[mask]
        self.generated_of = self.generated_of[mask]


def _iterations_within(seconds: float, first: float, growth: float) -> int:
    """Most whole iterations k >= 0 with k * first + growth * k (k - 1) / 2 <= seconds."""
    if seconds <= 0 or first <= 0:
        return 0
    if growth <= 0:
        return int(seconds / first)
    a, b = growth / 2.0, first - growth / 2.0
    return max(0, int((-b + math.sqrt(b * b + 4 * a * seconds)) / (2 * a)))
