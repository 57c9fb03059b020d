"""`tlt run` (the whole job, embedded) and `tlt report` (re-render a run's report)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tlt.api.commands import load_jobs_or_fail


def register(subparsers) -> None:
    run = subparsers.add_parser(
        "run",
        help="run a ReasoningRLJob on this machine (embedded: Ray actors, torch engine)",
        description="Run a whole reasoning-RL job on this machine: long-tailed rollout with adaptive speculative "
        "decoding, a drafter trained on idle workers, elastic lending and tail consolidation, GRPO/DAPO updates. "
        "Progress is shown live; metrics.jsonl and report.html are written to spec.output.path. "
        "Killing the command and running it again resumes after the last completed step.",
    )
    run.add_argument("file", metavar="FILE", help="the job manifest (YAML)")
    run.add_argument("--run-dir", help="where checkpoints, metrics and the report go (default: spec.output.path)")
    run.add_argument("--fresh", action="store_true", help="start over: delete the run folder's checkpoints first")
    run.add_argument("--steps", type=int, help="stop after this many steps in this invocation (resume later)")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=run_job)

    from tlt.cli import add_bench_command

    e2e = add_bench_command(
        subparsers, "e2e", "the plain synchronous baseline vs tlt on the same job and seed, taking turns step by step: "
        "step-time ratios, accuracies"
    )
    e2e.add_argument("file", metavar="FILE", nargs="?", default="examples/quickstart.yaml", help="the job manifest")
    e2e.add_argument("--out", default="runs/bench-e2e", help="folder for both runs")
    e2e.add_argument("--seed", type=int, help="compare the job at this spec.algorithm.seed (sampling, data order); "
                     "default: the manifest's")
    e2e.add_argument("--quiet", action="store_true", help="no progress bars")
    e2e.set_defaults(func=run_bench_e2e)

    report = subparsers.add_parser(
        "report", help="re-render report.html of a run folder", description="Render RUN_DIR/report.html from RUN_DIR/metrics.jsonl."
    )
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.set_defaults(func=run_report)


def run_job(args) -> int:
    from tlt.cli import CommandError

    jobs = load_jobs_or_fail(args.file)
    if len(jobs) != 1:
        raise CommandError(f"{args.file} holds {len(jobs)} jobs; `tlt run` runs one (split the file)")
    if args.steps is not None and args.steps < 1:
        raise CommandError("--steps must be >= 1")
    refuse_unrunnable(jobs[0])
    if args.metrics_port:
        from prometheus_client import start_http_server

        from tlt.engine.metrics import REGISTRY

        start_http_server(args.metrics_port, registry=REGISTRY)
    from tlt.coordinator.loop import EmbeddedRun

    run = EmbeddedRun(jobs[0], run_dir=args.run_dir, fresh=args.fresh, progress=not args.quiet, max_steps=args.steps)
    try:
        summary = run.run()
    except (FileNotFoundError, ValueError) as err:
        raise CommandError(str(err)) from None
    print(json.dumps({"run_dir": str(run.run_dir), **summary}, default=float))
    return 0


def refuse_unrunnable(job) -> None:
    """A configuration this machine cannot run (e.g. `rollout.engine: vllm` without CUDA) stops
    before any work, with one line and exit code 2."""
    from tlt.cli import CommandError
    from tlt.coordinator.shard import preflight

    problem = preflight(job.spec)
    if problem:
        raise CommandError(problem, code=2)


def run_bench_e2e(args) -> int:
    from tlt.cli import CommandError
    from tlt.coordinator.bench import compare, print_comparison

    jobs = load_jobs_or_fail(args.file)
    if len(jobs) != 1:
        raise CommandError(f"{args.file} holds {len(jobs)} jobs; `tlt bench e2e` compares one")
    if args.seed is not None:
        if args.seed < 0:
            raise CommandError(f"--seed {args.seed}: spec.algorithm.seed must be >= 0")
        jobs[0].spec.algorithm.seed = args.seed
    refuse_unrunnable(jobs[0])
    result = compare(jobs[0], Path(args.out), progress=not args.quiet)
    print_comparison(result)
    if not result["identical_rollouts"]:
        print("error: the baseline and tlt sampled different tokens (see differing rollouts per step): "
              "the comparison is not of the same work", file=sys.stderr)
        return 1
    return 0


def run_report(args) -> int:
    from tlt.cli import CommandError
    from tlt.report import write_report

    folder = Path(args.run_dir)
    if not (folder / "metrics.jsonl").is_file():
        raise CommandError(f"{folder} has no metrics.jsonl; pass the folder of a `tlt run` (spec.output.path)")
    print(write_report(folder), file=sys.stdout)
    return 0
