"""The cluster simulator against hand-computed schedules, and its use of the real policy and manager."""

import numpy as np
import pytest

import tlt.elastic
import tlt.sim.cluster
from specs import manifest, spec_of
from tlt.api.topology import lending_enabled
from tlt.sim import (
    AcceptanceModel,
    ClusterSimulator,
    CostTable,
    Profile,
    SimOptions,
    baseline_spec,
    compare,
    paper_job,
    parse_lengths,
    predict_rollout_seconds,
    sample_lengths,
)
from tlt.sim.costs import qwen7b_h100
from tlt.speculative.adaptive import Strategy

BASE = manifest("sim", {
    "algorithm": {"groupSize": 2, "promptsPerStep": 2, "maxResponseTokens": 1000},
    "placement": "colocated",
    "rollout": {"replicas": 1, "engine": "torch", "gpusPerReplica": 1, "maxBatchSize": 8},
    "speculative": {"mode": "off"},
    "elasticity": {"lendIdle": False, "consolidateTail": {"enabled": False}},
    "drafter": {"dedicatedReplicas": 0},
})


def make_spec(**changes):
    return spec_of(BASE, **changes)


def make_profile(forward, drafter_ratio=0.0, kv=0.0, **changes):
    """Round numbers: no latencies unless asked for; training at 10 tokens/s per GPU."""
    values = dict(
        name="hand",
        costs=CostTable(target_seconds=forward, drafter_ratio=drafter_ratio, kv_seconds_per_token=kv),
        prefill_tokens_per_second=10.0,
        drafter_train_tokens_per_second=100.0,
        train_tokens_per_second=10.0,
    )
    values.update(changes)
    return Profile(**values)


def simulate(spec, profile, lengths, steps=1, mode="tlt", **options):
    opts = SimOptions(steps=steps, control_interval_s=options.pop("control_interval_s", 1.0), **options)
    return ClusterSimulator(spec, profile, [np.array(x) for x in lengths], opts, mode=mode).run()


FLAT = {1: {1: 1.0, 3: 1.0, 5: 1.0}, 8: {1: 1.0, 3: 1.0, 5: 1.0}}


def test_plain_decoding_of_one_shard_matches_the_hand_schedule():
    # F(batch) = 1 + 0.5 (batch - 1): 10 iterations at batch 4, then 3, 2, 1 as sequences finish.
    profile = make_profile({1: {1: 1.0}, 4: {1: 2.5}}, reward_seconds=2.0, weight_sync_seconds=3.0)
    result = simulate(make_spec(), profile, [[10, 20, 30, 40]])
    step = result.steps[0]
    assert step.rollout_seconds == pytest.approx(10 * 2.5 + 10 * 2.0 + 10 * 1.5 + 10 * 1.0)
    assert step.train_seconds == pytest.approx(100 / 10.0)  # 100 response tokens, no prompt tokens
    assert step.seconds == pytest.approx(70 + 2 + 10 + 3)
    assert step.gpu_seconds == pytest.approx(
        {"rollout": 70.0, "drafter": 0.0, "train": 10.0, "sync": 3.0, "switch": 0.0, "idle": 2.0}
    )
    assert step.generated_tokens == 100


def test_kv_term_and_prompt_prefill_add_to_decode_time():
    # One 4-token response after a 10-token prompt: prefill 10 tokens at 10/s, then contexts 10..13
    # are read at 0.1 s per token on top of 1 s per forward.
    profile = make_profile({1: {1: 1.0}}, kv=0.1, prompt_tokens=10)
    spec = make_spec(**{"algorithm.groupSize": 2, "algorithm.promptsPerStep": 1})
    result = simulate(spec, profile, [[4, 4]])
    # Two sequences: batch 2 costs 1 s (a one-row table is flat) + 0.1 x (20 + 22 + 24 + 26).
    assert result.steps[0].rollout_seconds == pytest.approx(20 / 10.0 + 4 * 1.0 + 0.1 * (20 + 22 + 24 + 26))


