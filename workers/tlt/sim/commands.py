"""`tlt simulate`: what tlt buys a job on N GPUs, baseline (veRL-like) vs tlt, before renting them."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tlt.sim.costs import BUILTIN_PROFILES, CostTableError, describe, load_profile
from tlt.sim.lengths import LengthSpecError, parse_lengths

DEFAULT_PROFILE = "qwen2.5-7b-h100"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulate a job on a cluster: step time and GPU-time breakdown, baseline vs tlt",
        description="Discrete-event simulation of a ReasoningRLJob on N GPUs, driving the same elastic policy "
        "and adaptive speculation manager as the real system. Without a manifest it simulates a paper-like "
        "job: a Qwen2.5-7B-like model on H100s, colocated GRPO, 32K-token long-tailed responses.",
    )
    p.add_argument("manifest", nargs="?", help="ReasoningRLJob YAML (default: the built-in paper-like job)")
    p.add_argument("--gpus", type=int, help="cluster size (default: the manifest's, or 64 for the built-in job)")
    p.add_argument("--profile", choices=sorted(BUILTIN_PROFILES), default=None,
                   help=f"built-in model/GPU cost profile (default {DEFAULT_PROFILE})")
    p.add_argument("--costs", metavar="FILE", help="cost profile file (JSON/YAML), or `tlt bench costs --json` output")
    p.add_argument("--lengths", metavar="SPEC",
                   help="response lengths: lognormal:median=M,sigma=S | zipf:a=A,scale=K | fixed:N | file:PATH "
                   "(sampled) | trace:PATH (replayed in order) (default: log-normal, median at 11%% of the limit, "
                   "sigma 1)")
    p.add_argument("--steps", type=int, default=None, help="RL steps to simulate (default 5, at most the job's)")
    p.add_argument("--seed", type=int, default=0, help="seed of lengths, acceptance draws and the bandit")
    p.add_argument("--max-tokens", type=int, help="override maxResponseTokens")
    p.add_argument("--prompts-per-step", type=int, help="override promptsPerStep")
    p.add_argument("--consolidate", action="store_true",
                   help="built-in job: turn tail consolidation on (off by default, as in the TLT paper)")
    p.add_argument("--control-interval", type=float, default=5.0, help="seconds between elastic-policy decisions")
    p.add_argument("--drafter-tokens", type=float, default=0.0,
                   help="tokens the drafter learned before the job (a warm start; 0: a fresh drafter)")
    p.add_argument("--exact", action="store_true", help="speculative chunks never cross a finish (slower)")
    p.add_argument("--out", metavar="DIR", help="write result.json and per-GPU timeline SVGs here")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    c = p.add_argument_group(
        "calibration", "replay a measured run's rollouts (its metrics.jsonl `lengths` records) through the "
        "simulator with a cost table measured on the same machine: measured vs simulated rollout seconds per step")
    c.add_argument("--calibrate", metavar="RUN_DIR",
                   help="the run folder `tlt run` wrote; give its manifest as MANIFEST and --costs from "
                   "`tlt bench costs --json` on the same machine")
    c.add_argument("--prompt-tokens", type=int, help="calibration: prompt tokens per sequence (default: what the "
                   "run logged, else the cost file's prompt_tokens, else 0)")
    c.add_argument("--batch-threshold", type=int,
                   help="calibration: the `auto` threshold the run used (default: what the run logged, else the "
                   "embedded runner's rule on the cost table)")
    p.set_defaults(func=run_simulate)


def run_simulate(args) -> int:
    from tlt.cli import CommandError

    if args.calibrate:
        return run_calibrate(args)
    for flag, value in (("--prompt-tokens", args.prompt_tokens), ("--batch-threshold", args.batch_threshold)):
        if value is not None:
            raise CommandError(f"{flag} is for --calibrate RUN_DIR")
    from tlt.sim.cluster import SimOptions, describe_engine
    from tlt.sim.run import compare, paper_job, sample_lengths, scale_spec

    spec, job_name = _job(args, paper_job, scale_spec, CommandError)
    profile = _profile(args, CommandError)
    steps = args.steps if args.steps is not None else min(5, spec.algorithm.steps)
    if steps < 1:
        raise CommandError("--steps must be >= 1")
    if args.control_interval <= 0:
        raise CommandError("--control-interval must be > 0 seconds")
    max_tokens = spec.algorithm.max_response_tokens
    length_text = args.lengths or f"lognormal:median={max(1, round(max_tokens * 0.107))},sigma=1.0"
    try:
        length_model = parse_lengths(length_text)
        lengths = sample_lengths(length_model, spec, steps, args.seed)
    except LengthSpecError as err:
        raise CommandError(str(err)) from None

    if args.drafter_tokens < 0:
        raise CommandError("--drafter-tokens must be >= 0")
    options = SimOptions(steps=steps, seed=args.seed, control_interval_s=args.control_interval, exact=args.exact,
                         drafter_tokens=args.drafter_tokens)
    setting = {
        "job": job_name,
        "gpus": _gpus(spec),
        "placement": spec.placement,
        "rollout_shards": spec.rollout.replicas,
        "sequences_per_step": spec.algorithm.prompts_per_step * spec.algorithm.group_size,
        "max_response_tokens": max_tokens,
        "lengths": length_model.describe(),
        "steps": steps,
        "seed": args.seed,
        "drafter_tokens_at_start": args.drafter_tokens,
        "engine": describe_engine(spec),
        "speculative": spec.speculative.mode,
        "batch_threshold": spec.speculative.batch_threshold,
        "lend_idle": spec.elasticity.lend_idle,
        "consolidate_tail": spec.elasticity.consolidate_tail.enabled,
        "profile": describe(profile),
    }
    started = time.perf_counter()
    quiet = args.json
    progress = _Progress(2 * steps, disabled=quiet)
    comparison = compare(spec, profile, lengths, options, setting, on_step=progress.update)
    progress.close()
    result = comparison.as_dict()
    result["wall_seconds"] = round(time.perf_counter() - started, 2)

    if args.out:
        _write_outputs(Path(args.out), comparison, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_comparison(comparison, result))
        if args.out:
            print(f"wrote {args.out}/result.json, timeline-baseline.svg, timeline-tlt.svg")
    return 0


def run_calibrate(args) -> int:
    """`tlt simulate MANIFEST --calibrate RUN_DIR --costs FILE`: measured vs simulated rollout per step."""
    from tlt.api.errors import SpecError
    from tlt.api.load import load_jobs
    from tlt.cli import CommandError
    from tlt.sim.calibrate import CalibrationError, calibrate_run, format_calibration

    run_dir = Path(args.calibrate)
    fix = f"`tlt simulate JOB.yaml --calibrate {run_dir} --costs COSTS.json`"
    if not args.manifest:
        # The run folder keeps metrics and checkpoints, not the manifest it ran.
        raise CommandError(f"--calibrate needs the job manifest the run was started with (the run folder does "
                           f"not keep it): {fix}")
    if not args.costs:
        raise CommandError(f"--calibrate needs --costs FILE, a cost table measured on the machine of the run "
                           f"(`tlt bench costs --json costs.json`): {fix}")
    ignored = [flag for flag, value in (("--gpus", args.gpus), ("--profile", args.profile),
                                         ("--lengths", args.lengths), ("--steps", args.steps),
                                         ("--max-tokens", args.max_tokens), ("--prompts-per-step",
                                                                             args.prompts_per_step),
                                         ("--out", args.out)) if value]
    if ignored or args.consolidate or args.drafter_tokens or args.exact:
        raise CommandError(f"{', '.join(ignored) or 'that option'} does not apply to --calibrate: the run's own "
                           "lengths, shards and acceptance are replayed")
    if args.prompt_tokens is not None and args.prompt_tokens < 0:
        raise CommandError("--prompt-tokens must be >= 0")
    if args.batch_threshold is not None and args.batch_threshold < 1:
        raise CommandError("--batch-threshold must be >= 1")
    try:
        jobs = load_jobs(args.manifest)
    except SpecError as err:
        raise CommandError("; ".join(str(e) for e in err.errors) + " (check it with `tlt validate`)") from None
    except OSError as err:
        raise CommandError(f"cannot read manifest {args.manifest}: {err.strerror or err}") from None
    if len(jobs) != 1:
        raise CommandError(f"{args.manifest} holds {len(jobs)} jobs; pass a file with exactly one")
    profile = _profile(args, CommandError)
    try:
        result = calibrate_run(jobs[0].spec, profile, run_dir, prompt_tokens=args.prompt_tokens,
                               batch_threshold=args.batch_threshold, seed=args.seed)
    except CalibrationError as err:
        raise CommandError(str(err)) from None
    result.setting["job"] = jobs[0].metadata.name
    result.setting["costs"] = args.costs
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(format_calibration(result))
    return 0


def _job(args, paper_job, scale_spec, CommandError):
    from tlt.api.errors import SpecError
    from tlt.api.load import load_jobs

    if args.manifest:
        if args.consolidate:
            raise CommandError(
                "--consolidate is for the built-in job; set spec.elasticity.consolidateTail in the manifest"
            )
        try:
            jobs = load_jobs(args.manifest)
        except SpecError as err:
            raise CommandError("; ".join(str(e) for e in err.errors) + " (check it with `tlt validate`)") from None
        if len(jobs) != 1:
            raise CommandError(f"{args.manifest} holds {len(jobs)} jobs; pass a file with exactly one")
        spec, name = jobs[0].spec, jobs[0].metadata.name
        algorithm = {}
        if args.max_tokens:
            algorithm["max_response_tokens"] = args.max_tokens
        if args.prompts_per_step:
            algorithm["prompts_per_step"] = args.prompts_per_step
        if algorithm:
            spec = spec.model_copy(update={"algorithm": spec.algorithm.model_copy(update=algorithm)})
        if args.gpus:
            try:
                spec = scale_spec(spec, args.gpus)
            except ValueError as err:
                raise CommandError(f"{err}; give more --gpus") from None
        return spec, name
    gpus = args.gpus or 64
    if gpus < 1:
        raise CommandError("--gpus must be >= 1")
    spec = paper_job(gpus=gpus, max_tokens=args.max_tokens or 32768, consolidate=args.consolidate)
    if args.prompts_per_step:
        spec = spec.model_copy(update={"algorithm": spec.algorithm.model_copy(
            update={"prompts_per_step": args.prompts_per_step})})
    return spec, "built-in paper-like job (Qwen2.5-7B-like, colocated GRPO)"


def _profile(args, CommandError):
    if args.costs and args.profile:
        raise CommandError("give either --costs FILE or --profile NAME, not both")
    if args.costs:
        try:
            return load_profile(args.costs)
        except (CostTableError, ValueError) as err:
            raise CommandError(str(err)) from None
    return BUILTIN_PROFILES[args.profile or DEFAULT_PROFILE]()


def _gpus(spec) -> int:
    per_shard = max(1, spec.rollout.gpus_per_replica)
    total = spec.rollout.replicas * per_shard
    if spec.placement == "disaggregated":
        total += spec.trainer.replicas * max(1, spec.trainer.gpus_per_replica)
    if spec.drafter.enabled:
        total += spec.drafter.dedicated_replicas * max(1, spec.drafter.gpus_per_replica)
    return total


class _Progress:
    """Steps simulated so far, on stderr."""

    def __init__(self, total: int, disabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="simulating", unit="step", disable=disabled, leave=False, file=sys.stderr)

    def update(self, mode, step) -> None:
        self.bar.set_postfix_str(f"{mode} step {step.step}: {step.seconds:.0f}s")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def format_comparison(comparison, result: dict) -> str:
    from tlt.sim.cluster import CATEGORIES
    from tlt.sim.run import PAPER_SPEEDUP, breakdown_rows

    s = result["setting"]
    lines = [
        f"{s['job']}: {s['gpus']} GPUs, {s['rollout_shards']} rollout shards ({s['placement']}), "
        f"{s['sequences_per_step']} sequences/step, max {s['max_response_tokens']} tokens, lengths {s['lengths']}",
        f"rollout engine modelled: {s['engine']}",
        f"profile {s['profile']['name']}; seed {s['seed']}; simulated in {result['wall_seconds']:.1f}s",
        "",
        f"{'step':>4} {'baseline s':>11} {'tlt s':>9} {'speedup':>8} {'rollout b/t s':>15} "
        f"{'spec tok %':>10} {'drafter a':>9} {'threshold':>9}",
    ]
    for b, t in zip(comparison.baseline.steps, comparison.tlt.steps):
        spec_share = 100.0 * t.speculative_tokens / max(1, t.generated_tokens)
        lines.append(
            f"{t.step:>4} {b.seconds:>11.1f} {t.seconds:>9.1f} {b.seconds / t.seconds:>7.2f}x "
            f"{b.rollout_seconds:>7.0f}/{t.rollout_seconds:<7.0f} {spec_share:>10.1f} {t.acceptance_alpha:>9.2f} "
            f"{t.batch_threshold if t.batch_threshold is not None else '-':>9}"
        )
    lines += [
        "",
        f"total: baseline {comparison.baseline.total_seconds:.1f}s, tlt {comparison.tlt.total_seconds:.1f}s, "
        f"speedup {comparison.speedup:.2f}x (last step {result['last_step_speedup']:.2f}x, "
        f"rollout {comparison.rollout_speedup:.2f}x); the TLT paper reports {PAPER_SPEEDUP[0]}-{PAPER_SPEEDUP[1]}x",
        "",
        "GPU time                     " + " ".join(f"{c:>9}" for c in CATEGORIES),
    ]
    for name, run in (("baseline", comparison.baseline), ("tlt", comparison.tlt)):
        shares = breakdown_rows(run)
        hours = sum(run.gpu_seconds.values()) / 3600.0
        cells = " ".join(f"{shares[c]:>8.1f}%" for c in CATEGORIES)
        lines.append(f"{name:<8} {run.gpus:>4} GPUs {hours:>8.1f}h {cells}")
    actions = ", ".join(f"{k} {v}" for k, v in sorted(comparison.tlt.actions.items())) or "none"
    lines.append(f"elastic actions (tlt): {actions}")
    return "\n".join(lines)


def _write_outputs(out: Path, comparison, result: dict) -> None:
    from tlt.report.svg import timeline

    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    for run in (comparison.baseline, comparison.tlt):
        spans = {name: [(a, b, _color_role(label)) for a, b, label in ss] for name, ss in run.timeline.items()}
        title = f"{run.mode}: per-GPU activity ({len(spans)} of {run.gpus} GPUs shown), {run.total_seconds:.0f}s"
        (out / f"timeline-{run.mode}.svg").write_text(timeline(title, spans))


def _color_role(label: str) -> str:
    """The report's timeline colours roles; training is the trainer's colour, sync and switches grey."""
    return {"train": "trainer"}.get(label, label)
