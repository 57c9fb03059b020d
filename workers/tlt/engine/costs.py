"""Measuring the cost table (`tlt.speculative.costs.CostTable`): target forward time per running
batch size and verify width, and the drafter's cost relative to the target, on this machine.
It feeds the `auto` batch threshold and the cluster simulator.

With `engine_terms` (the default) it also measures what the rollout engine adds to
those forwards, so the simulator can replay a real run (`tlt simulate --calibrate`):

- `kv_seconds_per_token`: the width-1 forward's growth per token of KV cache held,
  per sequence (timed at `context_len` and at `context_len + kv_span`). The torch
  engine's attention reads every row up to the longest context in the batch
  (`attention_reads: longest`); the table's forwards hold `context_len` tokens each.
- `step_overhead_seconds[batch]`: a plain `TorchEngine.step()` minus the target
  forward at the same batch and context (sampling, emitting, bookkeeping).
- `round_overhead_seconds[batch]`: a speculative round of `round_strategy` minus
  its forwards (verify at width verifyTokens + 1, `steps` drafter forwards at the
  drafter ratio): the tree building, acceptance and KV compaction.
- `prefill_fixed_seconds`, `prefill_tokens_per_second`: admitting `batch` fresh
  requests of `context_len` prompt tokens, fitted as fixed + tokens / rate.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import torch
from tqdm import tqdm

from tlt.models.drafter import EagleDrafter
from tlt.models.llama import CausalLM
from tlt.speculative.adaptive import Strategy
from tlt.speculative.costs import CostTable

from .static import window_of


def _sync() -> None:
    """Wait for queued device work: on a GPU a timer around launches alone measures the
    host, not the work (no-op without CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _time(fn, repeats: int, stat=statistics.median) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        samples.append(time.perf_counter() - start)
    return stat(samples)


def measure_costs(model: CausalLM, drafter: EagleDrafter | None = None,
                  batch_sizes=(1, 2, 4, 8, 16, 32, 64), widths=(1, 2, 4, 8, 16),
                  context_len: int = 256, repeats: int = 5, progress: bool = True,
                  model_name: str = "", engine_terms: bool = True, round_strategy: str = "4_1_4",
                  kv_span: int | None = None) -> CostTable:
    """Median time of one target forward (KV cache of `context_len` tokens per sequence,
    `width` new tree-masked tokens each, LM head on all of them) per batch and width;
    with `engine_terms`, the engine's own terms too (module docstring)."""
    drafter = drafter or EagleDrafter.for_target(model)
    dev = model.device
    table: dict[int, dict[int, float]] = {}
    dtimes: dict[int, float] = {}
    total = len(batch_sizes) * (len(widths) + 1)
    bar = tqdm(total=total, desc="cost table", disable=not progress, leave=False)
    for _ in range(3):  # the first forwards of a process are slow (allocator, thread pool): not a cost
        _forward_seconds(model, max(batch_sizes), max(widths), context_len, 1)
    with torch.inference_mode():
        for b in batch_sizes:
            cache = model.new_cache(b, context_len + max(widths) + 1)
            dcache = drafter.new_cache(b, context_len + max(widths) + 1)
            table[b] = {}
            for w in widths:
                ids = torch.randint(0, model.config.vocab_size, (b, w), device=dev)
                pos = context_len + torch.arange(w, device=dev).expand(b, w)

                table[b][w] = _time(_as_engine_runs_it(model.hidden, model.logits, cache, ids, pos, context_len),
                                    repeats)
                bar.update(1)
            ids = torch.randint(0, model.config.vocab_size, (b, 1), device=dev)
            hid = torch.randn(b, 1, model.config.hidden_size, device=dev, dtype=model.dtype)
            pos = torch.full((b, 1), context_len, device=dev)

            features = lambda ids, pos, **kw: drafter.features(ids, hid, pos, **kw)  # noqa: E731
            dtimes[b] = _time(_as_engine_runs_it(features, drafter.logits, dcache, ids, pos, context_len), repeats)
            bar.update(1)
    bar.close()
    ratio = statistics.median(dtimes[b] / table[b][1] for b in batch_sizes)
    result = CostTable(device=str(dev), context_len=context_len, target_seconds=table,
                       drafter_ratio=ratio, drafter_seconds=dtimes, model=model_name,
                       attention_reads="longest")  # the torch engine pads attention to the batch's longest context
    if engine_terms:
        result = replace(result, **_measure_engine_terms(result, model, drafter, batch_sizes, repeats,
                                                         Strategy.parse(round_strategy), kv_span or max(256, context_len),
                                                         progress))
    return result


def _forward_seconds(model: CausalLM, batch: int, width: int, context_len: int, repeats: int) -> float:
    """One target forward of `width` tokens per sequence over `context_len` cached tokens (the
    fastest of `repeats`: engine terms are differences of timings, which a busy machine's
    outliers would swamp)."""
    dev = model.device
    cache = model.new_cache(batch, context_len + width + 1)
    ids = torch.randint(0, model.config.vocab_size, (batch, width), device=dev)
    pos = context_len + torch.arange(width, device=dev).expand(batch, width)
    with torch.inference_mode():
        return _time(_as_engine_runs_it(model.hidden, model.logits, cache, ids, pos, context_len), repeats, min)


def _as_engine_runs_it(hidden, logits, cache, ids, pos, context_len: int):
    """A forward of `ids` over `context_len` cached tokens per row, as the engine's hot path
    runs it: a static attention window (no host read) and, on CUDA, a CUDA graph replay."""
    batch, width = ids.shape
    slots = torch.arange(batch, device=ids.device)
    cuda = ids.device.type == "cuda"
    window = window_of(context_len + width, cache.capacity, static=cuda)

    def forward():
        cache.lengths.fill_(context_len)
        return logits(hidden(ids, pos, cache=cache, slots=slots, window=window, read_slots=slice(0, batch)))

    if not cuda:
        return forward
    for _ in range(2):
        forward()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    return graph.replay


def _measure_engine_terms(table: CostTable, model: CausalLM, drafter: EagleDrafter, batch_sizes, repeats: int,
                          strategy: Strategy, kv_span: int, progress: bool) -> dict:
    """The engine's terms on top of the forward table (module docstring), as CostTable fields."""
    from tlt.engine.torch_engine import TorchEngine
    from tlt.engine.types import Request
    from tlt.speculative.adaptive import FixedStrategy

    ctx = table.context_len
    slopes, prefill, step_overhead, round_overhead = [], [], {}, {}
    steps = max(5, repeats)
    bar = tqdm(total=3 * len(batch_sizes), desc="engine terms", disable=not progress, leave=False)
    for b in batch_sizes:
        at_ctx = _forward_seconds(model, b, 1, ctx, repeats)
        longer = _forward_seconds(model, b, 1, ctx + kv_span, repeats)
        slopes.append((longer - at_ctx, b * kv_span))
        bar.update(1)
        gen = torch.Generator().manual_seed(b)

        def requests(count: int, max_tokens: int) -> list:
            prompts = torch.randint(0, model.config.vocab_size, (count, ctx), generator=gen).tolist()
            return [Request(prompt=p, max_tokens=max_tokens, stop_ids=[], temperature=1.0, seed=i, id=i)
                    for i, p in enumerate(prompts)]

        # Plain: an admission step (one padded prefill of b prompts, then a decode step of
        # them) and plain steps, `steps` times over; prefill = admission - plain step.
        engine = TorchEngine(model, num_slots=b, max_model_len=ctx + 8)
        admit, plain = [], []
        for _ in range(steps):
            engine.submit(requests(b, 4))
            admit.append(_timed(engine.step))
            plain += [_timed(engine.step), _timed(engine.step)]
            engine.preempt(b)
        step_overhead[b] = max(0.0, min(plain) - at_ctx)
        prefill.append((b * ctx, max(0.0, min(admit) - min(plain))))
        bar.update(1)
        # Speculative rounds of `strategy` with the given drafter.
        room = (steps + 2) * (strategy.steps + 1) + 4
        engine = TorchEngine(model, num_slots=b, max_model_len=ctx + room, drafter=drafter,
                             speculation=FixedStrategy(strategy))
        engine.submit(requests(b, room))
        engine.step()  # admission
        engine.step()  # the drafter catches up on the prompts
        took = min(_timed(engine.step) for _ in range(steps))
        verify = _forward_seconds(model, b, strategy.verify_tokens + 1, ctx, repeats)
        draft = strategy.steps * table.drafter_ratio * _forward_seconds(model, b, strategy.topk, ctx, repeats)
        round_overhead[b] = max(0.0, took - verify - draft)
        bar.update(1)
    bar.close()
    fixed, rate = _fit_fixed_and_rate(prefill)
    # Pooled over batch sizes (sum of growths over sum of tokens): the big batches, where
    # the term matters and stands out of the timing noise, weigh the most.
    return dict(kv_seconds_per_token=max(0.0, sum(d for d, _ in slopes) / sum(n for _, n in slopes)),
                step_overhead_seconds=step_overhead, round_overhead_seconds=round_overhead,
                round_strategy=strategy.name, prefill_fixed_seconds=fixed, prefill_tokens_per_second=rate)


def _timed(fn) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def _fit_fixed_and_rate(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares seconds = fixed + tokens / rate over (tokens, seconds) points."""
    if len(points) < 2:
        tokens, seconds = points[0] if points else (0, 0.0)
        return 0.0, (tokens / seconds if seconds > 0 else 0.0)
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(s for _, s in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    slope = sum((t - mx) * (s - my) for t, s in points) / sxx if sxx > 0 else 0.0
    if slope <= 0:  # no measurable per-token cost: all of it is fixed
        return max(0.0, my), 0.0
    fixed = max(0.0, my - slope * mx)
    return fixed, 1.0 / slope


def format_table(table: CostTable) -> str:
    widths = sorted(next(iter(table.target_seconds.values())))
    lines = [f"target forward ms ({table.model or 'model'}, {table.device}, context {table.context_len})",
             "batch " + " ".join(f"{'w=' + str(w):>9}" for w in widths) + f"{'drafter/target':>16}"]
    for b, row in sorted(table.target_seconds.items()):
        ratio = table.drafter_seconds.get(b, float("nan")) / row[widths[0]]
        lines.append(f"{b:>5} " + " ".join(f"{row[w] * 1e3:9.3f}" for w in widths) + f"{ratio:16.3f}")
    lines.append(f"drafter cost relative to target (median): {table.drafter_ratio:.3f}")
    if table.step_overhead_seconds:
        lines.append(f"engine: KV {table.kv_seconds_per_token * 1e9:.1f} ns per context token per forward "
                     f"(reads up to the {table.attention_reads} context); prefill "
                     f"{table.prefill_fixed_seconds * 1e3:.2f} ms + {table.prefill_tokens_per_second:,.0f} tokens/s")
        lines.append("batch " + " ".join(f"{b:>7}" for b in sorted(table.step_overhead_seconds)))
        lines.append("step+ " + " ".join(f"{s * 1e3:7.3f}" for _, s in sorted(table.step_overhead_seconds.items()))
                     + "  ms, plain engine step over its forward")
        lines.append("round+" + " ".join(f"{s * 1e3:7.3f}" for _, s in sorted(table.round_overhead_seconds.items()))
                     + f"  ms, {table.round_strategy} round over its forwards")
    return "\n".join(lines)