def test_a_fixed_acceptance_length_divides_the_decode_iterations():
    # Every round emits 3 tokens; verify width 3 costs what a plain forward costs.
    acceptance = AcceptanceModel(lengths={"2_1_2": {3: 1.0}})
    profile = make_profile(FLAT, acceptance=acceptance)
    lengths = [[30, 31]]
    plain = simulate(make_spec(), profile, lengths).steps[0].rollout_seconds
    spec = make_spec(**{"speculative.mode": "always", "speculative.strategies": ["2_1_2"]})
    fast = simulate(spec, profile, lengths).steps[0]
    assert plain == pytest.approx(31.0)
    assert fast.rollout_seconds == pytest.approx(11.0)  # ceil(31 / 3) rounds
    assert fast.speculative_tokens == fast.generated_tokens == 61


def test_drafting_cost_is_charged_per_round():
    # 2 draft steps at half a forward each: a round costs 2 s and emits 3 tokens.
    acceptance = AcceptanceModel(lengths={"2_1_2": {3: 1.0}})
    profile = make_profile(FLAT, drafter_ratio=0.5, acceptance=acceptance)
    spec = make_spec(**{"speculative.mode": "always", "speculative.strategies": ["2_1_2"]})
    assert simulate(spec, profile, [[30, 30]]).steps[0].rollout_seconds == pytest.approx(20.0)


def test_adaptive_threshold_speculates_only_once_the_batch_is_small():
    # Threshold 1: the two sequences decode plainly until the short one finishes (10 s). Then the
    # bandit tries its arms in order: the strategy for a first chunk of 8 rounds (8 s, 3 tokens
    # each), then plain decoding, its other arm, which finishes the last 6 tokens (6 s).
    acceptance = AcceptanceModel(lengths={"2_1_2": {3: 1.0}})
    profile = make_profile(FLAT, acceptance=acceptance)
    spec = make_spec(**{"speculative.mode": "adaptive", "speculative.batchThreshold": 1,
                        "speculative.strategies": ["2_1_2"]})
    step = simulate(spec, profile, [[10, 40]]).steps[0]
    assert step.rollout_seconds == pytest.approx(10 + 8 + 6)
    assert step.speculative_tokens == 24


def test_a_job_without_a_drafter_does_not_speculate_in_the_simulator_as_in_the_engine():
    # drafter.enabled false: the shards build no drafter, so nothing speculates whatever speculative.mode says.
    acceptance = AcceptanceModel(lengths={"2_1_2": {3: 1.0}})
    profile = make_profile(FLAT, acceptance=acceptance)
    for mode in ("always", "adaptive"):
        spec = make_spec(**{"speculative.mode": mode, "speculative.batchThreshold": 1,
                            "speculative.strategies": ["2_1_2"], "drafter.enabled": False})
        step = simulate(spec, profile, [[30, 31]]).steps[0]
        assert step.speculative_tokens == 0 and step.rollout_seconds == pytest.approx(31.0)
        assert step.batch_threshold is None
        assert tlt.sim.cluster.describe_engine(spec) == "torch (no speculation)"


def test_the_simulated_shard_speculates_with_the_controller_the_engine_gets():
    from tlt.speculative.controller import speculation_controller

    spec = make_spec(**{"speculative.mode": "adaptive", "speculative.batchThreshold": 3,
                        "speculative.strategies": ["2_1_2", "3_2_6"], "speculative.epsilon": 0.3,
                        "speculative.bucketBounds": [1, 4], "speculative.maxVerifyTokensPerBatch": 64})
    sim = tlt.sim.cluster.ClusterSimulator(spec, make_profile(FLAT), [np.array([4, 4])], SimOptions(steps=1))
    simulated = sim.workers["worker-0"].manager
    engine = speculation_controller(spec, 3, seed=0)  # the rollout shard's (seeds differ per shard)
    assert type(simulated) is type(engine)
    assert (simulated.strategies, simulated.switch.threshold, simulated.epsilon, simulated.window,
            simulated.compute_budget, simulated.bandit.buckets) == (
        engine.strategies, engine.switch.threshold, engine.epsilon, engine.window, engine.compute_budget,
        engine.bandit.buckets)


