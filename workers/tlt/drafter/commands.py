"""`tlt drafter warmup`: train an EAGLE drafter from scratch on the target's own generations."""

from __future__ import annotations

import json
import sys

from tlt.cli import CommandError

from .warmup import WarmupConfig


def register(subparsers) -> None:
    drafter = subparsers.add_parser("drafter", help="train and export the EAGLE draft model",
                                    description="Drafter tools: warm-up training and export.")
    sub = drafter.add_subparsers(dest="drafter_command", metavar="SUBCOMMAND")
    w = sub.add_parser(
        "warmup", help="train a drafter from scratch on the target's own generations",
        description="Sample responses from the target (--task prompts or --data JSONL prompts), compute "
        "the target's hidden states, and train an EAGLE drafter; the result in --out is an EAGLE folder "
        "(config.json + model.safetensors) that tlt, vLLM and SGLang load. Re-running with the same "
        "--out resumes from the last checkpoint and reuses the generated data.")
    w.add_argument("--model", required=True, help="target model folder (Hugging Face layout) or a built-in "
                   "base model name such as tiny-arith")
    src = w.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="JSONL file with a 'prompt' (text) or 'prompt_ids' field per line")
    src.add_argument("--task", help="built-in task whose train prompts to use, e.g. arith")
    w.add_argument("--out", required=True, help="output folder (EAGLE drafter, checkpoints, generated data)")
    d = WarmupConfig()
    w.add_argument("--prompts", type=int, default=d.prompts, help="number of prompts (default %(default)s)")
    w.add_argument("--max-tokens", type=int, default=d.max_tokens, help="response token limit (default %(default)s)")
    w.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature (default %(default)s)")
    w.add_argument("--steps", type=int, default=d.steps, help="optimizer steps in all (default %(default)s)")
    w.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default %(default)s)")
    w.add_argument("--window", type=int, default=d.max_response_tokens,
                   help="most response tokens per training window (default %(default)s)")
    w.add_argument("--seed", type=int, default=d.seed)
    w.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16 or float64")
    w.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    w.add_argument("--quiet", action="store_true", help="no progress bars")
    w.set_defaults(func=run_warmup)
    drafter.set_defaults(func=lambda args: (drafter.print_help(), 2)[1])
    register_bench(subparsers)


