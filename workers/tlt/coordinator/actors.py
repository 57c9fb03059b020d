"""The job's workers as Ray actors, and the coordinator's handle on them.

In embedded mode each rollout shard is a Ray actor bound to its own CPU core(s);
the trainer is one more actor. `WorkerPool` is the only place that talks to Ray,
so the loop reads as plain calls.
"""

from __future__ import annotations

import os
from pathlib import Path

import ray
import torch

from tlt.api.model import ReasoningRLJobSpec
from tlt.coordinator.shard import RolloutShard, bind_threads
from tlt.drafter.averaging import weighted_average
from tlt.engine.types import Request, Result

TRAINER_STATE = "trainer"
DRAFTER_STATE = "drafter.pt"


class TrainerWorker:
    """The policy trainer (torch or DeepSpeed) inside its own process."""

    def __init__(self, spec: ReasoningRLJobSpec, model_dir: str, cores: list[int] | None, checkpoint: str | None):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        bind_threads(cores)
        from tlt.trainer.policy import PolicyTrainer

        self.trainer = PolicyTrainer.from_spec(spec, model_dir)
        if checkpoint:
            self.trainer.load_checkpoint(Path(checkpoint) / TRAINER_STATE)

    def train(self, prompts, responses, advantages, old_logprobs) -> dict:
        from tlt.trainer.batch import Rollouts

        return self.trainer.train(Rollouts(prompts, responses, advantages, old_logprobs=old_logprobs))

    def weights(self) -> dict:
        return {k: v.detach().to("cpu") for k, v in self.trainer.state_dict().items()}

    def save(self, folder: str) -> None:
        self.trainer.save_checkpoint(Path(folder) / TRAINER_STATE)

    def export(self, folder: str) -> str:
        return str(self.trainer.export_hf(folder))


class ShardWorker(RolloutShard):
    """A rollout shard with the methods the coordinator calls remotely."""

    def generate(self, requests: list[Request]) -> list[Result]:
        self.reclaim()
        return self.engine.generate(requests)

    def save_drafter(self, path: str) -> None:
        if self.eagle is not None:
            torch.save({k: v.detach().cpu() for k, v in self.eagle.state_dict().items()}, path)

    def export_drafter(self, folder: str) -> str | None:
        if self.eagle is None:
            return None
        return str(self.eagle.save(folder))

    def measure_threshold(self) -> int:
        from tlt.engine.costs import measure_costs
        from tlt.speculative.adaptive import Strategy

        table = measure_costs(self.model, self.eagle, batch_sizes=(1, 2, 4, 8, 16, 32), widths=(1, 4, 8),
                              context_len=128, repeats=3, progress=False)
        return table.auto_threshold(Strategy.parse(self.spec.speculative.strategies[0]))


def _cores(index: int, count: int) -> list[int]:
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    return [available[index % len(available)]] if count > 0 else available