def test_vllm_engine_drafts_its_one_fixed_chain_below_the_threshold_without_a_bandit():
    # engine: vllm drafts one EAGLE chain as deep as the first strategy (2_1_2), fixed at start-up: plain
    # decoding until the short sequence finishes (10 s), then every round is that chain (30 tokens, 3 a
    # round: 10 s). The torch engine's bandit would also try plain decoding and the tree strategy.
    acceptance = AcceptanceModel(lengths={"2_1_2": {3: 1.0}})
    profile = make_profile(FLAT, acceptance=acceptance)
    spec = make_spec(**{"rollout.engine": "vllm", "speculative.mode": "adaptive", "speculative.batchThreshold": 1,
                        "speculative.strategies": ["2_1_2", "3_2_6"]})
    step = simulate(spec, profile, [[10, 40]]).steps[0]
    assert step.rollout_seconds == pytest.approx(10 + 10)
    assert step.speculative_tokens == 30
    assert tlt.sim.cluster.describe_engine(spec) == (
        "vllm (fixed EAGLE chain of 2 tokens, at running batch <= 1; no bandit)")
    torch_spec = make_spec(**{"speculative.mode": "adaptive", "speculative.batchThreshold": 1,
                              "speculative.strategies": ["2_1_2", "3_2_6"]})
    assert tlt.sim.cluster.describe_engine(torch_spec).startswith("torch (adaptive: bandit over 2 strategies")


def test_lending_a_drained_shard_gives_exact_drafter_time():
    # Shard 0 drains at t=10, is lent at the tick at t=10 and trains after a 0.5 s switch until
    # rollout ends at t=30 and training takes every worker back.
    profile = make_profile(FLAT, role_switch_seconds=0.5)
    spec = make_spec(**{"rollout.replicas": 2, "elasticity.lendIdle": True})
    result = simulate(spec, profile, [[10, 10, 30, 30]])
    step = result.steps[0]
    assert step.rollout_seconds == pytest.approx(30.0)
    assert step.gpu_seconds["drafter"] == pytest.approx(30.0 - 10.5)
    assert step.drafter_tokens == pytest.approx(19.5 * 100.0)
    assert step.train_seconds == pytest.approx(80 / (10.0 * 2))
    # Both workers switch back before training: it starts 0.5 s after rollout ends.
    assert step.seconds == pytest.approx(30.0 + 0.5 + 4.0)
    assert result.actions == {"Lend": 2, "Return": 2}


def test_lend_idle_false_means_no_drafter_time_because_the_real_policy_decides():
    profile = make_profile(FLAT, role_switch_seconds=0.5)
    spec = make_spec(**{"rollout.replicas": 2, "elasticity.lendIdle": False})
    result = simulate(spec, profile, [[10, 10, 30, 30]])
    assert result.steps[0].gpu_seconds["drafter"] == 0.0
    assert result.actions == {}
    assert result.steps[0].gpu_seconds["idle"] == pytest.approx(20.0)  # shard 0 waits for shard 1


def test_the_simulator_calls_tlt_elastic_plan_with_live_snapshots(monkeypatch):
    assert tlt.sim.cluster.plan is tlt.elastic.plan
    seen = []

    def spy(spec, workers, progress):
        seen.append((progress.phase, {w.name: (w.shard.running, w.current_role) for w in workers}))
        return tlt.elastic.plan(spec, workers, progress)

    monkeypatch.setattr(tlt.sim.cluster, "plan", spy)
    spec = make_spec(**{"rollout.replicas": 2, "elasticity.lendIdle": True})
    simulate(spec, make_profile(FLAT, role_switch_seconds=0.5), [[10, 10, 30, 30]])
    # At the tick after shard 0 drained, the policy saw it empty and shard 1 still running two.
    assert ("rollout", {"worker-0": (0, "worker"), "worker-1": (2, "worker")}) in seen
    assert {phase for phase, _ in seen} >= {"rollout", "reward", "train", "sync"}


def test_consolidation_moves_the_tail_with_a_re_prefill_and_lends_the_source():
    # At t=5 each shard holds one sequence (threshold 1): shard 1's (5 tokens of context) moves to
    # shard 0, re-prefilled at 10 tokens/s (0.5 s); shard 0 then decodes both for 35 more iterations.
    # The policy lends the emptied source at the next plan (t=6), after a 0.5 s switch.
    profile = make_profile(FLAT, role_switch_seconds=0.5)
    spec = make_spec(**{"rollout.replicas": 2, "elasticity.lendIdle": True,
                        "elasticity.consolidateTail": {"enabled": True, "threshold": 1}})
    result = simulate(spec, profile, [[5, 40, 5, 40]])
    step = result.steps[0]
    assert result.actions["Consolidate"] == 1
    assert step.rollout_seconds == pytest.approx(5 + 0.5 + 35)
    assert step.gpu_seconds["drafter"] == pytest.approx(40.5 - 6.5)
    assert step.generated_tokens == 90


