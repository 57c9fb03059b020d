"""A rollout shard whose worker dies mid-rollout (its pod crashed): the pool resubmits its unfinished
requests to the other shard, the results equal an uninterrupted rollout's, and the worker is
re-created with the current policy once it can be (on a cluster: when the replacement pod joined)."""

from __future__ import annotations

import time

import pytest
import ray

from specs import manifest
from tlt.api.load import parse_job
from tlt.coordinator.actors import WorkerPool
from tlt.engine.types import Request

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool(micro_model):
    job = parse_job(manifest("faults", {
        "model": {"path": str(micro_model)},
        "algorithm": {"groupSize": 2, "promptsPerStep": 6, "maxResponseTokens": 48},
        "rollout": {"replicas": 2, "gpusPerReplica": 0, "maxBatchSize": 8},
        "speculative": {"mode": "adaptive", "batchThreshold": 4, "strategies": ["3_1_3"]},
    }))
    pool = WorkerPool(job.spec, str(micro_model))
    pool.start_shards(threshold=4)
    yield pool
    pool.shutdown()


def requests() -> list[Request]:
    """Four groups of two sampled sequences; a group runs on one shard."""
    return [Request(prompt=[1, 5 + g, 6, 7 + k % 3], max_tokens=24, temperature=1.0, top_p=0.9, seed=1000 * g + k,
                    group=g, id=(g, k)) for g in range(4) for k in range(2)]


def rollout(pool, kill: str | None = None, timeout: float = 240) -> dict:
    reqs = requests()
    assignment = {"rollout-0": [r for r in reqs if r.group % 2 == 0], "rollout-1": [r for r in reqs if r.group % 2 == 1]}
    pool.start_rollout(1, assignment)
    if kill:
        ray.kill(pool.shards[kill], no_restart=True)  # every process of the worker gone at once
    results, deadline = {}, time.monotonic() + timeout
    while len(results) < len(reqs):
        assert time.monotonic() < deadline, f"{len(results)}/{len(reqs)} results after {timeout}s"
        _, finished = pool.poll()
        results.update({r.id: list(r.tokens) for r in finished})
        time.sleep(0.05)
    return results


def test_a_lost_shards_requests_finish_elsewhere_as_if_nothing_happened_and_the_shard_comes_back(pool):
    uninterrupted = rollout(pool)
    pool.take_faults()

    survived = rollout(pool, kill="rollout-1")
    assert survived == uninterrupted, "sampling keyed by response position: the same tokens on another shard"
    lost = [f for f in pool.take_faults() if f["event"] == "lost"]
    assert [f["worker"] for f in lost] == ["rollout-1"] and lost[0]["resubmitted"] == 4

    deadline = time.monotonic() + 120
    while "rollout-1" not in pool.shards:  # re-created (embedded: at once, after the retry delay)
        assert time.monotonic() < deadline, "the lost shard was not re-created"
        pool.poll()
        time.sleep(0.1)
    assert [f["event"] for f in pool.take_faults()] == ["recreated"]
    assert rollout(pool) == uninterrupted, "the re-created shard serves with the same policy"
