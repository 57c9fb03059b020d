"""The elastic policy: which worker does what, decided from a snapshot.

`plan(spec, workers, progress)` is pure and level-based: it compares what each
worker does now with what it should do and returns only the differences, in a
deterministic order. The operator, the embedded control loop and the cluster
simulator all call it; `apply_actions` shows what the world looks like once the
actions are carried out (so re-planning then returns nothing).

Contract with the coordinator: a progress snapshot for a step's rollout lists the
work queued for each shard (`waiting`) in the same report that starts the step,
so a shard without work in phase `rollout` really is idle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, Union

from tlt.api.model import ReasoningRLJobSpec
from tlt.api.topology import dedicated_drafters, lending_enabled, node_name

Role = Literal["rollout", "trainer", "drafter", "worker"]
Phase = Literal["rollout", "reward", "train", "sync", "idle"]

ROLES: tuple[str, ...] = ("trainer", "rollout", "worker", "drafter")
PHASES: tuple[str, ...] = ("rollout", "reward", "train", "sync", "idle")
# Phases in which the policy trainer computes: trainers (and colocated workers) are needed.
TRAINING_PHASES = ("train", "sync")


@dataclass(frozen=True)
class ShardState:
    """Rollout progress of one shard in the current step."""

    running: int = 0
    waiting: int = 0
    finished: int = 0

    @property
    def remaining(self) -> int:
        return self.running + self.waiting

    @property
    def has_work(self) -> bool:
        return self.remaining > 0


@dataclass(frozen=True)
class Worker:
    """One worker (a pod, or a Ray actor in embedded mode) as the policy sees it.

    `role` is fixed at creation; `assigned` is the role it was told to run now
    (None: its own role). `shard` is its rollout progress (rollout and colocated
    workers). `failure` names why the worker is broken, if it is.
    """

    name: str
    role: Role
    index: int
    assigned: str | None = None
    ready: bool = True
    shard: ShardState = field(default_factory=ShardState)
    failure: str | None = None

    @property
    def current_role(self) -> str:
        return self.assigned or self.role

    @property
    def lent(self) -> bool:
        return self.role != "drafter" and self.current_role == "drafter"

    @property
    def has_work(self) -> bool:
        return self.shard.has_work

    @property
    def rolls_out(self) -> bool:
        return self.role in ("rollout", "worker")


@dataclass(frozen=True)
class Progress:
    """Where the job's current RL step is. `batch_threshold`: the speculation threshold the
    shards run (`batchThreshold: auto` as measured); None while it is not known."""

    step: int = 0
    phase: Phase = "idle"
    batch_threshold: int | None = None


@dataclass(frozen=True)
class Lend:
    """Switch an idle worker to drafter training."""

    worker: str
    to: str = "drafter"


@dataclass(frozen=True)
class Return:
    """Switch a lent worker back to its own role (drafter training is preempted)."""

    worker: str
    to: str


@dataclass(frozen=True)
class Consolidate:
    """Move sequences onto `target`: `sequences[i]` of them from `sources[i]` (re-prefill)."""

    target: str
    sources: tuple[str, ...]
    sequences: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.sequences)


@dataclass(frozen=True)
class ScaleDrafters:
    """Run this many dedicated drafter workers."""

    replicas: int


@dataclass(frozen=True)
class Replace:
    """Recreate a broken worker."""

    worker: str
    reason: str


Action = Union[Replace, Return, Consolidate, Lend, ScaleDrafters]


def consolidation_capacity(spec: ReasoningRLJobSpec, threshold: int | None = None) -> int:
    """Most sequences a consolidation target may hold: the batch limit, and small enough to speculate
    (`threshold`: the batch threshold the shards run, `auto` as measured)."""
    capacity = spec.rollout.max_batch_size
    if spec.speculative.mode != "off":
        # Piling the tail onto one shard beyond the threshold turns speculation off there and makes
        # every step of the longest responses slower (the simulator showed 0.35x). Until `auto` is
        # measured, the bandit's largest bucket bounds the batches where speculation may run.
        configured = spec.speculative.batch_threshold
        if threshold is None:
            threshold = configured if isinstance(configured, int) else max(spec.speculative.bucket_bounds)
        capacity = min(capacity, max(1, threshold))
    return capacity


def _order(worker: Worker) -> tuple:
    return (ROLES.index(worker.role) if worker.role in ROLES else len(ROLES), worker.index, worker.name)


def _desired_role(spec: ReasoningRLJobSpec, worker: Worker, progress: Progress, lending: bool) -> str | None:
    """The role the worker should run, or None to leave it as it is."""
    if worker.role == "drafter":
        return "drafter"
    if worker.has_work:
        return worker.role  # never lend a shard with work; work on a lent shard preempts drafter training
    if not lending:
        return worker.role
    if worker.role == "trainer":
        if spec.placement != "disaggregated" or progress.phase in TRAINING_PHASES:
            return "trainer"
    elif worker.role == "worker" and progress.phase in TRAINING_PHASES:
        return "worker"  # colocated workers run the policy update
    # Idle from here on. A worker that is not ready is not switched, but is not taken back either.
    if not worker.ready and not worker.lent:
        return None
    return "drafter"


def _consolidations(spec: ReasoningRLJobSpec, workers: list[Worker], progress: Progress) -> list[Consolidate]:
    """Pack the tail onto the fewest shards that hold it, when every active shard is at/below the threshold."""
    tail = spec.elasticity.consolidate_tail
    if not tail.enabled or progress.phase != "rollout":
        return []
    active = [w for w in workers if w.rolls_out and not w.lent and w.ready and w.has_work]
    if len(active) < 2 or any(w.shard.remaining > tail.threshold for w in active):
        return []
    capacity = consolidation_capacity(spec, progress.batch_threshold)
    remaining = sum(w.shard.remaining for w in active)
    needed = math.ceil(remaining / capacity)
    if needed >= len(active):
        return []
    # Keep the fullest shards (fewest sequences re-prefilled); ties go to the lower index.
    by_load = sorted(active, key=lambda w: (-w.shard.remaining, _order(w)))
    targets, sources = by_load[:needed], sorted(by_load[needed:], key=_order)
    room = {t.name: capacity - t.shard.remaining for t in targets}
    moves: dict[str, list[tuple[str, int]]] = {t.name: [] for t in targets}
    for source in sources:
        left = source.shard.remaining
        for target in targets:
            take = min(left, room[target.name])
            if take > 0:
                moves[target.name].append((source.name, take))
                room[target.name] -= take
                left -= take
            if left == 0:
                break
    return [
        Consolidate(target=t.name, sources=tuple(s for s, _ in moves[t.name]), sequences=tuple(n for _, n in moves[t.name]))
        for t in sorted(targets, key=_order)
        if moves[t.name]
    ]


def plan(spec: ReasoningRLJobSpec, workers: list[Worker], progress: Progress) -> list[Action]:
    """The actions that bring the workers to what the policy wants now; [] when they are there.

    Order: replacements, returns (rollout or training needs the GPU back first),
    consolidations, loans, then the dedicated drafter count. Loans are decided on
    the snapshot as given: a consolidation's sources still hold their sequences
    until the coordinator has moved them, so they are lent by a later plan.
    """
    ordered = sorted(workers, key=_order)
    replaces: list[Action] = [Replace(w.name, w.failure) for w in ordered if w.failure]
    healthy = [w for w in ordered if not w.failure]

    lending = lending_enabled(spec)
    returns: list[Action] = []
    lends: list[Action] = []
    for worker in healthy:
        want = _desired_role(spec, worker, progress, lending)
        if want is None or want == worker.current_role:
            continue
        if want == "drafter":
            lends.append(Lend(worker.name))
        elif worker.lent:
            returns.append(Return(worker.name, to=want))

    # While workers are being taken back the shard set is changing: consolidate once it has settled.
    consolidations = [] if returns else _consolidations(spec, healthy, progress)

    scale: list[Action] = []
    wanted = dedicated_drafters(spec)
    if sum(w.role == "drafter" for w in ordered) != wanted:
        scale.append(ScaleDrafters(wanted))
    return replaces + returns + list(consolidations) + lends + scale


def apply_actions(workers: list[Worker], actions: list[Action]) -> list[Worker]:
    """The workers as they are once `actions` are carried out (order kept; new drafters appended)."""
    by_name = {w.name: w for w in workers}
    names = [w.name for w in workers]
    for action in actions:
        if isinstance(action, Lend):
            by_name[action.worker] = replace(by_name[action.worker], assigned=action.to)
        elif isinstance(action, Return):
            by_name[action.worker] = replace(by_name[action.worker], assigned=None)
        elif isinstance(action, Consolidate):
            gained = 0
            for source, count in zip(action.sources, action.sequences):
                by_name[source] = _take(by_name[source], count)
                gained += count
            target = by_name[action.target]
            by_name[action.target] = replace(target, shard=replace(target.shard, running=target.shard.running + gained))
        elif isinstance(action, Replace):
            by_name[action.worker] = replace(by_name[action.worker], failure=None, ready=False, assigned=None)
        elif isinstance(action, ScaleDrafters):
            drafters = sorted((n for n in names if by_name[n].role == "drafter"), key=lambda n: by_name[n].index)
            for name in drafters[action.replicas :]:
                names.remove(name)
                del by_name[name]
            indices = {by_name[n].index for n in names if by_name[n].role == "drafter"}
            index = 0
            while len(indices) < action.replicas:
                if index not in indices:
                    indices.add(index)
                    name = node_name("drafter", index)
                    names.append(name)
                    by_name[name] = Worker(name=name, role="drafter", index=index, ready=False)
                index += 1
    return [by_name[n] for n in names]


def _take(worker: Worker, count: int) -> Worker:
    """The worker with `count` sequences moved away (queued ones first: they have no prefix to re-prefill)."""
    from_waiting = min(count, worker.shard.waiting)
    shard = replace(
        worker.shard, waiting=worker.shard.waiting - from_waiting, running=worker.shard.running - (count - from_waiting)
    )
    return replace(worker, shard=shard)
