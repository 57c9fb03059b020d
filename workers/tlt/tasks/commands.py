"""`tlt task bootstrap` and `tlt task sample`: the built-in task and its base model."""

from __future__ import annotations

import json
import random


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "task", help="the built-in reasoning task and its tiny base model",
        description="Build the tiny base model, or look at problems of a built-in task.")
    sub = parser.add_subparsers(dest="task_command", metavar="ACTION")

    boot = sub.add_parser(
        "bootstrap", help="put the tiny base model in the cache (or train it) and print its folder",
        description=(
            "The tiny base model is trained by supervised learning on imperfect traces of the task. "
            "The default recipe ships trained with tlt and is copied into the cache "
            "($TLT_CACHE_DIR/models, default ~/.cache/tlt/models); --train, --steps or --seed train "
            "it on this machine (8-16 minutes on 2 cores for the default recipe). Later calls "
            "reuse the cached folder."))
    boot.add_argument("--name", default="tiny-arith", help="base model recipe (default tiny-arith)")
    boot.add_argument("--out", default=None, help="build into this folder instead of the cache")
    boot.add_argument("--steps", type=int, default=None, help="optimizer steps (changes the cache key)")
    boot.add_argument("--seed", type=int, default=None, help="training seed (changes the cache key)")
    boot.add_argument("--train", action="store_true",
                      help="train even the shipped recipe on this machine, into --out DIR")
    boot.add_argument("--threads", type=int, default=None,
                      help="torch CPU threads for training (default: the idle cores by load average, at most 4)")
    boot.set_defaults(func=run_bootstrap)

    sample = sub.add_parser(
        "sample", help="print a few problems with reference traces",
        description="Print problems of a task with their reference traces and length statistics.")
    sample.add_argument("--task", default="arith", help="task name (default arith)")
    sample.add_argument("--split", default="train", choices=["train", "heldout"])
    sample.add_argument("--count", type=int, default=3, help="problems to print (default 3)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--error-rate", type=float, default=0.0,
                        help="per-step slip probability in the printed traces (as in the bootstrap data)")
    sample.add_argument("--max-response-tokens", type=int, default=512)
    sample.add_argument("--json", action="store_true", help="one JSON object per problem")
    sample.set_defaults(func=run_sample)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_bootstrap(args) -> int:
    from tlt.cli import CommandError
    from tlt.tasks.bootstrap import RECIPES, ensure_base_model

    if args.name not in RECIPES:
        raise CommandError(f"--name {args.name!r}: unknown base model; known are {', '.join(sorted(RECIPES))}")
    overrides = {}
    if args.steps is not None:
        if args.steps < 1:
            raise CommandError(f"--steps must be at least 1, got {args.steps}")
        overrides["steps"] = args.steps
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.train and args.out is None:
        raise CommandError("--train needs --out DIR: the cache keeps the shipped build of the recipe, "
                           "which jobs of `model.builtin` use")
    if args.threads is not None and args.threads < 1:
        raise CommandError(f"--threads must be at least 1, got {args.threads}")
    print(ensure_base_model(args.name, out=args.out, threads=args.threads or 0, train=args.train,
                            **overrides))
    return 0


def run_sample(args) -> int:
    from tlt.cli import CommandError
    from tlt.eval.evaluate import percentile
    from tlt.tasks import get_task
    from tlt.tasks.tokenizer import TaskCodec

    if args.count < 1:
        raise CommandError(f"--count must be at least 1, got {args.count}")
    if not 0 <= args.error_rate <= 1:
        raise CommandError(f"--error-rate must be between 0 and 1, got {args.error_rate}")
    try:
        task = get_task(args.task, max_response_tokens=args.max_response_tokens)
    except KeyError as err:
        raise CommandError(f"--task: {err.args[0]}") from None
    except ValueError as err:
        raise CommandError(f"--max-response-tokens: {err}") from None
    rng = random.Random(args.seed)
    for problem in task.problems(args.split, args.count, seed=args.seed):
        trace = task.noisy_trace(problem, rng, args.error_rate) if args.error_rate else problem.trace
        reward = task.verify(problem.prompt, trace, problem.answer)
        if args.json:
            print(json.dumps({"prompt": problem.prompt, "answer": problem.answer,
                              "trace": trace, "reward": reward}))
        else:
            print(f"prompt:\n{problem.prompt}response:\n{trace}\n(answer {problem.answer}, reward {reward})\n")
    if not args.json:
        codec = TaskCodec()
        lengths = [len(codec.encode(p.trace)) + 1
                   for p in task.problems(args.split, 2000, seed=args.seed)]
        print(f"response tokens (tiny model's tokenizer, with <eos>) over 2000 {args.split} "
              f"problems: p50 {percentile(lengths, 50):.0f}, p90 {percentile(lengths, 90):.0f}, "
              f"max {max(lengths)}")
    return 0
