"""The elastic policy on scripted progress sequences."""

import pytest

from specs import manifest, spec_of
from tlt.elastic import (
    Consolidate,
    Lend,
    Progress,
    Replace,
    Return,
    ScaleDrafters,
    ShardState,
    Worker,
    apply_actions,
    plan,
)

BASE = manifest("job", {
    "algorithm": {"groupSize": 4, "promptsPerStep": 16},
    "rollout": {"replicas": 4, "engine": "torch", "gpusPerReplica": 0, "maxBatchSize": 32},
    "speculative": {"batchThreshold": 16},
    "elasticity": {"consolidateTail": {"threshold": 4}},
})


def make_spec(**changes):
    return spec_of(BASE, **changes)


def rollout(index, running=0, waiting=0, finished=0, assigned=None, ready=True, failure=None):
    return Worker(
        name=f"rollout-{index}",
        role="rollout",
        index=index,
        assigned=assigned,
        ready=ready,
        shard=ShardState(running=running, waiting=waiting, finished=finished),
        failure=failure,
    )


def trainer(index=0, assigned=None):
    return Worker(name=f"trainer-{index}", role="trainer", index=index, assigned=assigned)


def colocated(index, running=0, waiting=0, assigned=None):
    return Worker(name=f"worker-{index}", role="worker", index=index, assigned=assigned, shard=ShardState(running, waiting))


def settle(spec, workers, progress, rounds=3):
    """Apply plan's actions until the plan is empty; no action may repeat, no loan may be taken back.

    One plan usually suffices; the shard set settles before a consolidation, and its sources are
    lent by the plan after it, once emptied: at most three plans.
    """
    applied = []
    for _ in range(rounds + 1):
        actions = plan(spec, workers, progress)
        if not actions:
            return applied, workers
        assert not set(actions) & set(applied), f"re-planning repeated {set(actions) & set(applied)}"
        undone = {a.worker for a in applied if isinstance(a, Lend)} & {a.worker for a in actions if isinstance(a, Return)}
        assert not undone, f"re-planning took back {undone}"
        applied += actions
        workers = apply_actions(workers, actions)
    raise AssertionError(f"no fixed point after {rounds} plans: still {plan(spec, workers, progress)}")


ROLLOUT = Progress(step=1, phase="rollout")
TRAIN = Progress(step=1, phase="train")


def test_busy_shards_are_left_alone_and_trainer_is_lent_during_disaggregated_rollout():
    spec = make_spec()
    workers = [trainer(), *(rollout(i, running=20) for i in range(4))]
    assert plan(spec, workers, ROLLOUT) == [Lend("trainer-0")]


def test_drained_shard_is_lent_and_busy_ones_are_not():
    spec = make_spec()
    workers = [trainer(assigned="drafter"), rollout(0, finished=16), rollout(1, running=30), rollout(2, running=9, waiting=2)]
    assert plan(spec, workers, ROLLOUT) == [Lend("rollout-0")]


def test_never_lends_a_shard_with_queued_or_running_work_in_any_phase():
    spec = make_spec()
    for phase in ("rollout", "reward", "train", "sync", "idle"):
        for shard in (rollout(0, running=1), rollout(0, waiting=1)):
            actions = plan(spec, [shard], Progress(1, phase))
            assert not any(isinstance(a, Lend) for a in actions), (phase, shard)


def test_work_arriving_on_a_lent_shard_returns_it_to_rollout():
    spec = make_spec()
    workers = [trainer(assigned="drafter"), rollout(0, waiting=16, assigned="drafter"), rollout(1, waiting=16)]
    actions, after = settle(spec, workers, Progress(step=2, phase="rollout"))
    assert actions == [Return("rollout-0", to="rollout")]
    assert [w.current_role for w in after] == ["drafter", "rollout", "rollout"]


def test_train_phase_returns_the_trainer_and_keeps_idle_rollout_shards_lent():
    spec = make_spec()
    workers = [trainer(assigned="drafter"), rollout(0, finished=16, assigned="drafter"), rollout(1, finished=16)]
    actions, _ = settle(spec, workers, TRAIN)
    assert actions == [Return("trainer-0", to="trainer"), Lend("rollout-1")]


