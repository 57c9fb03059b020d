"""The coordinator on a cluster, without one: which pods the job has, progress as the operator reads it,
and the tail consolidations the operator asks the head pod for."""

from __future__ import annotations

import pytest

from specs import manifest, with_fields
from tlt.api.load import parse_job
from tlt.api.topology import actor_nodes, node_names, pod_nodes
from tlt.coordinator.cluster import ClusterRun, shard_progress
from tlt.coordinator.shard import ShardProgressReport
from tlt.report import read_records
from tlt_operator.builders import pod_slots

PLACEMENTS = {
    "disaggregated, one trainer, lending": {"placement": "disaggregated"},
    "disaggregated, three trainers, lending": {"placement": "disaggregated", "trainer.replicas": 3},
    "disaggregated, three trainers, no lending": {"placement": "disaggregated", "trainer.replicas": 3, "elasticity.lendIdle": False},
    "disaggregated, dedicated drafters, lending": {
        "placement": "disaggregated", "trainer.replicas": 2, "drafter.dedicatedReplicas": 2},
    "disaggregated, dedicated drafters, no lending": {
        "placement": "disaggregated", "trainer.replicas": 2, "elasticity.lendIdle": False,
        "drafter.dedicatedReplicas": 1},
    "disaggregated, ngram drafter": {"placement": "disaggregated", "trainer.replicas": 2,
                                     "drafter.architecture": "ngram", "drafter.trainOnIdle": False},
    "disaggregated, no drafter": {"placement": "disaggregated", "drafter.enabled": False},
    "colocated, lending": {"placement": "colocated"},
    "colocated, no lending": {"placement": "colocated", "elasticity.lendIdle": False},
    "colocated, dedicated drafters": {"placement": "colocated", "drafter.dedicatedReplicas": 2},
}


def job_of(name: str = "j", **changes):
    return parse_job(with_fields(manifest(name), **{"rollout.replicas": 3, **changes}))


@pytest.mark.parametrize("changes", PLACEMENTS.values(), ids=PLACEMENTS.keys())
def test_ray_nodes_are_exactly_the_pods_the_operator_creates(changes):
    job = job_of(**changes)
    names = node_names(job.spec)
    assert sorted(names) == sorted(f"{s.role}-{s.index}" for s in pod_slots(job))
    assert len(names) == len(set(names))
    assert names[0] == pod_nodes(job.spec).head, "the head pod comes first"


def test_disaggregated_head_is_trainer_0_and_trainers_host_drafters_only_when_lending():
    lending = pod_nodes(job_of(**{"trainer.replicas": 2, "drafter.dedicatedReplicas": 1}).spec)
    assert lending.head == "trainer-0"
    assert set(lending.drafter_hosts) == {"trainer-0", "trainer-1", "drafter-0"}

    no_lending = pod_nodes(job_of(**{"trainer.replicas": 2, "elasticity.lendIdle": False,
                                     "drafter.dedicatedReplicas": 1}).spec)
    assert no_lending.head == "trainer-0"
    assert no_lending.drafter_hosts == ("drafter-0",), "without lending only dedicated drafters train the drafter"


def test_pods_with_a_switchable_actor_are_the_shards_and_drafter_hosts_only():
    lending = job_of(**{"trainer.replicas": 2}).spec
    assert actor_nodes(lending) == {"rollout-0", "rollout-1", "rollout-2", "trainer-0", "trainer-1"}
    no_lending = job_of(**{"trainer.replicas": 2, "elasticity.lendIdle": False}).spec
    assert "trainer-1" in node_names(no_lending) and "trainer-1" not in actor_nodes(no_lending), \
        "a second trainer pod without lending only runs a Ray node; it must not wait for an actor"


def test_colocated_head_is_worker_0_and_only_dedicated_drafters_host_drafters():
    nodes = pod_nodes(job_of(placement="colocated", **{"drafter.dedicatedReplicas": 2}).spec)
    assert nodes.head == "worker-0"
    assert set(nodes.drafter_hosts) == {"drafter-0", "drafter-1"}
    assert pod_nodes(job_of(placement="colocated").spec).drafter_hosts == ()


def test_a_job_without_a_trained_drafter_has_no_drafter_hosts():
    assert pod_nodes(job_of(**{"drafter.enabled": False, "trainer.replicas": 2}).spec).drafter_hosts == ()


def report(name, **fields):
    values = dict(role="rollout", running=0, waiting=0, finished=0, generated_tokens=0, speculating=False, acceptance_length=0.0)
    return ShardProgressReport(name=name, **{**values, **fields})


