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
from pathlib import Path

import ray
import torch

from tlt.api.model import ReasoningRLJobSpec
from tlt.api.topology import PodNodes, node_name, shard_names
from tlt.coordinator.shard import RolloutShard, auto_threshold, bind_threads, cost_batch_sizes, newest_acceptance
from tlt.drafter import Sample
from tlt.drafter.averaging import average_replicas
from tlt.engine.types import Request, Result
from tlt.net import free_port
from tlt.speculative.adaptive import Strategy

TRAINER_STATE = "trainer"
DRAFTER_STATE = "drafter.pt"
NODE_RESOURCE = "tlt.pod.{}"  # each pod's Ray node offers one unit of its own resource
REVIVE_RETRY_SECONDS = 5.0  # between attempts to re-create a lost worker (its node may still be going away)

log = logging.getLogger("tlt.coordinator")


def pinned(node: str | None) -> dict:
    """Ray options placing an actor on the Ray node of pod `node` ("rollout-3"); nothing embedded."""
    return {"resources": {NODE_RESOURCE.format(node): 0.01}} if node else {}


def _model_dir(spec: ReasoningRLJobSpec, model_dir: str | None) -> str:
    """On a cluster each pod resolves the model itself (a head pod's path means nothing elsewhere)."""
    if model_dir:
        return model_dir
    from tlt.models.resolve import resolve_model

    return str(resolve_model(spec.model, progress=False, download=True))