def test_trainer_is_never_lent_when_colocated():
    spec = make_spec(placement="colocated")
    workers = [trainer()]  # defensive: a trainer worker must stay a trainer outside disaggregated placement
    for phase in ("rollout", "reward", "idle"):
        assert plan(spec, workers, Progress(1, phase)) == []


def test_colocated_workers_are_lent_when_drained_and_returned_for_training():
    spec = make_spec(placement="colocated")
    workers = [colocated(0), colocated(1, running=12)]
    actions, after = settle(spec, workers, ROLLOUT)
    assert actions == [Lend("worker-0")]
    actions, after = settle(spec, after, TRAIN)
    assert actions == [Return("worker-0", to="worker")]
    assert [w.current_role for w in after] == ["worker", "worker"]


def test_nothing_is_lent_when_lending_or_the_trainable_drafter_is_off():
    variants = [
        make_spec(**{"elasticity.lendIdle": False}),
        make_spec(**{"drafter.trainOnIdle": False}),
        make_spec(**{"drafter.enabled": False}),
        make_spec(**{"drafter.architecture": "ngram"}),
    ]
    workers = [trainer(), rollout(0, finished=16), rollout(1, running=3)]
    for spec in variants:
        assert not any(isinstance(a, Lend) for a in plan(spec, workers, ROLLOUT))


def test_turning_lending_off_returns_every_lent_worker():
    spec = make_spec(**{"elasticity.lendIdle": False})
    workers = [trainer(assigned="drafter"), rollout(0, finished=16, assigned="drafter"), rollout(1, running=40)]
    actions, _ = settle(spec, workers, ROLLOUT)
    assert actions == [Return("trainer-0", to="trainer"), Return("rollout-0", to="rollout")]


def test_worker_that_is_not_ready_is_not_lent():
    spec = make_spec()
    assert plan(spec, [rollout(0, finished=16, ready=False)], ROLLOUT) == []


def test_tail_is_consolidated_onto_the_fullest_shards_and_the_sources_are_lent():
    spec = make_spec()  # threshold 4, capacity min(maxBatchSize 32, batchThreshold 16) = 16
    workers = [trainer(assigned="drafter"), rollout(0, running=3), rollout(1, running=4), rollout(2, running=1), rollout(3, running=2)]
    actions, after = settle(spec, workers, ROLLOUT)
    first = plan(spec, workers, ROLLOUT)
    assert first == [Consolidate(target="rollout-1", sources=("rollout-0", "rollout-2", "rollout-3"), sequences=(3, 1, 2))]
    assert actions == first + [
        Lend("rollout-0"),
        Lend("rollout-2"),
        Lend("rollout-3"),
    ]
    remaining = {w.name: w.shard.remaining for w in after if w.role == "rollout"}
    assert remaining == {"rollout-0": 0, "rollout-1": 10, "rollout-2": 0, "rollout-3": 0}


def test_no_consolidation_while_any_shard_is_above_the_threshold():
    spec = make_spec()
    workers = [rollout(0, running=5), rollout(1, running=1), rollout(2, running=1)]
    assert not any(isinstance(a, Consolidate) for a in plan(spec, workers, ROLLOUT))


def test_consolidation_respects_the_speculative_batch_threshold_and_splits_sources():
    spec = make_spec(**{"speculative.batchThreshold": 5, "elasticity.consolidateTail.threshold": 4})
    workers = [rollout(0, running=4), rollout(1, running=3), rollout(2, running=3)]  # 10 sequences, capacity 5 -> 2 shards
    actions, after = settle(spec, workers, ROLLOUT)
    assert not any(isinstance(a, Lend) for a in plan(spec, workers, ROLLOUT)), "sources with work are not lent yet"
    assert actions == [
        Consolidate(target="rollout-0", sources=("rollout-2",), sequences=(1,)),
        Consolidate(target="rollout-1", sources=("rollout-2",), sequences=(2,)),
        Lend("rollout-2"),
    ]
    assert max(w.shard.remaining for w in after) <= 5


def test_consolidation_uses_max_batch_size_when_speculation_is_off():
    workers = [rollout(0, running=4), rollout(1, running=4), rollout(2, running=4)]
    actions = plan(make_spec(**{"speculative.mode": "off"}), workers, ROLLOUT)
    assert actions[0] == Consolidate(target="rollout-0", sources=("rollout-1", "rollout-2"), sequences=(4, 4))


