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


def run_warmup(args) -> int:
    import torch

    from tlt.models.config import ConfigError

    from .warmup import jsonl_prompts, load_target, task_prompts, tokenizer_for, warmup

    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("prompts", "max_tokens", "steps"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be >= 1")
    try:
        folder, target = load_target(args.model, args.dtype)
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