def test_same_seed_same_run_and_baseline_and_tlt_see_the_same_lengths():
    spec = paper_job(gpus=4, prompts_per_shard=2, group_size=4, max_tokens=4096, steps=2)
    profile = qwen7b_h100()
    lengths = sample_lengths(parse_lengths("lognormal:median=500,sigma=1.0"), spec, 2, seed=3)
    again = sample_lengths(parse_lengths("lognormal:median=500,sigma=1.0"), spec, 2, seed=3)
    assert all((a == b).all() for a, b in zip(lengths, again))
    first = compare(spec, profile, lengths, SimOptions(steps=2, seed=3)).as_dict()
    second = compare(spec, profile, lengths, SimOptions(steps=2, seed=3)).as_dict()
    assert first == second
    assert [s["generated_tokens"] for s in first["baseline"]["steps"]] == [int(x.sum()) for x in lengths]
    assert [s["generated_tokens"] for s in first["tlt"]["steps"]] == [int(x.sum()) for x in lengths]
    other = compare(spec, profile, lengths, SimOptions(steps=2, seed=4)).as_dict()
    assert other["tlt"]["steps"] != first["tlt"]["steps"]  # acceptance draws and bandit differ


def test_baseline_spec_turns_off_speculation_and_elasticity():
    spec = paper_job(gpus=4)
    base = baseline_spec(spec)
    assert base.speculative.mode == "off"
    assert not base.elasticity.lend_idle and not base.elasticity.consolidate_tail.enabled
    assert not lending_enabled(base)


def test_a_trained_drafter_makes_rollout_faster_than_the_baseline():
    spec = paper_job(gpus=4, prompts_per_shard=2, group_size=8, max_tokens=8192, steps=3)
    profile = qwen7b_h100()
    lengths = sample_lengths(parse_lengths("lognormal:median=1000,sigma=1.0"), spec, 3, seed=0)
    result = compare(spec, profile, lengths, SimOptions(steps=3))
    alphas = [s.acceptance_alpha for s in result.tlt.steps]
    assert alphas[0] == profile.acceptance.alpha_initial and alphas[-1] > alphas[0]  # it learned on idle GPUs
    assert result.tlt.steps[-1].rollout_seconds < result.baseline.steps[-1].rollout_seconds
    assert result.tlt.gpu_seconds["drafter"] > 0 and result.baseline.gpu_seconds["drafter"] == 0


def test_predicted_rollout_time_of_measured_lengths_follows_the_cost_table():
    profile = make_profile({1: {1: 1.0}, 4: {1: 2.5}})
    seconds = predict_rollout_seconds(profile, [10, 20, 30, 40], make_spec(), mode="baseline")
    assert seconds == pytest.approx(70.0)


def test_acceptance_model_learns_with_tokens_and_forgets_with_policy_updates():
    model = AcceptanceModel(alpha_initial=0.3, alpha_max=0.8, tokens_scale=1000.0, drift=0.5)
    assert model.alpha(0) == pytest.approx(0.3)
    assert model.alpha(1000) == pytest.approx(0.8 - 0.5 * np.exp(-1))
    assert model.after_policy_update(1000) == 500
    from tlt.speculative.adaptive import Strategy

    values, probs = model.distribution(Strategy(3, 1, 3), 1e9)  # chain: truncated geometric in 0.8
    assert list(values) == [1, 2, 3, 4]
    assert probs == pytest.approx([0.2, 0.16, 0.128, 0.512])
    wide = model.mean(Strategy(3, 2, 6), 1e9)
    assert wide > model.mean(Strategy(3, 1, 3), 1e9)  # two candidates per level accept more


