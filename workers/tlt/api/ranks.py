"""Where the policy trainer's ranks run: a pure function of the spec (the operator and the coordinator agree on it).

The trainer is `trainer.replicas x trainer.gpusPerReplica` ranks of one process group,
one process per GPU, one per pod on CPU pods (its threads bounded by the pod's CPU
limit). Rank r runs in pod `pods[r // per_pod]`; rank 0 in the first, which is the
head pod (trainer-0, or worker-0 colocated). Colocated, each worker pod's GPUs train
as ranks after rolling out. Ranks rendezvous at the head pod's stable DNS name on the
job's headless Service, port `RENDEZVOUS_PORT` (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass

from tlt.api.topology import trainer_slots

RENDEZVOUS_PORT = 29500
RANK_ACTOR = "trainer-rank-{}"  # the Ray actor of rank r (its pod finds it by name)


@dataclass(frozen=True)
class TrainerRanks:
    pods: tuple[str, ...]  # pods (Ray nodes, `<role>-<index>`) hosting ranks, in rank order
    per_pod: int  # ranks in each of them
    gpus_per_rank: int  # 1: each rank holds one GPU (Ray `num_gpus`); 0: CPU

    @property
    def world_size(self) -> int:
        return len(self.pods) * self.per_pod

    def pod_of(self, rank: int) -> str:
        return self.pods[rank // self.per_pod]

    def local_rank(self, rank: int) -> int:
        return rank % self.per_pod

    def ranks_on(self, pod: str) -> range:
        """The ranks pod `pod` hosts (empty for pods without ranks)."""
        if pod not in self.pods:
            return range(0)
        first = self.pods.index(pod) * self.per_pod
        return range(first, first + self.per_pod)


def trainer_ranks(spec) -> TrainerRanks:
    """The trainer's ranks of a `ReasoningRLJobSpec`: `per_pod` in each of the pods that train (`tlt.api.topology`)."""
    slots = trainer_slots(spec)
    gpus = slots[0].gpus
    return TrainerRanks(pods=tuple(s.node for s in slots), per_pod=max(1, gpus), gpus_per_rank=1 if gpus > 0 else 0)
