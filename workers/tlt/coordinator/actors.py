"""The job's workers as Ray actors, and the coordinator's handle on them.

In embedded mode each rollout shard is a Ray actor bound to its own CPU core(s);
the trainer is one more actor. On a cluster (`PodNodes`) every pod runs one Ray
node offering the resource `tlt.pod.<role>-<index>`, and each actor is pinned to
its pod's node and named after it, so the pod's role watcher can find it.
The coordinator talks to Ray only through `WorkerPool`, so the loop reads as plain
calls (a job pod's own process joins Ray and finds its actor in `tlt.worker`).

Faults: a rollout shard or drafter host whose actor dies (its pod crashed, was
evicted or its node lost) leaves the pool; its unfinished requests go to the other
shards at once, as the coordinator last holds them (the request, or the
continuation consolidation moved there). Sampling is keyed by (seed, response
position) and verification is coupled, so they finish as they would have. When the
worker's Ray node is back (on a cluster: the replacement pod joined), its actor is
created again with the current policy and drafter. Only the trainer's (the head
pod's) loss ends the run.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from tlt.api.model import ReasoningRLJobSpec
from tlt.coordinator.shard import RolloutShard, auto_threshold, bind_threads
from tlt.drafter import Sample
from tlt.drafter.averaging import average_replicas
from tlt.elastic import shard_role
from tlt.engine.types import Request, Result

TRAINER_STATE = "trainer"
DRAFTER_STATE = "drafter.pt"
NODE_RESOURCE = "tlt.pod.{}"  # each pod's Ray node offers one unit of its own resource
REVIVE_RETRY_SECONDS = 5.0  # between attempts to re-create a lost worker (its node may still be going away)

log = logging.getLogger("tlt.coordinator")


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
    from tlt.models.resolve import resolve_model

    return str(resolve_model(spec.model, progress=False, download=True))


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

    def measure_threshold(self, prompts: list[list[int]], stop_ids: list[int]) -> tuple[dict, float | None]:
        """What `batchThreshold: auto` is resolved from: this machine's cost table (as JSON), and the
        acceptance length this worker's drafter reaches on `prompts` (None without a drafter)."""
        from tlt.engine.costs import measure_costs
        from tlt.speculative.adaptive import Strategy

        table = measure_costs(self.model, self.eagle, batch_sizes=(1, 2, 4, 8, 16, 32), widths=(1, 4, 8),
                              context_len=128, repeats=3, progress=False, engine_terms=False)
        return table.to_json(), self.measure_acceptance(prompts, stop_ids, Strategy.parse(self.spec.speculative.strategies[0]))


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
        self.shards: dict = {}  # the live rollout shards (a lost one leaves until re-created)
        self.hosts: dict = {}  # drafter hosts (cluster only)
        self._lent: set[str] = set()
        # Faults (see the module's docstring).
        self._threshold = 0
        self._costs = None  # this machine's cost table, when `batchThreshold: auto` was measured
        self._drafter_state: dict | None = None  # what workers start from (a checkpoint's drafter)
        self._drafter: tuple[int, dict] | None = None  # the last averaged drafter pushed
        self._policy_version = 0
        self._step = 0
        self._pending: dict[str, dict] = {}  # shard -> {request id: Request} unfinished this step
        self._started: set[str] = set()  # shards whose rollout of this step started
        self._orphans: list[Request] = []  # unfinished requests of lost shards, to resubmit
        self._lost: dict[str, float] = {}  # lost worker -> when to try re-creating it
        self._reviving: dict = {}  # worker -> (actor, its first call's ref)
        self.faults: list[dict] = []  # what happened, for the run's log (take_faults)

    def _cores(self, index: int) -> list[int] | None:
        return None if self.nodes else _cores(index, 1)  # a pod's worker has the pod's cores

    def _placed(self, name: str) -> dict:
        return {"name": name, **pinned(name)} if self.nodes else {}

    def _everyone(self) -> list:
        return [*self.shards.values(), *self.hosts.values()]

    def _workers(self) -> dict:
        """The live shards and drafter hosts by name."""
        return {**self.shards, **self.hosts}

    # ---- start-up ----
    def calibrate_threshold(self, prompts: list[list[int]], stop_ids: list[int]) -> int:
        """`batchThreshold: auto`: where speculation pays on this machine, at the acceptance length the
        drafter the shards start from reaches on `prompts` (the job's own)."""
        from tlt.engine.costs import CostTable

        node = self.shard_names[0] if self.nodes else None
        probe = ray.remote(num_cpus=0)(ShardWorker).options(**pinned(node)).remote(
            "probe", self.actor_model_dir, self.spec, cores=self._cores(0), engine="torch",  # measures torch costs
            drafter_state=self._start_drafter())
        try:
            table, acceptance = ray.get(probe.measure_threshold.remote(prompts, stop_ids))
        finally:
            ray.kill(probe)
        self._costs = CostTable.from_json(table)
        return auto_threshold(self.spec, self._costs, acceptance)

    def tune_threshold(self) -> int:
        """`batchThreshold: auto` again, at the acceptance length the shards measured with the drafter
        version they run; they speculate up to the new threshold from their next rollout on. Unchanged
        when nothing was measured, and for a fixed threshold or vLLM's fixed schedule."""
        if self._costs is None or self.spec.speculative.mode != "adaptive" or self.spec.rollout.engine != "torch":
            return self._threshold
        counts = self._each({n: w.measured_acceptance.remote() for n, w in self.shards.items()}).values()
        tokens, rounds = sum(t for t, _ in counts), sum(r for _, r in counts)
        if rounds:
            threshold = auto_threshold(self.spec, self._costs, tokens / rounds)
            if threshold != self._threshold:
                self._threshold = threshold
                self._each({n: w.set_threshold.remote(threshold) for n, w in self._workers().items()})
        return self._threshold

    def _start_drafter(self) -> dict | None:
        """The drafter weights workers start from: a checkpoint's, else None (initCheckpoint or fresh)."""
        if self._drafter_state is None and self.checkpoint and (self.checkpoint / DRAFTER_STATE).is_file():
            self._drafter_state = torch.load(self.checkpoint / DRAFTER_STATE, map_location="cpu")
        return self._drafter_state

    def start_shards(self, threshold: int) -> None:
        self._threshold = threshold
        self._start_drafter()
        for name in self.shard_names:
            self.shards[name] = self._new_worker(name)
        for name in self.nodes.drafter_hosts if self.nodes else ():
            self.hosts[name] = self._new_worker(name)
        # Every worker starts from the trainer's weights: a checkpoint's, or on a cluster the one
        # built-in model each pod bootstrapped for itself.
        if self.checkpoint or (self.nodes and self.spec.model.builtin):
            weights = ray.get(self.trainer.weights.remote())
            ray.get([s.set_policy.remote(0, weights) for s in self._everyone()])

    def _new_worker(self, name: str):
        """A rollout shard's actor, or a drafter host's, created (again) for worker `name`."""
        shard_cls = ray.remote(num_cpus=0, max_concurrency=4)(ShardWorker)
        if name in self.shard_names:
            return shard_cls.options(**self._placed(name)).remote(
                name, self.actor_model_dir, self.spec, cores=self._cores(self.shard_names.index(name)),
                batch_threshold=self._threshold, drafter_state=self._drafter_state)
        return shard_cls.options(**self._placed(name)).remote(  # drafter hosts never decode: no vLLM
            name, None, self.spec, batch_threshold=self._threshold, drafter_state=self._drafter_state, max_slots=1,
            engine="torch")

    # ---- rollout ----
    def start_rollout(self, step: int, assignment: dict[str, list[Request]]) -> None:
        self._lent.clear()
        self._step, self._pending, self._started, self._orphans = step, {}, set(), []
        self._each({n: h.begin_step.remote(step) for n, h in self.hosts.items()})
        calls = {}
        for name, reqs in assignment.items():
            if name in self.shards:
                self._pending[name] = {r.id: r for r in reqs}
                calls[name] = self.shards[name].start_rollout.remote(step, reqs)
            else:  # lost and not back yet: its share goes to the others
                self._orphans += reqs
        self._started |= set(self._each(calls))
        self._resubmit()

    def poll(self) -> tuple[dict, list[Result]]:
        self._revive()
        progress = self._each({n: s.progress.remote() for n, s in self.shards.items()})
        taken = self._each({n: self.shards[n].take_results.remote() for n in progress if n in self.shards})
        finished = []
        for name, batch in taken.items():
            for result in batch:
                self._pending.get(name, {}).pop(result.id, None)
                finished.append(result)
        self._resubmit()
        progress = {n: p for n, p in progress.items() if n in self.shards}
        if self.nodes:
            # On a cluster the pods switch roles themselves (operator -> annotation -> role watcher).
            self._lent = {n for n, p in progress.items() if p.role == "drafter"}
            if finished:
                for host in self.hosts.values():
                    host.feed.remote(finished)
        return progress, finished

    # ---- faults ----
    def _each(self, calls: dict) -> dict:
        """The answers of remote calls by worker name; a worker whose actor died is lost (and left
        out), one that is briefly unavailable is left out of this answer only."""
        out = {}
        for name, ref in calls.items():
            try:
                out[name] = ray.get(ref)
            except ray.exceptions.ActorUnavailableError:
                continue
            except ray.exceptions.RayActorError as err:
                self._lose(name, err)
        return out

    def _lose(self, name: str, err: Exception) -> None:
        actor = self.shards.pop(name, None) or self.hosts.pop(name, None)
        if actor is None:
            return
        orphans = list(self._pending.pop(name, {}).values())
        self._orphans += orphans
        self._started.discard(name)
        self._lent.discard(name)
        self._lost[name] = time.monotonic()  # tried at once: a dead actor's node is dead, a node offering its resource is new
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        self.faults.append({"worker": name, "event": "lost", "step": self._step, "resubmitted": len(orphans), "error": reason})
        log.warning("%s is lost (%s): %d unfinished requests go to the other shards; it is re-created when its pod is back",
                    name, reason, len(orphans))

    def _resubmit(self) -> None:
        """The lost shards' unfinished requests onto the live shards, least loaded first (a prompt
        group stays together): added to a running rollout, or started on a shard that has none."""
        if not self._orphans or not self.shards:
            return
        groups: dict = {}
        for request in self._orphans:
            groups.setdefault(request.group, []).append(request)
        self._orphans = []
        load = {n: len(self._pending.get(n, {})) for n in self.shards}
        batches: dict[str, list[Request]] = {}
        for requests in groups.values():
            target = min(load, key=load.get)
            load[target] += len(requests)
            batches.setdefault(target, []).extend(requests)
        calls = {}
        for target, requests in batches.items():
            self._pending.setdefault(target, {}).update({r.id: r for r in requests})
            shard = self.shards[target]
            calls[target] = (shard.add_requests.remote(requests) if target in self._started
                             else shard.start_rollout.remote(self._step, requests))
        self._started |= set(self._each(calls))

    def _revive(self) -> None:
        """Re-create lost workers whose pod's Ray node is in the cluster (embedded: at once), with
        the current policy and drafter; they rejoin once their actor answered."""
        now = time.monotonic()
        for name, (actor, ready, version) in list(self._reviving.items()):
            if not ray.wait([ready], timeout=0)[0]:
                continue
            del self._reviving[name]
            try:
                ray.get(ready)
                if version != self._policy_version:  # a policy update came meanwhile
                    ray.get(actor.set_policy.remote(self._policy_version, self.trainer.weights.remote()))
                if self._drafter is not None:
                    ray.get(actor.set_drafter.remote(*self._drafter))
            except ray.exceptions.RayActorError as err:
                self._lost[name] = now + REVIVE_RETRY_SECONDS
                log.info("re-creating %s failed (%s); trying again", name, str(err).strip().splitlines()[0][:200])
                continue
            (self.shards if name in self.shard_names else self.hosts)[name] = actor
            self.faults.append({"worker": name, "event": "recreated", "step": self._step})
            log.info("%s is back: its worker was re-created with policy version %d", name, self._policy_version)
        due = [n for n, at in self._lost.items() if at <= now and n not in self._reviving]
        if not due:
            return
        present = ray.cluster_resources() if self.nodes else None
        for name in due:
            if present is not None and NODE_RESOURCE.format(name) not in present:
                continue  # its pod has not joined (yet)
            del self._lost[name]
            try:
                actor = self._new_worker(name)
            except ValueError as err:  # the dead actor's name is not released yet
                self._lost[name] = now + REVIVE_RETRY_SECONDS
                log.info("re-creating %s: %s", name, err)
                continue
            version = self._policy_version
            self._reviving[name] = (actor, actor.set_policy.remote(version, self.trainer.weights.remote()), version)

    def take_faults(self) -> list[dict]:
        out, self.faults = self.faults, []
        return out

    def lent(self, name: str) -> bool:
        return name in self._lent

    def lend(self, name: str) -> bool:
        if name in self.shards and self._each({name: self.shards[name].lend.remote()}).get(name):
            self._lent.add(name)
            return True
        return False

    def reclaim(self, name: str) -> None:
        if name in self.shards:
            self._each({name: self.shards[name].reclaim.remote()})
        self._lent.discard(name)

    def consolidate(self, target: str, sources, counts) -> int:
        """Move unfinished sequences (as continuations) from `sources` onto `target`; the pool
        follows them, so a shard lost later gives back exactly what it held."""
        moved = 0
        for source, count in zip(sources, counts):
            if target not in self.shards or source not in self.shards:
                continue  # one of them is lost: its requests are being resubmitted anyway
            requests = self._each({source: self.shards[source].move_out.remote(count)}).get(source) or []
            if not requests:
                continue
            for r in requests:
                self._pending.get(source, {}).pop(r.id, None)
            self._pending.setdefault(target, {}).update({r.id: r for r in requests})
            if target in self._each({target: self.shards[target].add_requests.remote(requests)}):
                moved += len(requests)
        return moved

    def decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def evaluate(self, requests: list[Request]) -> list[Result]:
        """Decode held-out requests over every shard (outputs do not depend on which); results in order."""
        names = list(self.shards)  # the live ones
        for name in names:
            self.reclaim(name)
        parts = [requests[i::len(names)] for i in range(len(names))]
        done = ray.get([self.shards[n].generate.remote(p) for n, p in zip(names, parts) if p])
        out: list = [None] * len(requests)
        for i, results in enumerate(done):
            out[i::len(names)] = results
        return out

    # ---- training and sync ----
    def train(self, prompts, responses, advantages, old_logprobs, policy_version: int) -> dict:
        metrics = ray.get(self.trainer.train.remote(prompts, responses, advantages, old_logprobs))
        weights = ray.get(self.trainer.weights.remote())
        self._policy_version = policy_version
        self._each({n: w.set_policy.remote(policy_version, weights) for n, w in self._workers().items()})
        self._lent.clear()
        return metrics

    def sync_drafters(self, version: int) -> int:
        """Average the replicas trained in this version (weighted by steps) into version+1."""
        reports = self._each({n: w.drafter_report.remote() for n, w in self._workers().items()}).values()
        merged = average_replicas((steps, state) for _, steps, state in reports)
        if merged is None:
            return version
        self._drafter = (version + 1, merged)
        self._each({n: w.set_drafter.remote(version + 1, merged) for n, w in self._workers().items()})
        self._lent.clear()
        return version + 1

    def save(self, folder: Path) -> None:
        ray.get(self.trainer.save.remote(str(folder)))
        state = self._first_answer("drafter_state")
        if state is not None:
            torch.save(state, folder / DRAFTER_STATE)

    def export(self, policy_dir: Path, drafter_dir: Path | None) -> None:
        ray.get(self.trainer.export.remote(str(policy_dir)))
        files = self._first_answer("drafter_files") if drafter_dir is not None else None
        if files:
            drafter_dir.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                (drafter_dir / name).write_bytes(data)

    def _first_answer(self, method: str):
        """`method` of the first live shard that answers (every shard holds the same drafter)."""
        for name in list(self.shards):
            answer = self._each({name: getattr(self.shards[name], method).remote()})
            if name in answer:
                return answer[name]
        return None

    def shutdown(self) -> None:
        for actor in [*self._everyone(), *(a for a, _, _ in self._reviving.values()), self.trainer]:
            try:
                ray.kill(actor)
            except Exception:
                pass
        self.shards.clear()
        self.hosts.clear()
