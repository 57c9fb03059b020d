"""Baseline (speculation and elasticity off) vs tlt on the same job and seed, one process,
the two runs taking turns step by step.

    .venv/bin/python bench/e2e.py [examples/quickstart.yaml] [--out runs/bench-e2e]

Prints a table, the rollout and whole-step speedups, and a final JSON line.
"""

import argparse
import sys

from tlt.api.load import load_jobs
from tlt.coordinator.bench import compare, print_comparison


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", nargs="?", default="examples/quickstart.yaml")
    parser.add_argument("--out", default="runs/bench-e2e")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    (job,) = load_jobs(args.job)
    print_comparison(compare(job, args.out, progress=not args.quiet))
    return 0


if __name__ == "__main__":
    sys.exit(main())
