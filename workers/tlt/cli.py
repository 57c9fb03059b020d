"""The `tlt` command line.

Each subcommand lives beside the code it drives and exposes `register(subparsers)`;
this module only collects them, so adding a command never touches the others. It
also owns the `bench` group, to which any of them adds with `add_bench_command`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import tlt

# Modules that contribute subcommands, in the order `tlt --help` lists them.
COMMAND_MODULES = [
    "tlt.api.commands",
    "tlt.coordinator.commands",
    "tlt.worker.commands",
    "tlt_operator.commands",
    "tlt.dev.commands",
    "tlt.tasks.commands",
    "tlt.eval.commands",
    "tlt.drafter.commands",
    "tlt.engine.commands",
    "tlt.sim.commands",
]


_BENCH_ATTR = "_tlt_bench_subparsers"


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit code 1 (or `code`)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def add_bench_command(subparsers, name: str, help: str) -> argparse.ArgumentParser:
    """A `tlt bench NAME` subcommand; the `bench` group is created on first use, once per parser."""
    group = getattr(subparsers, _BENCH_ATTR, None)
    if group is None:
        bench = subparsers.add_parser("bench", help="benchmarks that print ratios and a final JSON line",
                                      description="Benchmarks run on this machine.")
        group = bench.add_subparsers(dest="bench_command", metavar="BENCH")
        bench.set_defaults(func=lambda args: (bench.print_help(), 2)[1])
        setattr(subparsers, _BENCH_ATTR, group)
    return group.add_parser(name, help=help, description=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlt",
        description=(
            "tlt trains reasoning LLMs with reinforcement learning and removes the "
            "rollout long tail with adaptive, lossless speculative decoding. "
            "Run `tlt COMMAND --help` for the options of one command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"tlt {tlt.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
