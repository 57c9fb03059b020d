"""`batchThreshold: auto`: resolved from this machine's cost table at the acceptance length the
drafter was measured to reach (not an assumed 2.0), and re-resolved as the drafter improves."""

import threading

import pytest
from specs import manifest, spec_of

from tlt.coordinator.shard import RolloutShard, auto_threshold, cost_batch_sizes, newest_acceptance
from tlt.speculative.costs import CostTable
from tlt.engine.types import Request
from tlt.models import ModelConfig, random_model, save_model
from tlt.speculative.adaptive import Strategy

BATCHES = (1, 2, 4, 8, 16, 32)
# A forward costs 1 + 0.1 x tokens in the batch; the drafter a tenth of a width-1 forward.
COSTS = CostTable(device="cpu", context_len=128, drafter_ratio=0.1,
                  target_seconds={b: {w: 1 + 0.1 * b * w for w in (1, 2, 4, 8)} for b in BATCHES})


def test_the_auto_threshold_follows_the_measured_acceptance_length():
    spec = spec_of(manifest(), **{"speculative.strategies": ["3_1_3"]})
    # 3_1_3 verifies 4 tokens and drafts 3 levels: it pays at batch b when acceptance x (1 + 0.1b)
    # >= 1.05 x (1 + 0.4b + 0.3 (1 + 0.1b)).
    assert auto_threshold(spec, COSTS, 1.2) == 1  # pays nowhere: speculation only for the last sequence
    assert auto_threshold(spec, COSTS, 2.0) == 2
    assert auto_threshold(spec, COSTS, 3.5) == 16
    assert auto_threshold(spec, COSTS, None) == COSTS.auto_threshold(Strategy(3, 1, 3))  # nothing measured


@pytest.fixture(scope="module")
def policy_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("policy")
    cfg = ModelConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    save_model(random_model(cfg, seed=0, init_std=0.2), folder)
    return folder


def shard(folder, **changes):
    spec = spec_of(manifest(), **{"model": {"path": str(folder), "dtype": "float32"}, "rollout.engine": "torch",
                                  "rollout.maxBatchSize": 8, "algorithm.maxResponseTokens": 32,
                                  "speculative.strategies": ["3_1_3"], **changes})
    return RolloutShard("rollout-0", str(folder), spec, batch_threshold=2)


def test_a_shard_measures_acceptance_per_drafter_version_and_takes_a_new_threshold(policy_folder):
    s = shard(policy_folder, **{"speculative.mode": "always"})
    s.start_rollout(1, [Request(prompt=[1, 5, 6, 7], max_tokens=20, temperature=1.0, seed=i, id=i) for i in range(2)])
    while s.progress().busy:
        threading.Event().wait(0.05)
    assert len(s.take_results()) == 2
    c = s.engine.counters()
    first = (c.accepted_tokens, c.verify_rounds)
    assert c.verify_rounds > 0 and s.measured_acceptance() == (0, *first)
    # The loop pushes a new version after each rollout and then re-tunes: until the new version has
    # verified a round, the threshold follows the last measured one (not "nothing measured", which
    # froze `auto` at its first value for the whole run).
    s.set_drafter(1, s.eagle.state_dict())
    assert s.measured_acceptance() == (0, *first)
    s.start_rollout(2, [Request(prompt=[1, 9, 6, 7], max_tokens=20, temperature=1.0, seed=i, id=i) for i in range(2)])
    while s.progress().busy:
        threading.Event().wait(0.05)
    c = s.engine.counters()
    assert s.measured_acceptance() == (1, c.accepted_tokens - first[0], c.verify_rounds - first[1])  # version 1's own

    adaptive = shard(policy_folder)
    adaptive.set_threshold(5)
    assert adaptive.engine.speculation.switch.threshold == 5


def test_a_shards_progress_reports_the_acceptance_of_this_rollout_not_of_the_engines_lifetime(policy_folder):
    """status.drafter.acceptanceLength, the step record and the gauge say "last step": a lifetime
    mean lagged the drafter by many steps (a warmed-up drafter that online training pulled down
    from 5.9 to 4.5 showed 4.7)."""
    s = shard(policy_folder, **{"speculative.mode": "always"})
    rollouts = []
    for step, temperature in ((1, 0.0), (2, 1.0)):
        s.start_rollout(step, [Request(prompt=[1, 5, 6, 7], max_tokens=20, temperature=temperature, seed=i, id=i)
                               for i in range(2)])
        while s.progress().busy:
            threading.Event().wait(0.05)
        c = s.engine.counters()
        rollouts.append((c.accepted_tokens, c.verify_rounds))
        assert s.progress().acceptance_length == pytest.approx(
            (c.accepted_tokens - (rollouts[0][0] if step == 2 else 0))
            / (c.verify_rounds - (rollouts[0][1] if step == 2 else 0)))
    (a1, r1), (a2, r2) = rollouts
    assert a1 / r1 != pytest.approx((a2 - a1) / (r2 - r1))  # the two rollouts accepted differently
    assert s.progress().acceptance_length != pytest.approx(s.engine.counters().mean_acceptance_length)


def test_a_probe_measures_its_drafters_acceptance_without_touching_its_engine(policy_folder):
    s = shard(policy_folder)
    acceptance = s.measure_acceptance([[1, 5, 6, 7], [1, 9, 9]], [0], Strategy(3, 1, 3))
    assert acceptance is not None and 1.0 <= acceptance <= 4.0
    assert s.engine.counters().verify_rounds == 0 and s.engine.counters().generated_tokens == 0
    assert shard(policy_folder, **{"drafter.enabled": False}).measure_acceptance([[1, 5]], [0], Strategy(3, 1, 3)) is None


@pytest.mark.parametrize("max_batch, prompts, sizes", [
    (64, 32, (1, 2, 4, 8, 16, 32, 64)),
    (48, 32, (1, 2, 4, 8, 16, 32, 48)),
    (256, 6, (1, 2, 4, 8, 16, 24)),  # a step's 6 x 4 rollouts are the most a shard ever runs
])
def test_the_auto_cost_table_covers_every_batch_a_shard_runs(max_batch, prompts, sizes):
    spec = spec_of(manifest(), **{"rollout.maxBatchSize": max_batch, "algorithm.promptsPerStep": prompts,
                                  "algorithm.groupSize": 4, "algorithm.miniBatchSize": 4,
                                  "speculative.strategies": ["3_1_3"]})
    assert cost_batch_sizes(spec) == sizes
    # where speculation pays at every measured batch, `auto` speculates at all of them
    cheap = CostTable(device="cpu", context_len=128, drafter_ratio=0.1,
                      target_seconds={b: {w: 1.0 + 0.001 * b * w for w in (1, 4)} for b in sizes})
    assert auto_threshold(spec, cheap, 3.0) == sizes[-1]


def test_auto_takes_the_newest_drafter_version_any_shard_measured():
    # rollout-1's tail never reached a speculating batch with version 4: its version-1 rounds
    # (acceptance 1.0) must not pull version 4's 2.5 down
    assert newest_acceptance([(4, 250, 100), (1, 60, 60)]) == 2.5
    assert newest_acceptance([(4, 250, 100), (4, 150, 100), (3, 10, 10)]) == 2.0
    assert newest_acceptance([(0, 0, 0), (2, 30, 10)]) == 3.0
    assert newest_acceptance([(0, 0, 0), (0, 0, 0)]) is None
