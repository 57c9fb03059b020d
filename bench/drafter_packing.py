"""Drafter-training benchmark: attention per window (varlen) against a block-diagonal mask, same process.

The workload is one RL step of a job (default: examples/quickstart.yaml), decoded
by the rollout engine as in `bench/trainer.py`. The target's hidden states of
those sequences are cut into training windows and packed into the micro-batches
a lent rollout worker trains on (`DRAFTER_BATCH_TOKENS`, one thread: a lent worker
has one core). Then one drafter does a forward and backward pass over every
micro-batch, alternating `--rounds` times between the two attentions: the
baseline masks a [N, N] block-diagonal matrix over the packed row (what the
drafter's training did before), the contender attends within each window (`tlt.models.varlen`).
Both give the same loss (checked). Drafter optimizer steps per second of lend
scale with the ratio.

    .venv/bin/python bench/drafter_packing.py [examples/quickstart.yaml] [--rounds 5] [--threads 1]

Prints one line per round, the median ratio, and a final JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workers"))


def block_diagonal_mask(batch) -> torch.Tensor:
    """[1, N-1, N-1] bool, the baseline's attention: pair t sees the pairs s <= t of its own window."""
    n = batch.tokens.shape[1] - 1
    window = torch.arange(n)  # a pair in no window (none in practice) attends only to itself
    for index in batch.varlen.gathers:
        for row in index:
            window[row] = row[0]  # a window's id: its first pair (padded slots repeat it)
    idx = torch.arange(n)
    return ((window[:, None] == window[None, :]) & (idx[:, None] >= idx[None, :]))[None]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", nargs="?", default=str(ROOT / "examples" / "quickstart.yaml"))
    parser.add_argument("--rounds", type=int, default=5, help="timed passes of each attention (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tlt.api.load import load_jobs
    from tlt.coordinator.shard import DRAFTER_BATCH_TOKENS
    from tlt.drafter import Sample, make_windows, micro_batches, prefill_hidden
    from tlt.drafter.packing import loss_terms
    from tlt.models.drafter import EagleDrafter
    from tlt.models.loading import load_model
    from tlt.models.resolve import resolve_model

    loader = importlib.util.spec_from_file_location("bench_trainer", ROOT / "bench" / "trainer.py")
    bench_trainer = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(bench_trainer)

    spec = load_jobs(args.job)[0].spec
    model_dir = resolve_model(spec.model)
    rollouts, _ = bench_trainer.rollouts_of_one_step(spec, model_dir)
    target = load_model(model_dir, dtype="float32")
    samples = [Sample.of(p.tolist(), r.tolist()) for p, r in zip(rollouts.prompts, rollouts.responses)]
    windows = make_windows(samples, prefill_hidden(target, samples), spec.drafter.window_tokens)
    batches = micro_batches(windows, DRAFTER_BATCH_TOKENS)
    drafter = EagleDrafter.for_target(target)
    targets = sum(b.num_targets for b in batches)
    print(f"{len(samples)} sequences, {len(windows)} windows, {len(batches)} micro-batches of at most "
          f"{DRAFTER_BATCH_TOKENS} tokens, {targets} target tokens; {args.threads} thread(s)", file=sys.stderr)

    # the same micro-batches, attention given as the dense mask (the drafter's layer takes either)
    masked = [dataclasses.replace(b, varlen=block_diagonal_mask(b)) for b in batches]

    def one_pass(batches) -> tuple[float, float]:
        """Forward and backward over every micro-batch: (seconds, loss per target token)."""
        started = time.perf_counter()
        total = 0.0
        for batch in batches:
            drafter.zero_grad(set_to_none=True)
            s, n = loss_terms(drafter, batch)
            (s / n).backward()
            total += float(s.detach())
        return time.perf_counter() - started, total / targets

    one_pass(masked), one_pass(batches)  # warm-up
    ratios, base_s, new_s = [], [], []
    for r in range(args.rounds):
        tb, lb = one_pass(masked)
        tv, lv = one_pass(batches)
        if abs(lb - lv) > 1e-4 * max(1.0, abs(lb)):
            raise SystemExit(f"the two attentions gave different losses: {lb} vs {lv}")
        ratios.append(tb / tv)
        base_s.append(tb)
        new_s.append(tv)
        print(f"round {r + 1}: block-diagonal mask {1000 * tb / len(batches):.1f} ms/micro-batch, "
              f"per window {1000 * tv / len(batches):.1f} ms/micro-batch, x{tb / tv:.2f}")
    ratio = statistics.median(ratios)
    print(f"median x{ratio:.2f}: drafter training steps per second of lend")
    print(json.dumps({"benchmark": "drafter_packing", "speedup": round(ratio, 3),
                      "baseline_ms_per_micro_batch": round(1000 * statistics.median(base_s) / len(batches), 2),
                      "varlen_ms_per_micro_batch": round(1000 * statistics.median(new_s) / len(batches), 2),
                      "micro_batches": len(batches), "target_tokens": targets, "threads": args.threads}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
