"""Rollout speedup of adaptive speculative decoding on the built-in long-tailed task.

In one process: plain decoding, speculation always on (chain of --chain), and
adaptive speculation (on at or below the auto batch threshold, bandit over chain
lengths), over the same greedy workloads: fixed running batches 1, 4, 16, 64 and a
long-tailed rollout of --requests problems. Prints a table, then a final JSON line
with the ratios to plain (>1 = faster), mean acceptance length and whether the
greedy outputs matched plain decoding's.

    .venv/bin/python bench/rollout_sd.py [--drafter DIR] [--threads 2]

Same as `tlt bench rollout`. Without --drafter a drafter is warmed up first (cached
under $TLT_CACHE_DIR/drafters/).
"""

import argparse
import sys

from tlt.cli import CommandError
from tlt.drafter.commands import add_rollout_args, run_rollout_bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_rollout_args(parser)
    try:
        sys.exit(run_rollout_bench(parser.parse_args()))
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.code)
