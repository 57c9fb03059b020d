"""Rollout benchmark: plain decoding vs speculation always on vs adaptive speculation,
in one process, on the same workload of the built-in task, with a warmed-up drafter.

Two workloads (greedy by default, or sampled at `temperature`; verification is coupled,
so outputs are token-identical either way and are compared token for token):
- fixed running batch b (1, 4, 16, 64): b long problems that cannot finish within
  `tokens` tokens, so the running batch stays at b the whole time;
- the long tail: `requests` problems of the task's natural long-tailed length
  distribution, run to completion (the running batch falls from `requests` to 1).

Reported per mode: wall time, ratio to plain (plain time / mode time, >1 is faster),
mean acceptance length, and how many sequences differ from plain decoding's (0 expected).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tlt.engine import Request, TorchEngine
from tlt.speculative.adaptive import AdaptiveManager, FixedStrategy, Strategy


@dataclass
class BenchConfig:
    batch_sizes: tuple[int, ...] = (1, 4, 16, 64)
    tokens: int = 160  # generated per request in the fixed-batch runs
    requests: int = 64  # long-tail workload
    max_tokens: int = 512
    repeats: int = 3  # timed repeats per cell (median)
    chain: int = 4
    threshold: int | None = None  # None: auto from the measured cost table
    seed: int = 0
    temperature: float = 0.0


@dataclass
class ModeRun:
    seconds: float
    tokens: int
    acceptance: float
    outputs: list[list[int]] = field(repr=False, default_factory=list)
    spec_rounds: int = 0
    near_ties: int = 0  # draws recomputed in float64 (the engine's `Ties`)


def _controller(mode: str, chain: Strategy, threshold: int, seed: int):
    if mode == "plain":
        return None
    if mode == "always":
        return FixedStrategy(chain)
    arms = [chain] + [Strategy(s, 1, s) for s in (chain.steps + 2, chain.steps - 1) if s >= 1]
    return AdaptiveManager(strategies=arms, batch_threshold=threshold, epsilon=0.05, seed=seed)


def run_mode(target, drafter, mode: str, requests: Sequence[Request], chain: Strategy, threshold: int,
             seed: int = 0, controller=None) -> ModeRun:
    """One timed run. `controller` (the adaptive manager) may be shared across runs: a
    rollout worker keeps its bandit's history from one RL step to the next."""
    longest = max(len(r.prompt) + r.max_tokens for r in requests)
    engine = TorchEngine(target, num_slots=len(requests), max_model_len=longest,
                         drafter=drafter if mode != "plain" else None,
                         speculation=controller or _controller(mode, chain, threshold, seed))
    # warm the allocator and kernels on a copy of the first request (not timed)
    first = requests[0]
    engine.generate([Request(prompt=list(first.prompt), max_tokens=4, stop_ids=list(first.stop_ids),
                             temperature=first.temperature, seed=first.seed)])
    before = engine.counters()
    fresh = [Request(prompt=list(r.prompt), max_tokens=r.max_tokens, stop_ids=list(r.stop_ids),
                     temperature=r.temperature, seed=r.seed) for r in requests]
    start = time.perf_counter()
    results = engine.generate(fresh)
    seconds = time.perf_counter() - start
    c = engine.counters()
    rounds = c.verify_rounds - before.verify_rounds
    acc = (c.accepted_tokens - before.accepted_tokens) / rounds if rounds else 0.0
    outs = [r.tokens for r in results]
    return ModeRun(seconds, sum(len(o) for o in outs), acc, outs, rounds, c.near_ties - before.near_ties)


def long_problem_prompts(tokenizer, count: int, min_steps: int, seed: int = 0) -> list[list[int]]:
    import random

    from tlt.tasks.arith import make_problem

    rng = random.Random(f"rollout-bench:{seed}")
    out = []
    for _ in range(count):
        p = make_problem(rng.randrange(100), rng.randint(1, 9), rng.randint(1, 9), min_steps + rng.randrange(5))
        out.append(list(tokenizer(p.prompt)["input_ids"]))
    return out


