"""The job's topology (`tlt.api.topology`): which pods a spec asks for, which is the head, and what each
hosts; and that the operator creates exactly the pods the workers look for."""

from __future__ import annotations

import pytest

from specs import manifest, with_fields
from tlt.api import topology
from tlt.api.load import parse_job
from tlt.api.ranks import trainer_ranks
from tlt_operator.builders import head_pod_name, max_slots, pod_slots


def spec_of(**changes):
    return parse_job(with_fields(manifest("j"), **changes)).spec


def slots(spec) -> list[tuple[str, int, int]]:
    return [(s.role, s.index, s.gpus) for s in topology.pod_slots(spec)]


def test_disaggregated_trainers_then_shards_then_dedicated_drafters_the_first_trainer_heads():
    spec = spec_of(placement="disaggregated", **{"trainer.replicas": 2, "trainer.gpusPerReplica": 4,
                                                 "rollout.replicas": 3, "rollout.gpusPerReplica": 1,
                                                 "drafter.dedicatedReplicas": 1, "drafter.gpusPerReplica": 2})
    assert slots(spec) == [("trainer", 0, 4), ("trainer", 1, 4), ("rollout", 0, 1), ("rollout", 1, 1), ("rollout", 2, 1),
                           ("drafter", 0, 2)]
    assert topology.node_names(spec) == ["trainer-0", "trainer-1", "rollout-0", "rollout-1", "rollout-2", "drafter-0"]
    assert (topology.head_role(spec), topology.head_node(spec)) == ("trainer", "trainer-0")
    assert topology.shard_names(spec) == ["rollout-0", "rollout-1", "rollout-2"]
    assert topology.drafter_hosts(spec) == ("trainer-0", "trainer-1", "drafter-0"), "trainers lend, drafters are dedicated"
    assert topology.actor_nodes(spec) == {"rollout-0", "rollout-1", "rollout-2", "trainer-0", "trainer-1", "drafter-0"}
    assert [s.node for s in topology.trainer_slots(spec)] == ["trainer-0", "trainer-1"]


def test_without_lending_trainers_host_no_drafter_and_only_run_a_ray_node():
    spec = spec_of(placement="disaggregated", **{"trainer.replicas": 2, "elasticity.lendIdle": False,
                                                 "drafter.dedicatedReplicas": 1})
    assert topology.drafter_hosts(spec) == ("drafter-0",)
    assert "trainer-1" in topology.node_names(spec) and "trainer-1" not in topology.actor_nodes(spec)
    assert topology.pod_nodes(spec) == topology.PodNodes(head="trainer-0", drafter_hosts=("drafter-0",))


def test_colocated_workers_roll_out_and_train_on_the_larger_gpu_count_and_worker_0_heads():
    spec = spec_of(placement="colocated", **{"rollout.replicas": 2, "rollout.gpusPerReplica": 1,
                                             "trainer.gpusPerReplica": 2, "drafter.dedicatedReplicas": 2})
    assert slots(spec) == [("worker", 0, 2), ("worker", 1, 2), ("drafter", 0, spec.drafter.gpus_per_replica),
                           ("drafter", 1, spec.drafter.gpus_per_replica)]
    assert (topology.head_role(spec), topology.head_node(spec)) == ("worker", "worker-0")
    assert topology.shard_names(spec) == ["worker-0", "worker-1"]
    assert topology.drafter_hosts(spec) == ("drafter-0", "drafter-1"), "colocated workers never lend"
    assert trainer_ranks(spec).pods == ("worker-0", "worker-1")


def test_no_trainable_drafter_means_no_drafter_pods_and_no_drafter_hosts():
    for changes in ({"drafter.enabled": False}, {"drafter.architecture": "ngram", "drafter.trainOnIdle": False}):
        spec = spec_of(**{"trainer.replicas": 2, **changes})
        assert topology.dedicated_drafters(spec) == 0
        assert topology.drafter_hosts(spec) == ()
        assert not topology.lending_enabled(spec)
        assert [s.role for s in topology.pod_slots(spec)] == ["trainer", "trainer", "rollout"]


def test_a_pod_not_told_its_head_guesses_it_from_its_role():
    assert topology.default_head_node("worker") == "worker-0"
    assert [topology.default_head_node(r) for r in ("trainer", "rollout", "drafter")] == ["trainer-0"] * 3


SPECS = {
    "disaggregated": {"placement": "disaggregated", "rollout.replicas": 3},
    "disaggregated, trainers, dedicated drafters": {"placement": "disaggregated", "trainer.replicas": 3,
                                                    "rollout.replicas": 2, "drafter.dedicatedReplicas": 2},
    "disaggregated, no lending": {"placement": "disaggregated", "trainer.replicas": 2, "elasticity.lendIdle": False},
    "disaggregated, no drafter": {"placement": "disaggregated", "drafter.enabled": False, "drafter.dedicatedReplicas": 2},
    "colocated": {"placement": "colocated", "rollout.replicas": 4},
    "colocated, dedicated drafters": {"placement": "colocated", "rollout.replicas": 2, "drafter.dedicatedReplicas": 1},
}


@pytest.mark.parametrize("changes", SPECS.values(), ids=SPECS.keys())
def test_the_operator_creates_exactly_the_pods_the_workers_look_for(changes):
    job = parse_job(with_fields(manifest("j"), **changes))
    operator_pods = [s.name("j") for s in pod_slots(job)]
    assert operator_pods == [f"j-{node}" for node in topology.node_names(job.spec)], "same pods, same order"
    assert operator_pods[0] == head_pod_name(job) == f"j-{topology.head_node(job.spec)}"
    assert {s.node for s in max_slots(job)} >= set(topology.node_names(job.spec))
    assert set(trainer_ranks(job.spec).pods) <= set(topology.node_names(job.spec))
    assert set(topology.actor_nodes(job.spec)) <= set(topology.node_names(job.spec))