def run_warmup(args) -> int:
    import torch

    from tlt.models.config import ConfigError

    from tlt.models.resolve import load_named

    from .warmup import jsonl_prompts, task_prompts, tokenizer_for, warmup

    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("prompts", "max_tokens", "steps"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be >= 1")
    try:
        folder, target = load_named(args.model, args.dtype)
    except ConfigError as err:
        raise CommandError(str(err)) from None
    tokenizer = tokenizer_for(folder)
    if tokenizer.eos_token_id is None:
        raise CommandError(f"the tokenizer in {folder} has no eos token; set eos_token in its tokenizer config")
    cfg = WarmupConfig(prompts=args.prompts, max_tokens=args.max_tokens, temperature=args.temperature,
                       steps=args.steps, lr=args.lr, max_response_tokens=args.window, seed=args.seed)

    def prompts():
        if args.task:
            from tlt.tasks import task_names
            if args.task not in task_names():
                raise CommandError(f"unknown task {args.task!r}; known tasks: {', '.join(task_names())}")
            return task_prompts(args.task, args.prompts, args.seed, tokenizer)
        try:
            return jsonl_prompts(args.data, args.prompts, tokenizer)
        except (OSError, ValueError) as err:
            raise CommandError(f"cannot read prompts: {err}") from None

    summary = warmup(target, prompts, args.out, cfg, [tokenizer.eos_token_id], progress=not args.quiet)
    print(json.dumps({k: summary[k] for k in ("steps", "loss", "tokens_trained", "sequences")}))
    print(f"drafter written to {args.out} (EAGLE folder: config.json + model.safetensors)", file=sys.stderr)
    return 0


__all__ = ["register"]


def register_bench(subparsers) -> None:
    """`tlt bench rollout`."""
    from tlt.cli import add_bench_command

    b = add_bench_command(subparsers, "rollout",
                          "plain vs always-on vs adaptive speculative decoding on the built-in task's "
                          "long-tailed rollout, with a warmed-up drafter (ratios and a final JSON line)")
    add_rollout_args(b)
    b.set_defaults(func=run_rollout_bench)


def add_rollout_args(b) -> None:
    from .rollout_bench import BenchConfig

    d = BenchConfig()
    b.add_argument("--model", default="tiny-arith", help="target model folder or built-in base model name "
                   "(default %(default)s)")
    b.add_argument("--drafter", help="EAGLE drafter folder; default: warm one up (cached) with "
                   "--warmup-steps steps")
    b.add_argument("--warmup-steps", type=int, default=600, help="warm-up steps when --drafter is not given")
    b.add_argument("--warmup-prompts", type=int, default=512, help="warm-up prompts when --drafter is not given")
    b.add_argument("--requests", type=int, default=d.requests, help="long-tail requests (default %(default)s)")
    b.add_argument("--max-tokens", type=int, default=d.max_tokens, help="response limit (default %(default)s)")
    b.add_argument("--batch-sizes", default=",".join(map(str, d.batch_sizes)),
                   help="running batch sizes of the fixed-batch runs (default %(default)s)")
    b.add_argument("--tokens", type=int, default=d.tokens, help="tokens per request in fixed-batch runs")
    b.add_argument("--repeats", type=int, default=d.repeats, help="timed repeats per fixed-batch cell (median)")
    b.add_argument("--chain", type=int, default=d.chain, help="draft chain length (default %(default)s)")
    b.add_argument("--threshold", type=int, help="speculation batch threshold (default: auto from the cost table)")
    b.add_argument("--temperature", type=float, default=d.temperature,
                   help="sampling temperature of every run (default %(default)s = greedy); outputs must be "
                   "token-identical to plain decoding's at any temperature")
    b.add_argument("--dtype", default="float32", help="float32 (default) or float64 (exact equality, no float ties)")
    b.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    b.add_argument("--seed", type=int, default=0)


def run_rollout_bench(args) -> int:
    import torch

    from tlt.models.config import ConfigError
    from tlt.models.drafter import EagleDrafter

    from .rollout_bench import BenchConfig, run_bench
    from tlt.models.resolve import load_named

    from .warmup import WarmupConfig, task_prompts, tokenizer_for, warmup

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        sizes = tuple(sorted({int(x) for x in args.batch_sizes.split(",") if x.strip()}))
    except ValueError:
        raise CommandError("--batch-sizes must be comma-separated integers, e.g. 1,4,16,64") from None
    if not sizes or min(sizes) < 1:
        raise CommandError("--batch-sizes needs integers >= 1")
    if args.temperature < 0:
        raise CommandError("--temperature must be >= 0 (0 = greedy)")
    try:
        folder, target = load_named(args.model, args.dtype)
    except ConfigError as err:
        raise CommandError(str(err)) from None
    tokenizer = tokenizer_for(folder)
    if args.drafter:
        try:
            drafter = EagleDrafter.load(args.drafter, target)
        except ConfigError as err:
            raise CommandError(str(err)) from None
    else:
        out = default_drafter_dir(folder, args.warmup_steps, args.warmup_prompts, args.seed)
        cfg = WarmupConfig(prompts=args.warmup_prompts, steps=args.warmup_steps, seed=args.seed,
                           max_tokens=args.max_tokens)
        warmup(target, lambda: task_prompts("arith", cfg.prompts, args.seed, tokenizer,
                                            task_options={"max_response_tokens": args.max_tokens}),
               out, cfg, [tokenizer.eos_token_id])
        drafter = EagleDrafter.load(out, target)
    cfg = BenchConfig(batch_sizes=sizes, tokens=args.tokens, requests=args.requests, max_tokens=args.max_tokens,
                      repeats=args.repeats, chain=args.chain, threshold=args.threshold, seed=args.seed,
                      temperature=args.temperature)
    summary = run_bench(target, drafter, tokenizer, cfg)
    for line in summary.pop("table"):
        print(line)
    print(json.dumps(summary))
    if not summary["outputs_identical"]:
        print(f"error: speculative outputs differ from plain decoding's: {summary['mismatched_sequences']}",
              file=sys.stderr)
        return 1
    return 0


def default_drafter_dir(model_folder, steps: int, prompts: int, seed: int):
    from tlt.tasks.bootstrap import cache_dir

    return cache_dir() / "drafters" / f"{model_folder.name}-w{steps}-p{prompts}-s{seed}"