class WorkerPool:
    def __init__(self, spec: ReasoningRLJobSpec, model_dir: str, checkpoint: Path | None = None):
        from transformers import AutoTokenizer

        self.spec = spec
        self.model_dir = model_dir
        self.checkpoint = checkpoint
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if not ray.is_initialized():
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
                     object_store_memory=256 * 1024 * 1024, configure_logging=False)
        prefix = "worker" if spec.placement == "colocated" else "rollout"
        self.shard_names = [f"{prefix}-{i}" for i in range(spec.rollout.replicas)]
        self.trainer_name = "trainer-0"
        trainer_cls = ray.remote(num_cpus=0)(TrainerWorker)
        self.trainer = trainer_cls.remote(spec, model_dir, _cores(0, 0), str(checkpoint) if checkpoint else None)
        self.shards: dict = {}
        self._lent: set[str] = set()

    # ---- start-up ----
    def calibrate_threshold(self) -> int:
        """`batchThreshold: auto`: measure where speculation pays on this machine."""
        probe = ray.remote(num_cpus=0)(ShardWorker).remote("probe", self.model_dir, self.spec, cores=_cores(0, 1))
        try:
            return max(1, int(ray.get(probe.measure_threshold.remote())))
        finally:
            ray.kill(probe)

    def start_shards(self, threshold: int) -> None:
        drafter_state = None
        if self.checkpoint and (self.checkpoint / DRAFTER_STATE).is_file():
            drafter_state = torch.load(self.checkpoint / DRAFTER_STATE, map_location="cpu")
        shard_cls = ray.remote(num_cpus=0, max_concurrency=4)(ShardWorker)
        for i, name in enumerate(self.shard_names):
            self.shards[name] = shard_cls.remote(name, self.model_dir, self.spec, cores=_cores(i, 1),
                                                 batch_threshold=threshold, drafter_state=drafter_state)
        if self.checkpoint:
            weights = ray.get(self.trainer.weights.remote())
            ray.get([s.set_policy.remote(0, weights) for s in self.shards.values()])

    # ---- rollout ----
    def start_rollout(self, step: int, assignment: dict[str, list[Request]]) -> None:
        self._lent.clear()
        ray.get([self.shards[name].start_rollout.remote(step, reqs) for name, reqs in assignment.items()])

    def poll(self) -> tuple[dict, list[Result]]:
        names = list(self.shards)
        progress = ray.get([self.shards[n].progress.remote() for n in names])
        finished = ray.get([self.shards[n].take_results.remote() for n in names])
        return dict(zip(names, progress)), [r for batch in finished for r in batch]

    def lent(self, name: str) -> bool:
        return name in self._lent

    def lend(self, name: str) -> bool:
        if name in self.shards and ray.get(self.shards[name].lend.remote()):
            self._lent.add(name)
            return True
        return False

    def reclaim(self, name: str) -> None:
        if name in self.shards:
            ray.get(self.shards[name].reclaim.remote())
        self._lent.discard(name)

    def consolidate(self, target: str, sources, counts) -> int:
        moved = 0
        for source, count in zip(sources, counts):
            requests = ray.get(self.shards[source].move_out.remote(count))
            if requests:
                ray.get(self.shards[target].add_requests.remote(requests))
                moved += len(requests)
        return moved

    def decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def evaluate(self, requests: list[Request]) -> list[Result]:
        first = self.shards[self.shard_names[0]]
        self.reclaim(self.shard_names[0])
        return ray.get(first.generate.remote(requests))

    # ---- training and sync ----
    def train(self, prompts, responses, advantages, old_logprobs, policy_version: int) -> dict:
        metrics = ray.get(self.trainer.train.remote(prompts, responses, advantages, old_logprobs))
        weights = ray.get(self.trainer.weights.remote())
        ray.get([s.set_policy.remote(policy_version, weights) for s in self.shards.values()])
        self._lent.clear()
        return metrics

    def sync_drafters(self, version: int) -> int:
        """Average the replicas trained in this version (weighted by steps) into version+1."""
        reports = ray.get([s.drafter_report.remote() for s in self.shards.values()])
        trained = [(steps, state) for _, steps, state in reports if state is not None and steps > 0]
        if not trained:
            return version
        merged = weighted_average([s for _, s in trained], [float(n) for n, _ in trained])
        ray.get([s.set_drafter.remote(version + 1, merged) for s in self.shards.values()])
        self._lent.clear()
        return version + 1

    def save(self, folder: Path) -> None:
        ray.get(self.trainer.save.remote(str(folder)))
        ray.get(self.shards[self.shard_names[0]].save_drafter.remote(str(folder / DRAFTER_STATE)))

    def export(self, policy_dir: Path, drafter_dir: Path | None) -> None:
        ray.get(self.trainer.export.remote(str(policy_dir)))
        if drafter_dir is not None:
            ray.get(self.shards[self.shard_names[0]].export_drafter.remote(str(drafter_dir)))

    def shutdown(self) -> None:
        for actor in [*self.shards.values(), self.trainer]:
            try:
                ray.kill(actor)
            except Exception:
                pass
        self.shards.clear()
