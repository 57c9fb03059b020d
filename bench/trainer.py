"""Policy-update benchmark: packed micro-batches (no padding) against padded ones, same process.

The workload is one RL step of a job (default: examples/quickstart.yaml): its
promptsPerStep x groupSize requests are sampled from its model by the rollout
engine (temperature and response budget of the job), so the response lengths
have the task's long tail, and the engine's log-probs are the old log-probs.
Then two trainers with the job's algorithm (and backend) update on that batch,
alternating, `--rounds` times each: the baseline pads every sequence of a
micro-batch to the longest (`remove_padding=False`), the contender packs them.
Both first updates must give the same loss (they train the same thing).

    .venv/bin/python bench/trainer.py [examples/quickstart.yaml] [--rounds 3] [--threads 1]
        [--deepspeed-stage N]

Prints one line per round, the median ratio, and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workers"))


def rollouts_of_one_step(spec, model_dir: Path):
    """The first step's requests, decoded by the torch engine: (Rollouts, lengths of prompt + response)."""
    from tlt.coordinator.loop import request_seed
    from tlt.coordinator.prompts import PromptSource, load_tokenizer
    from tlt.engine.torch_engine import TorchEngine
    from tlt.engine.types import Request
    from tlt.models.loading import load_model
    from tlt.trainer import Rollouts, step_advantages

    a = spec.algorithm
    tokenizer = load_tokenizer(spec, model_dir)
    items, _ = PromptSource(spec, tokenizer).take(0, a.prompts_per_step)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    requests = [Request(prompt=list(item.ids), max_tokens=a.max_response_tokens, stop_ids=eos,
                        temperature=a.temperature, top_p=a.top_p, seed=request_seed(a.seed, 1, g, k), id=(g, k))
                for g, item in enumerate(items) for k in range(a.group_size)]
    model = load_model(model_dir, dtype="float32")
    engine = TorchEngine(model, num_slots=spec.rollout.max_batch_size,
                         max_model_len=a.max_response_tokens + max(len(r.prompt) for r in requests))
    results = engine.generate(requests, progress=True)
    # Rewards only shape the advantages; the update's cost does not depend on them.
    # Every other response of a group is "wrong", so every group has mixed rewards and no rollout is
    # skipped for a zero advantage (ranking by length no longer did: the quickstart's model gives
    # most groups four responses of one length).
    lengths = torch.tensor([len(r.tokens) for r in results], dtype=torch.float32)
    rewards = (torch.arange(len(results)) % 2 == 0).float()
    batch = Rollouts([r.prompt for r in results], [r.tokens for r in results],
                     step_advantages(rewards, lengths, a), old_logprobs=[r.logprobs for r in results])
    return batch, [len(r.prompt) + len(r.tokens) for r in results]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", nargs="?", default=str(ROOT / "examples" / "quickstart.yaml"))
    parser.add_argument("--rounds", type=int, default=3, help="timed updates of each trainer (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--deepspeed-stage", type=int, default=None,
                        help="train with DeepSpeed ZeRO at this stage (default: the job's trainer.deepspeed)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tlt.api.load import load_jobs
    from tlt.models.resolve import resolve_model
    from tlt.trainer import PolicyTrainer, TrainerConfig

    spec = load_jobs(args.job)[0].spec
    model_dir = resolve_model(spec.model)
    batch, lengths = rollouts_of_one_step(spec, model_dir)
    tokens = batch.num_tokens()
    ds = spec.trainer.deepspeed
    backend = "deepspeed" if args.deepspeed_stage is not None or ds.enabled else "torch"
    stage = args.deepspeed_stage if args.deepspeed_stage is not None else ds.zero_stage
    trainers = {}
    for name, remove_padding in (("padded", False), ("packed", True)):
        config = TrainerConfig.from_algorithm(spec.algorithm, remove_padding=remove_padding)
        trainers[name] = PolicyTrainer(model_dir, config, backend=backend, zero_stage=stage, device="cpu")
    print(f"{len(lengths)} sequences, {sum(lengths)} tokens ({tokens} response tokens trained on); "
          f"length median {statistics.median(lengths):.0f}, max {max(lengths)}; {backend}"
          f"{f' ZeRO-{stage}' if backend == 'deepspeed' else ''}, {args.threads} thread(s)", file=sys.stderr)

    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    first_loss = {}
    for k in range(args.rounds + 1):  # round 0 warms up
        for name, trainer in trainers.items():
            started = time.perf_counter()
            metrics = trainer.train(batch)
            took = time.perf_counter() - started
            first_loss.setdefault(name, metrics["loss"])
            if k:
                seconds[name].append(took)
                print(f"round {k} {name}: {took:.2f} s, {metrics['tokens_per_second']:.0f} tokens/s", file=sys.stderr)
    same = abs(first_loss["packed"] - first_loss["padded"]) <= 1e-5 * max(1.0, abs(first_loss["padded"]))
    padded, packed = statistics.median(seconds["padded"]), statistics.median(seconds["packed"])
    print(f"median update: padded {padded:.2f} s, packed {packed:.2f} s: {padded / packed:.2f}x; "
          f"same first loss: {same}", file=sys.stderr)
    print(json.dumps({
        "bench": "trainer", "job": Path(args.job).name, "backend": backend,
        "zero_stage": stage if backend == "deepspeed" else None, "threads": args.threads,
        "sequences": len(lengths), "tokens": sum(lengths), "trained_tokens": tokens,
        "length_median": statistics.median(lengths), "length_max": max(lengths),
        "padded_seconds": round(padded, 3), "packed_seconds": round(packed, 3),
        "padded_tokens_per_second": round(tokens / padded, 1), "packed_tokens_per_second": round(tokens / packed, 1),
        "ratio": round(padded / packed, 2), "same_first_loss": same,
        "first_loss": {k: round(v, 6) for k, v in first_loss.items()},
    }))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
