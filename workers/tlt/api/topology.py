"""The job's topology: which pods a spec asks for and what each one hosts. Pure functions of the spec.

The operator creates exactly these pods (`tlt_operator.builders.pod_slots`) and the workers
find each other by the same names (`tlt.coordinator`, `tlt.worker`), so this module is the
one place that says them. Every pod is named `<role>-<index>` (its Ray node and, for the
shards and drafter hosts, its actor are named the same; the Kubernetes pod is
`<job>-<role>-<index>`):

- disaggregated: `trainer-0..` (the policy trainer's ranks), then `rollout-0..` (the rollout
  shards), then `drafter-0..` (dedicated drafter replicas);
- colocated: `worker-0..` (each rolls out and trains), then `drafter-0..`.

Pod 0 of the role that trains is the head: it runs the Ray head, the coordinator and
trainer rank 0.
"""

from __future__ import annotations

from dataclasses import dataclass

# The roles of each placement's own pods, the head's role first (dedicated drafters follow in both).
PLACEMENT_ROLES = {"disaggregated": ("trainer", "rollout"), "colocated": ("worker",)}
DRAFTER_ROLE = "drafter"


def node_name(role: str, index: int) -> str:
    """A pod's Ray node name (and the suffix of its pod name): `<role>-<index>`."""
    return f"{role}-{index}"


def head_role(spec) -> str:
    """The role that trains; its pod 0 runs the Ray head, the coordinator and trainer rank 0."""
    return PLACEMENT_ROLES[spec.placement][0]


def head_node(spec) -> str:
    """The head pod's node name: trainer-0, or worker-0 colocated."""
    return node_name(head_role(spec), 0)


def default_head_node(role: str) -> str:
    """The head pod a pod of role `role` assumes when it is not told (the operator always tells it):
    a `worker` pod's job is colocated; any other role's is taken as disaggregated."""
    placement = "colocated" if role in PLACEMENT_ROLES["colocated"] else "disaggregated"
    return node_name(PLACEMENT_ROLES[placement][0], 0)


def shard_role(spec) -> str:
    """The role of the workers that roll out: `worker` when colocated (they train too), else `rollout`."""
    return PLACEMENT_ROLES[spec.placement][-1]


def lending_enabled(spec) -> bool:
    """Idle workers train the drafter only when there is a trainable drafter to train."""
    drafter = spec.drafter
    return spec.elasticity.lend_idle and drafter.enabled and drafter.train_on_idle and drafter.architecture == "eagle"


def dedicated_drafters(spec) -> int:
    """Dedicated drafter replicas: the maximum while a trainable drafter exists, else none."""
    drafter = spec.drafter
    if not drafter.enabled or drafter.architecture != "eagle":
        return 0
    return drafter.dedicated_replicas


def _replicas(spec, role: str) -> int:
    return spec.trainer.replicas if role == "trainer" else spec.rollout.replicas


def _gpus(spec, role: str) -> int:
    if role == "trainer":
        return spec.trainer.gpus_per_replica
    if role == "rollout":
        return spec.rollout.gpus_per_replica
    if role == DRAFTER_ROLE:
        return spec.drafter.gpus_per_replica
    # Colocated: each worker runs rollout and training, so it gets the larger of the two GPU counts.
    return max(spec.rollout.gpus_per_replica, spec.trainer.gpus_per_replica)


@dataclass(frozen=True)
class Slot:
    """One pod the job wants: role fixed at creation, index within the role, its GPUs."""

    role: str
    index: int
    gpus: int

    @property
    def node(self) -> str:
        return node_name(self.role, self.index)


def pod_slots(spec, drafters: int | None = None) -> list[Slot]:
    """The pods of the job's placement, in creation order (the head first); `drafters` dedicated
    drafter pods (default: `dedicated_drafters(spec)`)."""
    drafters = dedicated_drafters(spec) if drafters is None else drafters
    counts = [(role, _replicas(spec, role)) for role in PLACEMENT_ROLES[spec.placement]] + [(DRAFTER_ROLE, drafters)]
    return [Slot(role, i, _gpus(spec, role)) for role, n in counts for i in range(n)]


def node_names(spec) -> list[str]:
    """Every pod's Ray node name, `<role>-<index>`, the head first."""
    return [slot.node for slot in pod_slots(spec)]


def trainer_slots(spec) -> list[Slot]:
    """The pods hosting the policy trainer's ranks (the head's role), in rank order."""
    role = head_role(spec)
    return [slot for slot in pod_slots(spec, drafters=0) if slot.role == role]


def shard_names(spec) -> list[str]:
    """The rollout shards, `<role>-<index>`: the names of their workers, actors and (on a cluster) pods."""
    role = shard_role(spec)
    return [slot.node for slot in pod_slots(spec, drafters=0) if slot.role == role]


def drafter_hosts(spec) -> tuple[str, ...]:
    """Pods that only train the drafter while lent: the trainers (disaggregated, when lending) and
    the dedicated drafters."""
    trainers = trainer_slots(spec) if spec.placement == "disaggregated" and lending_enabled(spec) else []
    drafters = [slot for slot in pod_slots(spec) if slot.role == DRAFTER_ROLE]
    return tuple(slot.node for slot in trainers + drafters)


@dataclass(frozen=True)
class PodNodes:
    """Where the actors go on a cluster: one Ray node per pod, named `<role>-<index>`."""

    head: str  # the trainer runs here ("trainer-0", or "worker-0" colocated)
    drafter_hosts: tuple[str, ...] = ()  # pods that only train the drafter while lent (dedicated drafters, trainers)


def pod_nodes(spec) -> PodNodes:
    """Which pod runs what."""
    return PodNodes(head=head_node(spec), drafter_hosts=drafter_hosts(spec))


def actor_nodes(spec) -> set[str]:
    """The pods whose Ray node hosts a named actor the pod's role watcher switches."""
    return {*shard_names(spec), *drafter_hosts(spec)}