def test_disaggregated_trainer_trains_the_drafter_during_rollout_and_returns_for_training():
    # The trainer is lent at the start of rollout (0.5 s switch), returns when training starts at
    # t=10 (0.5 s), trains 20 tokens at 10 tokens/s. The drained shard is lent from t=10 on and,
    # at step 2, switches back before decoding again.
    profile = make_profile(FLAT, role_switch_seconds=0.5)
    spec = make_spec(**{"placement": "disaggregated", "elasticity.lendIdle": True})
    result = simulate(spec, profile, [[10, 10], [10, 10]], steps=2)
    first, second = result.steps
    assert first.rollout_seconds == pytest.approx(10.0)
    assert first.seconds == pytest.approx(10.0 + 0.5 + 2.0)
    assert first.gpu_seconds["drafter"] == pytest.approx((10.0 - 0.5) + (12.5 - 10.5))
    assert first.gpu_seconds["train"] == pytest.approx(2.0)
    assert second.rollout_seconds == pytest.approx(0.5 + 10.0)
    assert result.gpus == 2


def test_dedicated_drafter_pods_start_with_the_job_and_train_the_whole_step():
    profile = make_profile(FLAT, pod_start_seconds=5.0)
    spec = make_spec(**{"drafter.dedicatedReplicas": 1})
    result = simulate(spec, profile, [[10, 10]])
    step = result.steps[0]
    assert step.seconds == pytest.approx(10.0 + 2.0)
    assert step.gpu_seconds["drafter"] == pytest.approx(12.0)
    assert result.gpus == 2 and result.startup_seconds == 5.0
    base = simulate(baseline_spec(spec), profile, [[10, 10]], mode="baseline")
    assert base.gpus == 1 and base.steps[0].gpu_seconds["drafter"] == 0.0


def test_engine_overheads_are_added_per_plain_iteration_and_per_speculative_round():
    costs = CostTable(target_seconds={1: {1: 1.0, 3: 2.0}}, drafter_ratio=0.5,
                      step_overhead_seconds={1: 0.25, 4: 0.5}, round_overhead_seconds={1: 0.75})
    assert costs.iteration_seconds(1, None) == pytest.approx(1.25)
    assert costs.iteration_seconds(2, None) == pytest.approx(1.0 + 0.25 + 0.25 / 3)  # linear between batches
    assert costs.iteration_seconds(9, None) == pytest.approx(1.5)  # the nearest measured batch beyond
    # 2_1_2: verify width 3 (2 s) + 2 draft forwards of width 1 at half a target forward + the round overhead.
    assert costs.iteration_seconds(1, Strategy.parse("2_1_2")) == pytest.approx(2.0 + 2 * 0.5 * 1.0 + 0.75)


def test_kv_reads_padded_to_the_longest_context_and_a_fixed_prefill_per_admission():
    # Two slots; responses of 1, 4 and 2 tokens after 10-token prompts; 0.01 s per forward and
    # 0.001 s per context token read; each admission costs 0.5 s + 10 tokens/s.
    def rollout(reads):
        profile = make_profile({1: {1: 0.01}}, prompt_tokens=10, prefill_fixed_seconds=0.5,
                               costs=CostTable(target_seconds={1: {1: 0.01}}, kv_seconds_per_token=0.001,
                                               attention_reads=reads))
        spec = make_spec(**{"algorithm.groupSize": 3, "algorithm.promptsPerStep": 1})
        spec = spec.model_copy(update={"rollout": spec.rollout.model_copy(update={"max_batch_size": 2})})
        return simulate(spec, profile, [[1, 4, 2]]).steps[0].rollout_seconds

    prefill = (0.5 + 20 / 10.0) + (0.5 + 10 / 10.0)  # two admissions: A and B, then C once A is done
    # Contexts per iteration: (A10, B10), (B11, C10), (B12, C11), (B13).
    assert rollout("longest") == pytest.approx(prefill + 4 * 0.01 + 0.001 * (2 * 10 + 2 * 11 + 2 * 12 + 13))
    assert rollout("sum") == pytest.approx(prefill + 4 * 0.01 + 0.001 * (20 + 21 + 23 + 13))


def test_the_rollout_ends_at_the_coordinators_first_poll_after_the_last_finish():
    profile = make_profile({1: {1: 1.0}, 4: {1: 2.5}})
    assert predict_rollout_seconds(profile, [10, 20, 30, 40], make_spec(), mode="baseline",
                                   poll_seconds=0.3) == pytest.approx(70.2)  # 234 polls of 0.3 s
