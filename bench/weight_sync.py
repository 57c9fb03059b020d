"""Policy weight sync benchmark: trainer -> rollout shards, through the coordinator vs the broadcast group.

Both paths run in one process on one local Ray, with the real actors (a trainer rank,
`--shards` rollout shards of the torch engine):

- baseline ("object"): what every step did before: the trainer's state dict is fetched
  to the coordinator's process (ray.get), then sent to each shard as a Ray object;
- contender ("broadcast"): the trainer's rank 0 streams the policy layer by layer over
  the weight broadcast group (`tlt.trainer.sync`, gloo on CPU) straight to the shards.

Models: the quickstart's (`tiny-arith`, 1.5M parameters) and a Qwen2.5-0.5B-shaped one
with random weights (494M parameters, fp32 on CPU: 2 GB per copy; written once to
--workdir). Each path runs `--rounds` times per model, alternating; medians and the
ratio are printed, then a final JSON line. Every shard's weights are checked against
the trainer's after each contender round.

    .venv/bin/python bench/weight_sync.py [--models tiny,0.5b] [--rounds 3] [--shards 2]

The 0.5B shape's baseline holds the state dict in this process, the object store and each
shard at once: with 2 shards it needs more than 24 GB; use --shards 1 on such a machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workers"))

QWEN_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                tie_word_embeddings=True, model_type="qwen2", rope_theta=1000000.0, rms_norm_eps=1e-6)


def qwen_05b_folder(workdir: Path) -> Path:
    """A Qwen2.5-0.5B-shaped HF folder with seeded random weights (written once)."""
    from tlt.models.config import ModelConfig
    from tlt.models.loading import random_model, save_model
    from tlt.tasks.tokenizer import save_tokenizer

    folder = workdir / "qwen2.5-0.5b-shape"
    if not (folder / "model.safetensors").is_file():
        print(f"writing a random Qwen2.5-0.5B-shaped model to {folder}", file=sys.stderr)
        save_model(random_model(ModelConfig(**QWEN_05B), seed=0), folder)
        save_tokenizer(folder)
    return folder


def spec_for(model: Path, shards: int):
    """The quickstart job on `model`, without drafter or speculation (only the policy moves here)."""
    import yaml

    from tlt.api.load import parse_job

    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    spec = doc["spec"]
    spec["model"] = {"path": str(model)}
    spec["rollout"].update(replicas=shards, maxBatchSize=8)
    spec["algorithm"]["maxResponseTokens"] = 64
    spec["drafter"] = {"enabled": False}
    spec["speculative"] = {"mode": "off"}
    spec["elasticity"] = {"lendIdle": False, "consolidateTail": {"enabled": False}}
    spec["eval"] = {"everySteps": 0}
    return parse_job(doc).spec


def through_coordinator(pool, version: int) -> None:
    """The baseline: the state dict to this process, then to every shard."""
    import ray

    weights = ray.get(pool.trainer.weights.remote())
    ray.get([w.set_policy.remote(version, weights) for w in pool._workers().values()])
    del weights


def shards_match(pool) -> bool:
    """Every shard holds exactly the trainer's weights (compared inside the shards: no extra copies here)."""
    import ray

    def same(shard, trained) -> bool:
        state = shard.model.state_dict()
        return all(torch.equal(state[k], v.to(state[k].dtype)) for k, v in trained.items())

    ref = pool._weights_ref()
    answers = ray.get([w.__ray_call__.remote(same, ref) for w in pool._workers().values()])
    del ref
    return all(answers)


def measure(name: str, folder: Path, shards: int, rounds: int) -> dict:
    import ray

    from tlt.coordinator.actors import WorkerPool

    pool = WorkerPool(spec_for(folder, shards), str(folder))
    try:
        pool.start_shards(4)
        params = sum(n for layer in ray.get(pool.trainer.weight_manifest.remote()) for _, s in layer
                     for n in [int(torch.tensor(s).prod())])
        seconds = {"object": [], "broadcast": []}
        for k in range(rounds + 1):  # round 0 warms up (and forms the group)
            for path in ("object", "broadcast"):
                started = time.perf_counter()
                if path == "object":
                    through_coordinator(pool, k)
                elif not pool._sync_policy(k):
                    raise RuntimeError("the broadcast missed a shard")
                took = time.perf_counter() - started
                if k:
                    seconds[path].append(took)
                    print(f"{name} round {k} {path}: {took:.3f} s", file=sys.stderr)
        same = shards_match(pool)  # after a broadcast round
    finally:
        pool.shutdown()
    before, after = statistics.median(seconds["object"]), statistics.median(seconds["broadcast"])
    print(f"{name}: {params / 1e6:.1f}M parameters to {shards} shards: through the coordinator {before:.3f} s, "
          f"broadcast {after:.3f} s: {before / after:.2f}x", file=sys.stderr)
    return {"model": name, "parameters": params, "shards": shards, "object_seconds": round(before, 4),
            "broadcast_seconds": round(after, 4), "ratio": round(before / after, 2), "weights_equal": same,
            "rounds": {k: [round(x, 4) for x in v] for k, v in seconds.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,0.5b", help="comma-separated: tiny (the quickstart's), 0.5b")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "tlt-bench-weight-sync"))
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    # An object store that holds a 0.5B fp32 state dict, so the baseline is not measured spilling to disk.
    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             object_store_memory=4 * 1024**3, configure_logging=False)
    from tlt.tasks.bootstrap import ensure_base_model

    results = []
    try:
        for name in args.models.split(","):
            folder = ensure_base_model("tiny-arith") if name == "tiny" else qwen_05b_folder(Path(args.workdir))
            results.append(measure(name, folder, args.shards, args.rounds))
    finally:
        ray.shutdown()
    print(json.dumps({"bench": "weight_sync", "transport": "gloo (CPU)", "results": results}))
    return 0 if all(r["weights_equal"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