class TrainerWorker:
    """One rank of the policy trainer (torch or DeepSpeed) in its own process.

    All ranks are called together (each call is collective: train, save, export, send_weights,
    weights). Rank 0 also sends every new policy to the rollout workers over the weight
    broadcast group (`tlt.trainer.sync`), which meets in its rendezvous store.
    """

    def __init__(self, spec: ReasoningRLJobSpec, model_dir: str | None, cores: list[int] | None, checkpoint: str | None,
                 rank: int = 0, world_size: int = 1, rendezvous: tuple[str, int] | None = None, local_rank: int = 0):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        bind_threads(cores)
        address, port = rendezvous or ("127.0.0.1", free_port())
        # With a GPU of its own (Ray's num_gpus=1 makes it the only one visible) a rank's device is cuda:0.
        local = 0 if ray.get_gpu_ids() else local_rank
        os.environ.update(MASTER_ADDR=address, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                          LOCAL_RANK=str(local))
        from tlt.trainer.policy import PolicyTrainer

        self.rank, self.world_size, self.rendezvous = rank, world_size, (address, port)
        self.trainer = PolicyTrainer.from_spec(spec, _model_dir(spec, model_dir), join=True)
        if checkpoint:
            self.trainer.load_checkpoint(Path(checkpoint) / TRAINER_STATE)
        self._group = None  # (WeightGroup, wire dtype) once the weight group is formed
        self.counts = {"updates": 0, "tokens": 0.0, "sent_bytes": 0, "broadcasts": 0}

    def describe(self) -> dict:
        """Who this rank is (the pods log it and export it as metrics)."""
        t = self.trainer
        stage = getattr(t.backend, "zero_stage", None)
        return {"rank": self.rank, "world_size": self.world_size, "backend": t.backend.name, "zero_stage": stage,
                "device": str(t.device), "process_group": "nccl" if t.device.type == "cuda" else "gloo",
                "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), **self.counts}

    def train(self, batch) -> dict:
        metrics = self.trainer.train(batch)
        self.counts["updates"] += int(metrics["updates"])
        self.counts["tokens"] += metrics["tokens"]
        return {**metrics, "world_size": float(self.world_size)}

    def weights(self) -> dict | None:
        """The policy on the CPU under HF names (rank 0; every rank must be called: ZeRO-3 gathers)."""
        state = self.trainer.state_dict()
        return {k: v.detach().to("cpu") for k, v in state.items()} if self.rank == 0 else None

    # ---- the weight broadcast group (rank 0 sends; the others only join ZeRO-3's gathers) ----
    def weight_manifest(self):
        return self.trainer.weight_manifest()

    def device_type(self) -> str:
        return self.trainer.device.type

    def open_weight_group(self, epoch: int, size: int, backend: str, dtype: str) -> None:
        from tlt.trainer.sync import WeightGroup

        self.close_weight_group()
        address, port = self.rendezvous
        self._group = (WeightGroup(address, port, epoch, 0, size, backend), dtype)

    def close_weight_group(self) -> None:
        if self._group is not None:
            self._group[0].close()
            self._group = None

    def send_weights(self) -> int:
        """Stream the policy, layer by layer, to the weight group; bytes sent (0 on ranks > 0).

        Under ZeRO-3 every rank walks all layers (each is gathered collectively), also when
        the broadcast failed half-way: the ranks stay in step for their next collective."""
        from tlt.models.loading import resolve_dtype

        if self.rank != 0:
            if getattr(self.trainer.backend, "zero_stage", 0) == 3:
                for _ in self.trainer.policy_layers():  # rank 0 sends each gathered layer
                    pass
            return 0
        if self._group is None:
            raise RuntimeError("no weight group: open_weight_group first")
        group, dtype = self._group
        sent, failure = 0, None
        for layer in self.trainer.policy_layers():
            if failure is None:
                try:
                    sent += group.send_layer(layer, resolve_dtype(dtype))
                except Exception as err:  # a member is gone: the coordinator forms the group again
                    failure = err
        if failure is not None:
            self.close_weight_group()
            raise failure
        self.counts["sent_bytes"] += sent
        self.counts["broadcasts"] += 1
        return sent

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
        # with the engine's own time per plain step and per round: on a CPU it decides where speculation pays
        table = measure_costs(self.model, self.eagle, batch_sizes=cost_batch_sizes(self.spec), widths=(1, 4, 8),
                              context_len=128, repeats=3, progress=False,
                              round_strategy=self.spec.speculative.strategies[0])
        return table.to_json(), self.measure_acceptance(prompts, stop_ids, Strategy.parse(self.spec.speculative.strategies[0]))


def _available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def _cores(index: int, count: int) -> list[int]:
    available = _available_cores()
    return [available[index % len(available)]] if count > 0 else available


def _rank_cores(rank: int, world_size: int) -> list[int]:
    """Embedded: the machine's cores dealt out to the trainer's ranks (each at least one)."""
    available = _available_cores()
    return available[rank::world_size] or [available[rank % len(available)]]


def _reason(err: Exception) -> str:
    """The last line of an error (a Ray task error's is the exception raised in the actor)."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(err).__name__


def rendezvous_address(nodes: "PodNodes | None") -> tuple[str, int]:
    """Where the trainer's ranks meet. Embedded: loopback and a free port. On a cluster: MASTER_ADDR and
    MASTER_PORT of the head pod's environment (the builders set trainer-0's stable DNS name on the job's
    headless Service, and the port they expose)."""
    if nodes is None:
        return "127.0.0.1", free_port()
    address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not address or not port:
        from tlt.api.ranks import RENDEZVOUS_PORT

        # An operator that predates rendezvous variables: this pod's own address as Ray sees it.
        return ray.util.get_node_ip_address(), RENDEZVOUS_PORT
    return address, int(port)


def start_local_ray() -> None:
    """The embedded runs' own Ray on this machine, started once per process.

    Ray's processes die with the thread that started them (Linux's parent-death signal is
    per thread): whoever runs several embedded runs in threads (`tlt bench e2e`) calls this
    first, from the thread that outlives them.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # address="local": an embedded run starts its own Ray, never joins one already on this
    # machine (a cluster job's pods running locally, another user's Ray).
    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024 * 1024, configure_logging=False)