def test_shard_progress_indexes_shards_by_their_worker_name():
    shards = shard_progress({
        "rollout-0": report("rollout-0", running=3, waiting=1, finished=5, generated_tokens=700, speculating=True),
        "rollout-12": report("rollout-12", role="drafter", finished=8),
    })
    by_index = {s.shard: s for s in shards}
    assert set(by_index) == {0, 12}
    first = by_index[0]
    assert (first.running, first.waiting, first.finished, first.generated_tokens, first.speculating) == (3, 1, 5, 700, True)
    assert by_index[12].role == "drafter" and by_index[12].finished == 8


# ---------------------------------------------------------------------------------
# Tail consolidation requests (from the head pod's `tlt.dev/consolidate` annotation)


class FakePool:
    def __init__(self, shard_names):
        self.shard_names = list(shard_names)
        self.calls = []

    def consolidate(self, target, sources, counts):
        self.calls.append((target, list(sources), list(counts)))
        return sum(counts)


class NoStatus:
    def progress(self, *args):
        pass

    def step_completed(self, *args):
        pass


@pytest.fixture
def run(tmp_path):
    job = job_of("tail")
    run = ClusterRun(job, status=NoStatus(), run_dir=tmp_path, progress=False)
    run.pool = FakePool(["rollout-0", "rollout-1", "rollout-2"])
    return run


def consolidations(run):
    """The consolidations the run's metrics log records (the report reads them from there)."""
    return [r for r in read_records(run.run_dir / "metrics.jsonl") if r["kind"] == "consolidate"]


def test_consolidation_of_the_current_step_moves_sequences_by_pod_name(run):
    run.request_consolidation({"step": 4, "moves": [
        {"target": "tail-rollout-0", "sources": ["tail-rollout-1", "tail-rollout-2"], "sequences": [2, 3]}]})
    run._consolidate(4)
    assert run.pool.calls == [("rollout-0", ["rollout-1", "rollout-2"], [2, 3])]
    assert [r["moved"] for r in consolidations(run)] == [5]


def test_consolidation_requested_for_an_earlier_step_is_dropped(run):
    run.request_consolidation({"step": 3, "moves": [{"target": "tail-rollout-0", "sources": ["tail-rollout-1"], "sequences": [2]}]})
    run._consolidate(4)
    run._consolidate(3)  # once dropped it stays dropped
    assert run.pool.calls == []


@pytest.mark.parametrize("request_", [
    {"step": 4, "moves": [{"target": "tail-rollout-9", "sources": ["tail-rollout-1"], "sequences": [2]}]},
    {"step": 4, "moves": [{"target": "tail-rollout-0", "sources": ["tail-trainer-0"], "sequences": [2]}]},
    {"step": 4, "moves": [{"target": "tail-rollout-0", "sources": ["tail-rollout-1", "tail-rollout-2"], "sequences": [2]}]},
    {"step": 4, "moves": [{"target": "tail-rollout-0", "sources": ["tail-rollout-1"], "sequences": ["two"]}]},
    {"step": 4, "moves": [{"target": "tail-rollout-0", "sources": ["tail-rollout-1"], "sequences": [-1]}]},
    {"step": 4, "moves": [{"target": "tail-rollout-0", "sources": ["tail-rollout-0"], "sequences": [1]}]},
    {"step": 4, "moves": [{"target": "tail-rollout-0", "sources": "tail-rollout-1", "sequences": [1]}]},
    {"step": 4, "moves": ["tail-rollout-0"]},
    {"step": 4, "moves": {"target": "tail-rollout-0"}},
    ["step", 4],
], ids=["unknown target", "non-shard source", "counts do not match sources", "count not a number", "negative count",
        "target is its own source", "sources not a list", "move not an object", "moves not a list", "request not an object"])
def test_malformed_consolidation_requests_are_ignored_without_stopping_the_run(run, request_):
    run.request_consolidation(request_)
    run._consolidate(4)
    assert run.pool.calls == []


def test_a_malformed_move_does_not_hide_the_valid_moves_beside_it(run):
    run.request_consolidation({"step": 4, "moves": [
        {"target": "tail-rollout-7", "sources": ["tail-rollout-1"], "sequences": [1]},
        {"target": "tail-rollout-2", "sources": ["tail-rollout-1"], "sequences": [4]},
    ]})
    run._consolidate(4)
    assert run.pool.calls == [("rollout-2", ["rollout-1"], [4])]
