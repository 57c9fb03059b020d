"""The job's workers as Ray actors, and the coordinator's handle on them.

In embedded mode each rollout shard is a Ray actor bound to its own CPU core(s);
the trainer is one more actor. On a cluster (`PodNodes`) every pod runs one Ray
node offering the resource `tlt.pod.<role>-<index>`, and each actor is pinned to
its pod's node and named after it, so the pod's role watcher can find it.
`WorkerPool` is the only place that talks to Ray, so the loop reads as plain calls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from tlt.api.model import ReasoningRLJobSpec
from tlt.coordinator.shard import RolloutShard, bind_threads
from tlt.drafter import Sample
from tlt.drafter.averaging import weighted_average
from tlt.elastic import shard_role
from tlt.engine.types import Request, Result

TRAINER_STATE = "trainer"
DRAFTER_STATE = "drafter.pt"
NODE_RESOURCE = "tlt.pod.{}"  # each pod's Ray node offers one unit of its own resource


def shard_names(spec: ReasoningRLJobSpec) -> list[str]:
    """The rollout shards, `<role>-<index>`: the names of their workers, actors and (on a cluster) pods."""
    return [f"{shard_role(spec)}-{i}" for i in range(spec.rollout.replicas)]


def pinned(node: str | None) -> dict:
    """Ray options placing an actor on the Ray node of pod `node` ("rollout-3"); nothing embedded."""
    return {"resources": {NODE_RESOURCE.format(node): 0.01}} if node else {}


@dataclass(frozen=True)
class PodNodes:
    """Where the actors go on a cluster: one Ray node per pod, named `<role>-<index>`."""

    head: str  # the trainer runs here ("trainer-0", or "worker-0" colocated)
    drafter_hosts: tuple[str, ...] = ()  # pods that only train the drafter while lent (dedicated drafters, trainers)


def _model_dir(spec: ReasoningRLJobSpec, model_dir: str | None) -> str:
    """On a cluster each pod resolves the model itself (a head pod's path means nothing elsewhere)."""
    if model_dir:
        return model_dir
    from tlt.coordinator.loop import resolve_model

    return str(resolve_model(spec, progress=False, download=True))


class TrainerWorker:
    """The policy trainer (torch or DeepSpeed) inside its own process."""

    def __init__(self, spec: ReasoningRLJobSpec, model_dir: str | None, cores: list[int] | None, checkpoint: str | None):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        bind_threads(cores)
        from tlt.trainer.policy import PolicyTrainer

        self.trainer = PolicyTrainer.from_spec(spec, _model_dir(spec, model_dir))
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
    """A rollout shard with the methods the coordinator (and, on a cluster, its pod) calls remotely."""

    def __init__(self, name: str, model_dir: str | None, spec: ReasoningRLJobSpec, **options):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        super().__init__(name, _model_dir(spec, model_dir), spec, **options)

    def set_role(self, role: str) -> bool:
        """The pod's assigned role (its role watcher calls this): drafter lends, any other reclaims."""
        if role == "drafter":
            return self.lend()
        self.reclaim()
        return True

    def begin_step(self, step: int) -> None:
        """A drafter host keeps the same per-step buffer window as the shards."""
        self.buffer.start_step(step)

    def feed(self, results: list[Result]) -> None:
        """Rollouts to train on (drafter hosts get every shard's); a lent host picks them up."""
        for r in results:
            self.buffer.add(Sample.of(r.prompt, r.tokens, self.policy_version))
        if self.role == "drafter" and (self._train_thread is None or not self._train_thread.is_alive()):
            self.lend()

    def metrics_text(self) -> str:
        """This process's engine metrics, for the pod's /metrics endpoint."""
        from prometheus_client import generate_latest

        from tlt.engine.metrics import REGISTRY

        return generate_latest(REGISTRY).decode()

    def generate(self, requests: list[Request]) -> list[Result]:
        self.reclaim()
        return self.engine.generate(requests)

    # The coordinator writes checkpoints and exports: on a cluster this shard's pod does not
    # have the head pod's run folder, so files travel as values.
    def drafter_state(self) -> dict | None:
        if self.eagle is None:
            return None
        return {k: v.detach().cpu() for k, v in self.eagle.state_dict().items()}

    def drafter_files(self) -> dict[str, bytes] | None:
        """The exported drafter folder (config and weights), file name -> bytes."""
        if self.eagle is None:
            return None
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(self.eagle.save(tmp))
            return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

    def measure_threshold(self) -> int:
        from tlt.engine.costs import measure_costs
        from tlt.speculative.adaptive import Strategy

        table = measure_costs(self.model, self.eagle, batch_sizes=(1, 2, 4, 8, 16, 32), widths=(1, 4, 8),
                              context_len=128, repeats=3, progress=False, engine_terms=False)
        return table.auto_threshold(Strategy.parse(self.spec.speculative.strategies[0]))


def _cores(index: int, count: int) -> list[int]:
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    return [available[index % len(available)]] if count > 0 else available


class WorkerPool:
    def __init__(self, spec: ReasoningRLJobSpec, model_dir: str, checkpoint: Path | None = None, nodes: PodNodes | None = None):
        from tlt.coordinator.prompts import load_tokenizer

        self.spec = spec
        self.model_dir = model_dir
        self.checkpoint = checkpoint
        self.nodes = nodes
        self.actor_model_dir = None if nodes else model_dir  # pods resolve their own copy
        self.tokenizer = load_tokenizer(spec, model_dir)
        if nodes is None and not ray.is_initialized():
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            # address="local": an embedded run starts its own Ray, never joins one already on this
            # machine (a cluster job's pods running locally, another user's Ray).
            ray.init(address="local", num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
                     object_store_memory=256 * 1024 * 1024, configure_logging=False)
        self.shard_names = shard_names(spec)
        self.trainer_name = "trainer-0"
        trainer_cls = ray.remote(num_cpus=0)(TrainerWorker).options(**pinned(nodes.head if nodes else None))
        self.trainer = trainer_cls.remote(spec, self.actor_model_dir, None if nodes else _cores(0, 0),
                                          str(checkpoint) if checkpoint else None)
        self.shards: dict = {}
        self.hosts: dict = {}  # drafter hosts (cluster only)
        self._lent: set[str] = set()

    def _cores(self, index: int) -> list[int] | None:
        return None if self.nodes else _cores(index, 1)  # a pod's worker has the pod's cores

    def _placed(self, name: str) -> dict:
        return {"name": name, **pinned(name)} if self.nodes else {}

    def _everyone(self) -> list:
        return [*self.shards.values(), *self.hosts.values()]

    # ---- start-up ----
    def calibrate_threshold(self) -> int:
        """`batchThreshold: auto`: measure where speculation pays on this machine."""
        node = self.shard_names[0] if self.nodes else None
        probe = ray.remote(num_cpus=0)(ShardWorker).options(**pinned(node)).remote(
            "probe", self.actor_model_dir, self.spec, cores=self._cores(0), engine="torch")  # measures torch costs
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
            self.shards[name] = shard_cls.options(**self._placed(name)).remote(
                name, self.actor_model_dir, self.spec, cores=self._cores(i), batch_threshold=threshold,
                drafter_state=drafter_state)
        for name in self.nodes.drafter_hosts if self.nodes else ():
            self.hosts[name] = shard_cls.options(**self._placed(name)).remote(  # they never decode: no vLLM
                name, None, self.spec, batch_threshold=threshold, drafter_state=drafter_state, max_slots=1,
                engine="torch")
        # Every worker starts from the trainer's weights: a checkpoint's, or on a cluster the one
        # built-in model each pod bootstrapped for itself.
        if self.checkpoint or (self.nodes and self.spec.model.builtin):
            weights = ray.get(self.trainer.weights.remote())
            ray.get([s.set_policy.remote(0, weights) for s in self._everyone()])

    # ---- rollout ----
    def start_rollout(self, step: int, assignment: dict[str, list[Request]]) -> None:
        self._lent.clear()
        ray.get([h.begin_step.remote(step) for h in self.hosts.values()])
        ray.get([self.shards[name].start_rollout.remote(step, reqs) for name, reqs in assignment.items()])

    def poll(self) -> tuple[dict, list[Result]]:
        names = list(self.shards)
        progress = ray.get([self.shards[n].progress.remote() for n in names])
        finished = [r for batch in ray.get([self.shards[n].take_results.remote() for n in names]) for r in batch]
        if self.nodes:
            # On a cluster the pods switch roles themselves (operator -> annotation -> role watcher).
            self._lent = {n for n, p in zip(names, progress) if p.role == "drafter"}
            if finished:
                for host in self.hosts.values():
                    host.feed.remote(finished)
        return dict(zip(names, progress)), finished

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
        ray.get([s.set_policy.remote(policy_version, weights) for s in self._everyone()])
        self._lent.clear()
        return metrics

    def sync_drafters(self, version: int) -> int:
        """Average the replicas trained in this version (weighted by steps) into version+1."""
        reports = ray.get([s.drafter_report.remote() for s in self._everyone()])
        trained = [(steps, state) for _, steps, state in reports if state is not None and steps > 0]
        if not trained:
            return version
        merged = weighted_average([s for _, s in trained], [float(n) for n, _ in trained])
        ray.get([s.set_drafter.remote(version + 1, merged) for s in self._everyone()])
        self._lent.clear()
        return version + 1

    def save(self, folder: Path) -> None:
        ray.get(self.trainer.save.remote(str(folder)))
        state = ray.get(self.shards[self.shard_names[0]].drafter_state.remote())
        if state is not None:
            torch.save(state, folder / DRAFTER_STATE)

    def export(self, policy_dir: Path, drafter_dir: Path | None) -> None:
        ray.get(self.trainer.export.remote(str(policy_dir)))
        files = ray.get(self.shards[self.shard_names[0]].drafter_files.remote()) if drafter_dir is not None else None
        if files:
            drafter_dir.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                (drafter_dir / name).write_bytes(data)

    def shutdown(self) -> None:
        for actor in [*self._everyone(), self.trainer]:
            try:
                ray.kill(actor)
            except Exception:
                pass
        self.shards.clear()
        self.hosts.clear()