class WorkerPool:
    def __init__(self, spec: ReasoningRLJobSpec, model_dir: str, checkpoint: Path | None = None, nodes: PodNodes | None = None):
        from tlt.coordinator.prompts import load_tokenizer

        self.spec = spec
        self.model_dir = model_dir
        self.checkpoint = checkpoint
        self.nodes = nodes
        self.actor_model_dir = None if nodes else model_dir  # pods resolve their own copy
        self.tokenizer = load_tokenizer(spec, model_dir)
        if nodes is None:
            start_local_ray()
        self.shard_names = shard_names(spec)
        self.trainer_name = node_name("trainer", 0)  # the trainer's row in the run's role log, colocated too
        self.ranks = self._start_ranks()
        self.trainer = self.ranks[0]  # rank 0: metrics, the weight group's sender
        self._weight_members: tuple[str, ...] | None = None  # who is in the weight group now
        self._weight_epoch = 0
        self._manifest = None
        self.shards: dict = {}  # the live rollout shards (a lost one leaves until re-created)
        self.hosts: dict = {}  # drafter hosts (cluster only)
        self._lent: set[str] = set()
        # Faults (see the module's docstring).
        self._threshold = 0
        self._costs = None  # this machine's cost table, when `batchThreshold: auto` was measured
        self._probe_prompts: tuple[list[list[int]], list[int]] | None = None  # and what it measured acceptance on
        self._drafter_state: dict | None = None  # what workers start from (a checkpoint's drafter)
        self._drafter: tuple[int, dict] | None = None  # the last averaged drafter pushed
        self._policy_version = 0
        self._step = 0
        self._pending: dict[str, dict] = {}  # shard -> {request id: Request} unfinished this step
        self._waits: dict = {}  # shard -> its outstanding wait_for_drain call
        self._started: set[str] = set()  # shards whose rollout of this step started
        self._orphans: list[Request] = []  # unfinished requests of lost shards, to resubmit
        self._lost: dict[str, float] = {}  # lost worker -> when to try re-creating it
        self._reviving: dict = {}  # worker -> (actor, its first call's ref)
        self.faults: list[dict] = []  # what happened, for the run's log (take_faults)

    def _cores(self, index: int) -> list[int] | None:
        return None if self.nodes else _cores(index, 1)  # a pod's worker has the pod's cores

    def _placed(self, name: str) -> dict:
        return {"name": name, **pinned(name)} if self.nodes else {}

    def _start_ranks(self) -> list:
        """The trainer's ranks (`tlt.api.ranks`): on a cluster each pinned to its pod, with a GPU of its own
        (Ray's num_gpus) when the spec gives the trainer GPUs; embedded, each on its share of the cores."""
        from tlt.api.ranks import RANK_ACTOR, trainer_ranks
        from tlt.trainer.policy import STATE_FILE, resume_problem

        plan = trainer_ranks(self.spec)
        world = plan.world_size
        state = self.checkpoint / TRAINER_STATE / STATE_FILE if self.checkpoint else None
        if state is not None and state.is_file():
            backend = "deepspeed" if self.spec.trainer.deepspeed.enabled else "torch"
            problem = resume_problem(torch.load(state, weights_only=False), backend, world)
            if problem:
                raise ValueError(f"cannot resume from {self.checkpoint}: {problem}")
        rendezvous = self.rendezvous = rendezvous_address(self.nodes)
        gpus = plan.gpus_per_rank if self.nodes or torch.cuda.is_available() else 0
        ranks = []
        for rank in range(world):
            options = {"num_gpus": gpus, "max_concurrency": 2}  # its pod asks `describe` while it trains
            if self.nodes:
                options.update(name=RANK_ACTOR.format(rank), **pinned(plan.pod_of(rank)))
            cls = ray.remote(num_cpus=0)(TrainerWorker).options(**options)
            ranks.append(cls.remote(self.spec, self.actor_model_dir, None if self.nodes else _rank_cores(rank, world),
                                    str(self.checkpoint) if self.checkpoint else None, rank=rank, world_size=world,
                                    rendezvous=rendezvous, local_rank=plan.local_rank(rank)))
        return ranks

    def _all_ranks(self, method: str, *args) -> list:
        """Call `method` on every rank at once (the calls are collective) and wait; rank 0's answer first."""
        return ray.get([getattr(r, method).remote(*args) for r in self.ranks])

    def _weights_ref(self):
        """An object ref of the policy's weights (rank 0's; every rank gathers under ZeRO-3)."""
        refs = [r.weights.remote() for r in self.ranks]
        return refs[0]

    def _everyone(self) -> list:
        return [*self.shards.values(), *self.hosts.values()]

    def _workers(self) -> dict:
        """The live shards and drafter hosts by name."""
        return {**self.shards, **self.hosts}

    # ---- start-up ----
    def calibrate_threshold(self, prompts: list[list[int]], stop_ids: list[int]) -> int:
        """`batchThreshold: auto`: where speculation pays on this machine, at the acceptance length the
        drafter the shards start from reaches on `prompts` (the job's own)."""
        from tlt.speculative.costs import CostTable

        node = self.shard_names[0] if self.nodes else None
        probe = ray.remote(num_cpus=0)(ShardWorker).options(**pinned(node)).remote(
            "probe", self.actor_model_dir, self.spec, cores=self._cores(0), engine="torch",  # measures torch costs
            drafter_state=self._start_drafter())
        try:
            table, acceptance = ray.get(probe.measure_threshold.remote(prompts, stop_ids))
        finally:
            ray.kill(probe)
        self._costs = CostTable.from_json(table)
        self._probe_prompts = (prompts, stop_ids)
        return auto_threshold(self.spec, self._costs, acceptance)

    def tune_threshold(self) -> int:
        """`batchThreshold: auto` again, at the acceptance length the shards measured with the drafter
        version they run (when no shard speculated in this rollout: the new version's, measured on the
        start-up probe's prompts); they speculate up to the new threshold from their next rollout on.
        Unchanged when nothing was measured, and for a fixed threshold or vLLM's fixed schedule."""
        if self._costs is None or self.spec.speculative.mode != "adaptive" or self.spec.rollout.engine != "torch":
            return self._threshold
        acceptance = newest_acceptance(self._each({n: w.measured_acceptance.remote() for n, w in self.shards.items()}).values())
        ran = self._each({n: w.progress.remote() for n, w in self.shards.items()})
        if self._probe_prompts and ran and not any(p.acceptance_length for p in ran.values()):
            # No shard verified a round in this rollout: the threshold the last measurement gave kept
            # speculation off, so the drafter trained since would never be measured (the quickstart's
            # fresh drafter sat at 1.06 and `auto` at 1 for steps 2-3). Measure the version the shards
            # now run on the start-up probe's prompts instead.
            name = next(iter(self.shards))
            acceptance = ray.get(self.shards[name].measure_acceptance.remote(
                *self._probe_prompts, Strategy.parse(self.spec.speculative.strategies[0]))) or acceptance
        if acceptance is not None:
            threshold = auto_threshold(self.spec, self._costs, acceptance)
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
        # built-in model each pod put in its own cache.
        if self.checkpoint or (self.nodes and self.spec.model.builtin):
            self._sync_policy(0)

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

    def wait_for_drain(self, names, timeout: float) -> None:
        """Until one of the shards `names` (those still decoding) has drained, at most `timeout`
        seconds. One call is outstanding per shard (a threaded actor has few slots)."""
        for name in names:
            if name in self.shards and name not in self._waits:
                self._waits[name] = self.shards[name].wait_for_drain.remote(timeout)
        if not self._waits:
            time.sleep(timeout)
            return
        ready, _ = ray.wait(list(self._waits.values()), num_returns=1, timeout=timeout)
        self._waits = {n: ref for n, ref in self._waits.items() if ref not in ready}

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
    def _each(self, calls: dict, skip_failed: bool = False) -> dict:
        """The answers of remote calls by worker name; a worker whose actor died is lost (and left
        out), one that is briefly unavailable is left out of this answer only. A call that raised
        in its actor raises here, or with `skip_failed` is left out too (logged)."""
        out = {}
        for name, ref in calls.items():
            try:
                out[name] = ray.get(ref)
            except ray.exceptions.ActorUnavailableError:
                continue
            except ray.exceptions.RayActorError as err:
                self._lose(name, err)  # a name that is no worker (the trainer's rank) is no loss
            except ray.exceptions.RayTaskError as err:
                if not skip_failed:
                    raise
                log.warning("%s failed: %s", name, _reason(err))
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
                    ray.get(actor.set_policy.remote(self._policy_version, self._weights_ref()))
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
            self._reviving[name] = (actor, actor.set_policy.remote(version, self._weights_ref()), version)

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
        """One update on every rank (each gets the whole batch and trains its share), then the new
        policy to every rollout worker; metrics of the update plus policy_sync_seconds and
        policy_sync_broadcast (1 when every worker got it over the weight group)."""
        from tlt.trainer.batch import Rollouts

        if self.spec.placement == "colocated":
            # The workers' GPUs train now: rollout KV caches are freed (re-allocated when weights arrive).
            self._each({n: s.free_for_training.remote() for n, s in self.shards.items()})
        batch = ray.put(Rollouts(prompts, responses, advantages, old_logprobs=old_logprobs))
        metrics = self._all_ranks("train", batch)[0]
        self._policy_version = policy_version
        started = time.perf_counter()
        broadcast = self._sync_policy(policy_version)
        metrics.update(policy_sync_seconds=time.perf_counter() - started, policy_sync_broadcast=float(broadcast))
        self._lent.clear()
        return metrics

    # ---- the policy to the workers: the weight broadcast group (tlt.trainer.sync) ----
    def _sync_policy(self, version: int) -> bool:
        """The trainer's rank 0 broadcasts the policy to every live worker; True when all got it that way.
        A worker the broadcast missed (one failed or died meanwhile) gets it as a Ray object instead, and
        the group is formed again next time."""
        members = self._workers()
        if not members:
            return True
        got: set[str] = set()
        try:
            self._form_weight_group(members)
            sends = [r.send_weights.remote() for r in self.ranks]
            received = self._each({n: w.receive_policy.remote(version) for n, w in members.items()}, skip_failed=True)
            got = {n for n, ok in received.items() if ok}
            ray.get(sends)
        except Exception as err:  # a member died or failed mid-way: the others still need the weights
            log.warning("policy broadcast failed (%s); sending the weights as objects", _reason(err))
            self._weight_members = None
        missed = {n: w for n, w in self._workers().items() if n not in got}
        if missed:
            self._weight_members = None
            ref = self._weights_ref()
            self._each({n: w.set_policy.remote(version, ref) for n, w in missed.items()})
        return not missed

    def _form_weight_group(self, members: dict) -> None:
        names = tuple(sorted(members))
        if names == self._weight_members:
            return
        self._weight_epoch += 1
        if self._manifest is None:
            self._manifest = ray.get(self.trainer.weight_manifest.remote())
        info = self._each({n: w.policy_receiver.remote() for n, w in members.items()}, skip_failed=True)
        if len(info) != len(members):
            raise RuntimeError(f"workers did not answer: {sorted(set(members) - set(info))}")
        devices = {d for d, _ in info.values()} | {ray.get(self.trainer.device_type.remote())}
        backend = "nccl" if devices == {"cuda"} else "gloo"
        from tlt.trainer.sync import wire_dtype

        dtype = wire_dtype(t for _, t in info.values())
        address, port = self.rendezvous  # the weight group meets in the trainer's rendezvous store
        size = 1 + len(names)
        calls = {"trainer-rank-0": self.trainer.open_weight_group.remote(self._weight_epoch, size, backend, dtype)}
        calls.update({n: members[n].join_weight_group.remote(address, port, self._weight_epoch, i + 1, size, backend,
                                                            dtype, self._manifest) for i, n in enumerate(names)})
        answers = self._each(calls, skip_failed=True)
        if len(answers) != len(calls):
            raise RuntimeError(f"could not form the weight group: {sorted(set(calls) - set(answers))} failed")
        self._weight_members = names
        log.info("weight group %d: trainer rank 0 and %d workers (%s, %s)", self._weight_epoch, len(names), backend, dtype)

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
        self._all_ranks("save", str(folder))  # each rank writes its own shard (a volume every trainer pod mounts)
        state = self._first_answer("drafter_state")
        if state is not None:
            torch.save(state, folder / DRAFTER_STATE)

    def export(self, policy_dir: Path, drafter_dir: Path | None) -> None:
        self._all_ranks("export", str(policy_dir))  # gathered under ZeRO-3; rank 0 (the head pod) writes
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
        for actor in [*self._everyone(), *(a for a, _, _ in self._reviving.values()), *self.ranks]:
            try:
                ray.kill(actor)
            except Exception:
                pass
        self.shards.clear()
        self.hosts.clear()
