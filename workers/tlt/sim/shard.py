"""One rollout shard's decoding, simulated in chunks of decode iterations.

A chunk is a run of iterations over which the adaptive manager's decision holds, so
the simulator jumps over it in one event instead of one per token:

- plain decoding: every sequence emits one token per iteration. While the manager
  keeps speculation off (the batch stays above its threshold, or there is no
  manager) the chunk runs through finishes, batch size shrinking segment by
  segment, exactly; it ends where the batch falls to where a new decision is due.
- speculation: the batch is fixed for the chunk. Each sequence's tokens over k
  rounds are one draw of the sum of k rounds (multinomial over the acceptance
  distribution), capped at what it has left. `exact=True` keeps k small enough that
  no sequence can finish inside (k x longest round <= shortest remaining), so the
  schedule is exact in distribution; otherwise k is where the shortest sequence is
  expected to finish (sequences finishing inside are taken to leave at the chunk's
  end: a few iterations of error on responses thousands long), at most
  `max_chunk_iterations` rounds so the bandit hears back often.
- a chunk can be interrupted (a consolidation moves sequences now): plain chunks are
  cut exactly; a speculative one is redrawn for the rounds that fit the elapsed time
  (its first draw was never observed, so the redraw has the right distribution).

Iteration time is the cost table's forward time plus the KV term times the context
held; within a speculative chunk context is taken to grow evenly.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from tlt.sim.costs import Profile
from tlt.speculative.adaptive import Strategy


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
    finish_seconds: np.ndarray | None = None  # plain chunks: decode seconds at which each finish happens, sorted

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
    def plan_chunk(self, decide, acceptance, stays_off_above: int | None) -> Chunk:
        """Admit queued sequences, ask `decide(batch)` for a strategy, draw the next chunk.

        `acceptance(strategy) -> (values, probs)`. `stays_off_above`: once `decide` said no,
        it keeps saying no for every batch above this size (None: it may change its mind
        at any size). The chunk stays `pending` until `commit`.
        """
        prefill_tokens = self._admit()
        batch = self.running
        strategy = decide(batch)
        if strategy is None:
            floor = batch if stays_off_above is None or self.waiting else stays_off_above
            chunk = self._plain(batch, floor)
        else:
            self._acceptance = acceptance(strategy)
            chunk = self._speculative(batch, strategy, self._acceptance)
        chunk.prefill_seconds = prefill_tokens / self.profile.prefill_tokens_per_second if prefill_tokens else 0.0
        self.pending = chunk
        return chunk

    def _plain(self, batch: int, floor: int) -> Chunk:
        """Plain iterations through every finish that leaves the batch above `floor` (and the one that does not)."""
        costs = self.profile.costs
        kv = costs.kv_seconds_per_token
        order = np.argsort(self.remaining, kind="stable")
        rem_sorted = self.remaining[order]
        ctx_sorted = self.context[order]
        context = float(self.context.sum())
        seconds, done, alive, start = 0.0, 0, batch, 0
        segments, finishes = [], []
        while alive > 0:
            end = int(rem_sorted[start])
            n = end - done
            per = costs.iteration_seconds(alive, None) + kv * context
            seconds += n * per + kv * alive * n * (n - 1) / 2.0
            segments.append((seconds, end, per, kv * alive))
            stop = start
            while stop < batch and rem_sorted[stop] == end:
                stop += 1
            finishes += [seconds] * (stop - start)
            context += alive * n - float(ctx_sorted[start:stop].sum()) - (stop - start) * end
            alive -= stop - start
            start, done = stop, end
            if alive <= floor:
                break
        tokens = np.minimum(self.remaining, done)
        return Chunk(seconds=seconds, prefill_seconds=0.0, tokens=tokens, iterations=done, strategy=None, batch=batch,
                     segments=segments, finish_seconds=np.array(finishes))

    def _speculative(self, batch: int, strategy: Strategy, dist, iterations: int | None = None) -> Chunk:
        values, probs = dist
        mean = float(values @ probs)
        shortest = int(self.remaining.min())
        if iterations is None:
            if self.exact:
                iterations = max(1, shortest // int(values.max()))
            else:
                iterations = max(1, math.ceil(shortest / mean))
            iterations = min(iterations, self.max_chunk_iterations)
        if iterations == 0:
            tokens = np.zeros(batch, dtype=np.int64)
        elif iterations == 1:
            tokens = np.minimum(self.rng.choice(values, size=batch, p=probs), self.remaining)
        else:
            tokens = np.minimum(self.rng.multinomial(iterations, probs, size=batch) @ values, self.remaining)
        costs = self.profile.costs
        kv = costs.kv_seconds_per_token
        per = costs.iteration_seconds(batch, strategy) + kv * float(self.context.sum())
        seconds = iterations * per + kv * (iterations - 1) / 2.0 * float(tokens.sum()) if iterations else 0.0
        return Chunk(seconds=seconds, prefill_seconds=0.0, tokens=tokens, iterations=iterations, strategy=strategy,
                     batch=batch)

    def finished_within(self, elapsed: float) -> int:
        """Sequences of the pending chunk that have finished `elapsed` seconds after it started."""
        chunk = self.pending
        if chunk is None or chunk.finish_seconds is None:
            return 0
        return int(np.searchsorted(chunk.finish_seconds, elapsed - chunk.prefill_seconds, side="right"))

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
            chunk.finish_seconds = None
        else:
            per = chunk.seconds / chunk.iterations
            iterations = min(chunk.iterations - 1, int(decode / per))
            cut = self._speculative(chunk.batch, chunk.strategy, self._acceptance, iterations)
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

    def _admit(self) -> int:
        free = self.max_batch - self.running
        if free <= 0 or not self.waiting:
            return 0
        admitted = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
        rem, ctx, gen = (np.array(col, dtype=np.int64) for col in zip(*admitted))
        self.remaining = np.concatenate([self.remaining, rem])
        self.context = np.concatenate([self.context, ctx])
        self.generated_of = np.concatenate([self.generated_of, gen])
        return int(ctx.sum())

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