def test_with_an_auto_threshold_the_largest_bandit_bucket_bounds_a_consolidated_shard():
    # 12 sequences, buckets up to 8: two shards of at most 8, not one of 12.
    spec = make_spec(**{"speculative.batchThreshold": "auto", "speculative.bucketBounds": [1, 2, 4, 8]})
    workers = [rollout(0, running=4), rollout(1, running=4), rollout(2, running=4)]
    actions, after = settle(spec, workers, ROLLOUT)
    assert any(isinstance(a, Consolidate) for a in actions)
    assert max(w.shard.remaining for w in after) == 8
    assert sum(1 for w in after if w.shard.remaining) == 2


def test_with_an_auto_threshold_the_measured_threshold_bounds_a_consolidated_shard():
    # `auto` measured at 3: the 12 sequences go to 4 shards of 3, each small enough to speculate; the
    # bandit's largest bucket (8) would have piled them onto two shards of 8 and 4.
    spec = make_spec(**{"speculative.batchThreshold": "auto", "speculative.bucketBounds": [1, 2, 4, 8],
                        "elasticity.consolidateTail.threshold": 3})
    workers = [rollout(i, running=r) for i, r in enumerate((3, 3, 2, 2, 2))]
    measured = Progress(step=1, phase="rollout", batch_threshold=3)
    actions, after = settle(spec, workers, measured)
    assert [a for a in actions if isinstance(a, Consolidate)] == [
        Consolidate(target="rollout-2", sources=("rollout-4",), sequences=(1,)),
        Consolidate(target="rollout-3", sources=("rollout-4",), sequences=(1,)),
    ]
    assert sorted(w.shard.remaining for w in after) == [0, 3, 3, 3, 3]
    _, unmeasured = settle(spec, workers, ROLLOUT)
    assert sorted(w.shard.remaining for w in unmeasured) == [0, 0, 0, 4, 8]  # the bucket bound, 8: no speculation


def test_no_consolidation_when_the_tail_does_not_fit_on_fewer_shards():
    spec = make_spec(**{"speculative.batchThreshold": 2})
    workers = [rollout(0, running=2), rollout(1, running=2)]
    assert plan(spec, workers, ROLLOUT) == []


def test_never_consolidates_onto_a_lent_or_unready_shard():
    spec = make_spec()
    workers = [
        rollout(0, finished=9, assigned="drafter"),
        rollout(1, running=1, ready=False),
        rollout(2, running=2),
        rollout(3, running=1),
    ]
    actions = plan(spec, workers, ROLLOUT)
    targets = {a.target for a in actions if isinstance(a, Consolidate)}
    assert targets == {"rollout-2"}
    moved_from = {s for a in actions if isinstance(a, Consolidate) for s in a.sources}
    assert moved_from == {"rollout-3"}


def test_consolidation_only_in_rollout_and_when_enabled():
    workers = [rollout(0, running=1), rollout(1, running=1)]
    assert not any(isinstance(a, Consolidate) for a in plan(make_spec(), workers, Progress(1, "reward")))
    disabled = make_spec(**{"elasticity.consolidateTail.enabled": False})
    assert not any(isinstance(a, Consolidate) for a in plan(disabled, workers, ROLLOUT))


def test_consolidation_moves_queued_sequences_before_running_ones():
    spec = make_spec()
    workers = [rollout(0, running=4), rollout(1, running=1, waiting=2)]
    _, after = settle(spec, workers, ROLLOUT)
    assert after[0].shard == ShardState(running=7)
    assert after[1].shard == ShardState()


def test_dedicated_drafters_scale_to_max_and_to_zero_without_a_trainable_drafter():
    spec = make_spec(**{"drafter.dedicatedReplicas": 2})
    actions, after = settle(spec, [trainer(), rollout(0, running=8)], ROLLOUT)
    assert actions == [Lend("trainer-0"), ScaleDrafters(2)]
    assert sorted(w.name for w in after if w.role == "drafter") == ["drafter-0", "drafter-1"]
    assert not any(w.lent for w in after if w.role == "drafter")

    disabled = make_spec(**{"drafter.enabled": False, "drafter.dedicatedReplicas": 2})
    assert plan(disabled, after, ROLLOUT)[-1] == ScaleDrafters(0)


