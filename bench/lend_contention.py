"""What lending costs the tail on a CPU machine: plain decoding on one core, with the core
beside it idle vs training the drafter (what a lent worker does), same process.

On GPUs a lent device is a device of its own. On a laptop's cores the lent worker's drafter
training shares the memory system (and on a VM perhaps the physical core) with the worker
still decoding the tail. The decoder is pinned to `--decode-core`, one thread, and decodes
the same requests each round; a child process pinned to `--train-core` trains an EAGLE
drafter on packed micro-batches of the job's model (`DRAFTER_BATCH_TOKENS`, one thread) and
is paused (SIGSTOP) for the rounds alone, resumed (SIGCONT) for the rounds beside it,
alternating.

    .venv/bin/python bench/lend_contention.py [examples/quickstart.yaml] [--rounds 5]

Prints one line per round, the median slowdown, and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workers"))


def train_forever(job: str, core: int) -> None:
    """The neighbour: drafter training steps on one core until killed (prints READY first)."""
    from tlt.api.load import load_jobs
    from tlt.coordinator.shard import DRAFTER_BATCH_TOKENS, bind_threads
    from tlt.drafter import Sample, make_windows, micro_batches, prefill_hidden
    from tlt.drafter.packing import loss_terms
    from tlt.models.drafter import EagleDrafter
    from tlt.models.loading import load_model
    from tlt.models.resolve import resolve_model

    bind_threads([core])
    spec = load_jobs(job)[0].spec
    target = load_model(resolve_model(spec.model), dtype="float32")
    gen = torch.Generator().manual_seed(0)
    vocab = target.config.vocab_size
    # 64 sequences of 20 + 100 tokens: the shapes of a step's rollouts (the tokens do not matter for the load)
    samples = [Sample.of(torch.randint(3, vocab, (20,), generator=gen).tolist(),
                         torch.randint(3, vocab, (100,), generator=gen).tolist()) for _ in range(64)]
    windows = make_windows(samples, prefill_hidden(target, samples), spec.drafter.window_tokens)
    batches = micro_batches(windows, DRAFTER_BATCH_TOKENS)
    drafter = EagleDrafter.for_target(target)
    optimizer = torch.optim.AdamW(drafter.parameters(), lr=1e-3)
    print("READY", flush=True)
    while True:
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            s, n = loss_terms(drafter, batch)
            (s / n).backward()
            optimizer.step()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", nargs="?", default=str(ROOT / "examples" / "quickstart.yaml"))
    parser.add_argument("--rounds", type=int, default=5, help="timed decodes of each kind (after one warm-up)")
    parser.add_argument("--requests", type=int, default=4, help="sequences decoded together")
    parser.add_argument("--tokens", type=int, default=300, help="tokens decoded per sequence")
    parser.add_argument("--decode-core", type=int, default=1)
    parser.add_argument("--train-core", type=int, default=0)
    parser.add_argument("--neighbour", action="store_true", help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args(argv)
    if args.neighbour:
        train_forever(args.job, args.train_core)
        return 0
    if len(os.sched_getaffinity(0)) < 2 or args.decode_core == args.train_core:
        raise SystemExit("needs two cores: --decode-core and --train-core must differ and be available")
    from tlt.api.load import load_jobs
    from tlt.coordinator.shard import bind_threads
    from tlt.eval.generate import generate
    from tlt.models.loading import load_model
    from tlt.models.resolve import resolve_model

    bind_threads([args.decode_core])
    spec = load_jobs(args.job)[0].spec
    model = load_model(resolve_model(spec.model), dtype="float32")
    prompts = [[5 + i, 7, 9, 11] for i in range(args.requests)]

    def decode() -> float:
        started = time.perf_counter()
        generate(model, prompts, args.tokens, temperature=1.0, seed=0, stop_ids=(), batch_size=args.requests)
        return time.perf_counter() - started

    child = subprocess.Popen([sys.executable, __file__, args.job, "--neighbour", "--train-core", str(args.train_core)],
                             stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "READY":
            raise SystemExit("the drafter-training neighbour did not start")
        child.send_signal(signal.SIGSTOP)
        decode()  # warm-up
        alone, beside = [], []
        for r in range(args.rounds):
            child.send_signal(signal.SIGSTOP)
            alone.append(decode())
            child.send_signal(signal.SIGCONT)
            time.sleep(0.5)  # the neighbour is training again
            beside.append(decode())
            print(f"round {r + 1}: alone {alone[-1]:.3f} s, beside drafter training {beside[-1]:.3f} s, "
                  f"x{beside[-1] / alone[-1]:.2f}", flush=True)
    finally:
        child.send_signal(signal.SIGCONT)
        child.kill()
        child.wait()
    slowdown = statistics.median(b / a for a, b in zip(alone, beside))
    print(f"median x{slowdown:.2f}: decoding time beside a lent worker's drafter training over alone")
    print(json.dumps({"bench": "lend_contention", "slowdown": round(slowdown, 3),
                      "alone_seconds": round(statistics.median(alone), 3),
                      "beside_training_seconds": round(statistics.median(beside), 3),
                      "requests": args.requests, "tokens": args.tokens, "rounds": args.rounds,
                      "cores": {"decode": args.decode_core, "train": args.train_core}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
