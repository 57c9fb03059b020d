"""`tlt eval`: accuracy and response-length tail of a model folder on a task or a dataset."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="held-out accuracy and response lengths of a model",
        description=(
            "Generate one response per held-out prompt and report accuracy, mean and tail "
            "(p50, p90, max) response length. Use --task for a built-in task (e.g. arith) or "
            "--data for a JSONL file with prompt and answer fields (scored with the math "
            "verifier unless --reward says otherwise; the model's chat template is applied)."))
    parser.add_argument("--model", required=True, help="Hugging Face model folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="built-in task name, e.g. arith")
    source.add_argument("--data", help="JSONL file, one {prompt, answer} object per line")
    parser.add_argument("--num-prompts", type=int, default=128, help="prompts to evaluate (default 128)")
    parser.add_argument("--max-tokens", type=int, default=512, help="response token limit (default 512)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 for greedy (default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="sampling and held-out problem seed")
    parser.add_argument("--reward", default=None,
                        help="reward name: task, math, exact or module:function "
                             "(default: task for --task, math for --data)")
    parser.add_argument("--prompt-field", default="prompt", help="JSONL prompt field (default prompt)")
    parser.add_argument("--answer-field", default="answer", help="JSONL answer field (default answer)")
    parser.add_argument("--no-chat-template", action="store_true",
                        help="feed --data prompts as plain text even if the tokenizer has a chat template")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences decoded together (default 64)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="weights dtype (default float32)")
    parser.add_argument("--device", default=None, help="torch device (default cuda when present, else cpu)")
    parser.add_argument("--show", type=int, default=0, metavar="K", help="also print the first K responses")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run_eval)


def run_eval(args) -> int:
    import torch

    from tlt.cli import CommandError
    from tlt.eval.evaluate import evaluate, load_jsonl, task_items
    from tlt.rewards import RewardError, get_reward

    for name in ("num_prompts", "max_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.temperature < 0:
        raise CommandError(f"--temperature must be 0 (greedy) or positive, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise CommandError(f"--top-p must be in (0, 1], got {args.top_p}")
    model = Path(args.model)
    if not (model / "config.json").is_file():
        raise CommandError(
            f"--model {model}: not a Hugging Face model folder (no config.json there); build the "
            "built-in one with `tlt task bootstrap`")
    try:
        if args.task:
            items = task_items(args.task, args.num_prompts, seed=args.seed)
        else:
            items = load_jsonl(args.data, args.prompt_field, args.answer_field, limit=args.num_prompts)
        reward = get_reward(args.reward or ("task" if args.task else "math"))
    except KeyError as err:
        raise CommandError(f"--task: {err.args[0]}") from None
    except FileNotFoundError:
        raise CommandError(f"--data {args.data}: no such file") from None
    except (ValueError, RewardError) as err:
        raise CommandError(str(err)) from None
    summary, responses = evaluate(
        model, items, reward, max_tokens=args.max_tokens, temperature=args.temperature,
        top_p=args.top_p, seed=args.seed, chat_template=not args.no_chat_template,
        batch_size=args.batch_size, dtype=getattr(torch, args.dtype), device=args.device)
    result = {"model": str(model), "source": args.task or args.data, **summary.as_dict()}
    if args.json:
        print(json.dumps(result))
    else:
        for item, response in list(zip(items, responses))[: args.show]:
            print(f"--- prompt: {item.prompt!r}  answer: {item.answer!r}\n{response}")
        print(f"{'model':<14}{model}\n{'source':<14}{result['source']}")
        print(f"{'prompts':<14}{summary.num_prompts}  (temperature {summary.temperature}, "
              f"max tokens {summary.max_tokens})")
        print(f"{'accuracy':<14}{summary.accuracy:.3f}")
        print(f"{'length mean':<14}{summary.mean_length:.1f}  p50 {summary.p50_length:.0f}  "
              f"p90 {summary.p90_length:.0f}  max {summary.max_length}  "
              f"(truncated {summary.truncated})")
    sys.stdout.flush()
    return 0