def test_failed_worker_is_replaced_and_takes_no_part():
    spec = make_spec()
    workers = [rollout(0, finished=5, failure="OOMKilled"), rollout(1, running=1), rollout(2, running=1)]
    actions = plan(spec, workers, ROLLOUT)
    assert actions[0] == Replace("rollout-0", "OOMKilled")
    assert Lend("rollout-0") not in actions


def test_output_does_not_depend_on_input_order():
    spec = make_spec()
    workers = [trainer(), rollout(0, running=3), rollout(1, running=4), rollout(2, finished=3), rollout(3, running=2)]
    expected = plan(spec, workers, ROLLOUT)
    assert plan(spec, list(reversed(workers)), ROLLOUT) == expected


def test_a_whole_step_scripted_never_lends_a_busy_shard_and_ends_settled():
    """rollout with a draining tail -> reward -> train -> next step, applying plan after every report."""
    spec = make_spec()
    names = [f"rollout-{i}" for i in range(4)]
    reports = [
        ("rollout", [16, 16, 16, 16]),
        ("rollout", [9, 12, 0, 14]),
        ("rollout", [3, 4, 0, 2]),
        ("rollout", [0, 1, 0, 0]),
        ("rollout", [0, 0, 0, 0]),
        ("reward", [0, 0, 0, 0]),
        ("train", [0, 0, 0, 0]),
        ("rollout", [16, 16, 16, 16]),
    ]
    workers = [trainer(), *(rollout(i) for i in range(4))]
    lent_history = []
    for phase, remaining in reports:
        # The coordinator applies earlier moves; its report is the truth about remaining work.
        shards = {n: r for n, r in zip(names, remaining)}
        workers = [w if w.role != "rollout" else Worker(w.name, w.role, w.index, w.assigned, shard=ShardState(running=shards[w.name])) for w in workers]
        actions, workers = settle(spec, workers, Progress(1, phase))
        for w in workers:
            assert not (w.lent and w.has_work), f"{w.name} lent with work in {phase}"
        lent_history.append(sorted(w.name for w in workers if w.lent))
    assert lent_history[0] == ["trainer-0"]
    assert lent_history[1] == ["rollout-2", "trainer-0"]
    assert lent_history[2] == ["rollout-0", "rollout-2", "rollout-3", "trainer-0"]  # tail of 9 consolidated onto rollout-1
    assert lent_history[6] == names  # training: trainer back, every rollout shard trains the drafter
    assert lent_history[7] == ["trainer-0"]  # next step's work brings every shard back


def test_random_snapshots_never_lend_busy_workers_and_settle():
    import random

    rng = random.Random(7)
    specs = [make_spec(), make_spec(placement="colocated"), make_spec(**{"speculative.batchThreshold": 3})]
    for _ in range(300):
        spec = rng.choice(specs)
        role = "worker" if spec.placement == "colocated" else "rollout"
        workers = [trainer(assigned=rng.choice([None, "drafter"]))] if role == "rollout" else []
        for i in range(rng.randint(1, 6)):
            running = rng.choice([0, 0, 1, 2, 3, 4, 9])
            workers.append(
                Worker(f"{role}-{i}", role, i, assigned=rng.choice([None, "drafter"]) if running == 0 else None,
                       ready=rng.random() > 0.1, shard=ShardState(running=running, waiting=rng.choice([0, 0, 1])))
            )
        progress = Progress(1, rng.choice(["rollout", "reward", "train", "sync", "idle"]))
        busy = {w.name for w in workers if w.has_work}
        actions = plan(spec, workers, progress)
        assert not {a.worker for a in actions if isinstance(a, Lend)} & busy
        for a in actions:
            if isinstance(a, Consolidate):
                target = next(w for w in workers if w.name == a.target)
                assert not target.lent and target.ready
        settle(spec, workers, progress)


def test_no_consolidation_while_lent_workers_are_being_taken_back():
    spec = make_spec()
    workers = [rollout(0, running=1), rollout(1, running=1), rollout(2, waiting=1, assigned="drafter")]
    assert plan(spec, workers, ROLLOUT) == [Return("rollout-2", to="rollout")]