def run_bench(target, drafter, tokenizer, cfg: BenchConfig, progress: bool = True,
              log=lambda s: print(s, file=sys.stderr)) -> dict:
    from tqdm import tqdm

    from tlt.engine.costs import measure_costs
    from tlt.tasks import get_task

    import os

    load_start = os.getloadavg()[0]
    chain = Strategy(cfg.chain, 1, cfg.chain)
    eos = tokenizer.eos_token_id
    task = get_task("arith", max_response_tokens=cfg.max_tokens)
    tail_prompts = [list(tokenizer(p.prompt)["input_ids"])
                    for p in task.problems("heldout", cfg.requests, seed=cfg.seed + 7)]
    tail_reqs = [Request(prompt=p, max_tokens=cfg.max_tokens, stop_ids=[eos], temperature=cfg.temperature,
                         seed=cfg.seed * 1000 + i) for i, p in enumerate(tail_prompts)]
    min_steps = cfg.tokens // 6 + 2  # lines are 8-11 tokens: these cannot finish within cfg.tokens
    fixed = {b: [Request(prompt=p, max_tokens=cfg.tokens, stop_ids=[eos], temperature=cfg.temperature,
                         seed=cfg.seed * 1000 + i)
                 for i, p in enumerate(long_problem_prompts(tokenizer, b, min_steps, cfg.seed + b))]
             for b in cfg.batch_sizes}

    modes = ("plain", "always", "adaptive")
    total = len(cfg.batch_sizes) * 3 * cfg.repeats + 2 * cfg.repeats + 1
    bar = tqdm(total=total, desc="rollout bench", unit="run", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)

    # long tail first for plain and always-on: always-on's acceptance feeds the auto threshold
    tail_runs: dict[str, list[ModeRun]] = {m: [] for m in modes}
    for _ in range(cfg.repeats):
        for mode in ("plain", "always"):
            tail_runs[mode].append(run_mode(target, drafter, mode, tail_reqs, chain, 0, cfg.seed))
        bar.update(1)
    threshold = cfg.threshold
    costs = None
    if threshold is None:
        costs = measure_costs(target, drafter, batch_sizes=sorted(set((1, 2, 4, 8, 16, 32, 64) + cfg.batch_sizes)),
                              widths=(1, 2, 4, cfg.chain + 1, 8), context_len=128, repeats=7, progress=False)
        threshold = costs.auto_threshold(chain, acceptance_length=max(tail_runs["always"][0].acceptance, 1.0))
    bar.update(1)
    adaptive = _controller("adaptive", chain, threshold, cfg.seed)
    for _ in range(cfg.repeats):
        tail_runs["adaptive"].append(run_mode(target, drafter, "adaptive", tail_reqs, chain, threshold, cfg.seed,
                                              adaptive))
        bar.update(1)
    tail = {m: sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
            for m, runs in tail_runs.items()}  # the median run of each mode

    per_batch: dict[int, dict[str, dict]] = {}
    ref = tail_runs["plain"][0].outputs
    matched = all(r.outputs == ref for m in modes for r in tail_runs[m])
    mismatches = {m: sum(sum(a != b for a, b in zip(r.outputs, ref)) for r in tail_runs[m]) for m in modes}
    for b in cfg.batch_sizes:
        runs: dict[str, list[ModeRun]] = {m: [] for m in modes}
        for _ in range(cfg.repeats):
            for m in modes:  # interleaved so drifting machine load hits all modes alike
                runs[m].append(run_mode(target, drafter, m, fixed[b], chain, threshold, cfg.seed,
                                        adaptive if m == "adaptive" else None))
                bar.update(1)
        row = {}
        plain_s = statistics.median(r.seconds for r in runs["plain"])
        for m in modes:
            sec = statistics.median(r.seconds for r in runs[m])
            row[m] = {"seconds": sec, "ratio": plain_s / sec,
                      "acceptance": statistics.mean(r.acceptance for r in runs[m]),
                      "tokens": runs[m][0].tokens}
            same = all(r.outputs == runs["plain"][0].outputs for r in runs[m])
            matched = matched and same
            mismatches[m] += sum(sum(a != b for a, b in zip(r.outputs, runs["plain"][0].outputs)) for r in runs[m])
        per_batch[b] = row
    bar.close()

    lengths = [len(o) for o in tail["plain"].outputs]
    summary = {
        "bench": "rollout_sd",
        "threads": torch.get_num_threads(),
        "load_avg_1m_at_start_end": [round(load_start, 2), round(__import__("os").getloadavg()[0], 2)],
        "repeats": cfg.repeats,
        "chain": cfg.chain,
        "threshold": threshold,
        "threshold_source": "auto (cost table)" if cfg.threshold is None else "given",
        "batch": {str(b): {m: round(per_batch[b][m]["ratio"], 3) for m in ("always", "adaptive")}
                  for b in cfg.batch_sizes},
        "batch_acceptance": {str(b): round(per_batch[b]["always"]["acceptance"], 3) for b in cfg.batch_sizes},
        "long_tail": {
            "requests": cfg.requests,
            "plain_seconds": round(tail["plain"].seconds, 3),
            "always_ratio": round(tail["plain"].seconds / tail["always"].seconds, 3),
            "adaptive_ratio": round(tail["plain"].seconds / tail["adaptive"].seconds, 3),
            "always_acceptance": round(tail["always"].acceptance, 3),
            "adaptive_acceptance": round(tail["adaptive"].acceptance, 3),
            "response_tokens": {"total": sum(lengths), "median": statistics.median(lengths), "max": max(lengths)},
        },
        "mean_acceptance_length": round(tail["always"].acceptance, 3),
        "temperature": cfg.temperature,
        "outputs_identical": matched,
        "mismatched_sequences": mismatches,
        "near_ties_recomputed": {m: sum(r.near_ties for r in tail_runs[m]) for m in modes},
        "targets": {"adaptive_batch1_ge_2.0": per_batch.get(1, {}).get("adaptive", {}).get("ratio", 0) >= 2.0,
                    "adaptive_long_tail_ge_1.5": tail["plain"].seconds / tail["adaptive"].seconds >= 1.5,
                    "adaptive_batch64_ge_0.97": per_batch.get(64, {}).get("adaptive", {}).get("ratio", 0) >= 0.97},
    }
    if costs is not None:
        summary["drafter_cost_ratio"] = round(costs.drafter_ratio, 3)
    summary["table"] = format_rows(per_batch, tail)
    return summary


def format_rows(per_batch, tail) -> list[str]:
    lines = [f"{'running batch':>14} {'plain s':>9} {'always x':>9} {'adaptive x':>11} {'accept len':>11}"]
    for b, row in per_batch.items():
        lines.append(f"{b:>14} {row['plain']['seconds']:9.3f} {row['always']['ratio']:9.3f} "
                     f"{row['adaptive']['ratio']:11.3f} {row['always']['acceptance']:11.3f}")
    p = tail["plain"].seconds
    lines.append(f"{'long tail':>14} {p:9.3f} {p / tail['always'].seconds:9.3f} "
                 f"{p / tail['adaptive'].seconds:11.3f} {tail['always'].acceptance:11.3f}")
    return lines
