"""Static shapes for the engine's hot path, and CUDA graphs of it.

A decode step or speculative round of the torch engine is a function of fixed-shape
device tensors once three things are fixed: the running batch's *bucket* (rows beyond
the running sequences point at a scratch slot), the attention *window* (cache positions
read, with a mask), and what the host knows about the batch (greedy or sampled, top-p,
the strategy). `StepGraphs` captures each such step once as a CUDA graph and replays
it; on a CPU the same functions run eagerly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable

import torch

WINDOW_QUANTUM = 64  # smallest attention window of the static path


def batch_buckets(num_slots: int) -> list[int]:
    """Running-batch buckets: powers of two below `num_slots`, then `num_slots`."""
    out, b = [], 1
    while b < num_slots:
        out.append(b)
        b *= 2
    return out + [num_slots]


def bucket_of(n: int, buckets: list[int]) -> int:
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"running batch {n} exceeds the largest bucket {buckets[-1]}")


def window_of(length: int, capacity: int, static: bool) -> int:
    """Cache positions an attention read covers for `length` needed ones: exact when not
    static; else the next of WINDOW_QUANTUM x 2^k x {1, 5/4, 3/2, 7/4} (four shapes, so
    four graphs, per doubling of the context; at most 25% read past the longest row),
    capped at the cache capacity."""
    if length > capacity:
        raise RuntimeError(f"KV cache capacity {capacity} exceeded (needs {length}); raise the engine's max_model_len")
    if not static:
        return length
    octave = WINDOW_QUANTUM
    while True:
        for num in (4, 5, 6, 7):
            w = octave * num // 4
            if w >= length:
                return min(w, capacity)
        octave *= 2


class StepGraphs:
    """Lazily captured CUDA graphs of fixed-shape steps, one per key.

    The first `warmup` calls of a key run eagerly (they are real steps and initialise
    libraries' lazy state); the next call captures the step (capture records kernels
    without running them) and replays it; later calls replay. All graphs share one
    memory pool: only one runs at a time. The returned tensor is the graph's static
    output, overwritten by the next replay: read it before the next step."""

    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        self.graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.calls: Counter = Counter()
        self.pool = None

    def run(self, key: Hashable, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        hit = self.graphs.get(key)
        if hit is not None:
            hit[0].replay()
            return hit[1]
        self.calls[key] += 1
        if self.calls[key] <= self.warmup:
            return fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = fn()
        if self.pool is None:
            self.pool = graph.pool()
        self.graphs[key] = (graph, out)
        graph.replay()
        return out

    def clear(self) -> None:
        """Drop every graph (buffers they read were reallocated)."""
        self.graphs.clear()
        self.calls.clear()
        self.pool = None

    def __len__(self) -> int:
        return len(self.graphs)
