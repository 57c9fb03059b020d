"""GRPO/DAPO math against values worked out by hand in each test."""

import math

import pytest
import torch

from tlt.trainer import (
    aggregate,
    aggregation_weight,
    dynamic_sampling,
    group_advantages,
    k3_kl,
    overlong_penalty,
    ppo_clip_loss,
    step_advantages,
)
from tlt.api.model import AlgorithmSpec

# ------------------------------------------------------------------ advantages


def test_group_advantage_is_reward_minus_group_mean_over_sample_std():
    # group 1: rewards 1,0,0: mean 1/3; deviations 2/3,-1/3,-1/3; sum of squares 6/9; /(3-1) -> var 1/3
    # group 2: rewards 3,1,2: mean 2; deviations 1,-1,0; var (1+1)/2 = 1
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 3.0, 1.0, 2.0]), group_size=3)
    s = math.sqrt(1 / 3)
    expected = [(2 / 3) / s, (-1 / 3) / s, (-1 / 3) / s, 1.0, -1.0, 0.0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-5)


def test_group_with_all_equal_rewards_gets_zero_advantage():
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]), group_size=3)
    assert adv[:6].tolist() == [0.0] * 6
    assert adv[6:].abs().sum() > 0


def test_group_advantages_refuse_a_batch_that_does_not_split_into_groups():
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(5), group_size=2)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(4), group_size=1)


# ------------------------------------------------------------------ overlong penalty


def test_overlong_penalty_is_zero_before_the_buffer_and_ramps_linearly_to_minus_penalty_at_the_limit():
    # L = 10, C = 4: the ramp starts after 6 tokens; 7 -> -0.5*1/4, 9 -> -0.5*3/4, 10 -> -0.5
    got = overlong_penalty(torch.tensor([3, 6, 7, 9, 10, 12]), max_response_tokens=10, buffer_tokens=4, penalty=0.5)
    assert got.tolist() == pytest.approx([0.0, 0.0, -0.125, -0.375, -0.5, -0.5])


def test_overlong_penalty_refuses_a_buffer_longer_than_the_limit():
    with pytest.raises(ValueError, match="buffer_tokens"):
        overlong_penalty(torch.tensor([1]), max_response_tokens=4, buffer_tokens=5)


def test_step_advantages_apply_the_overlong_penalty_before_normalizing_within_groups():
    algo = AlgorithmSpec(name="dapo", group_size=2, max_response_tokens=10,
                         overlong_penalty={"enabled": True, "buffer_tokens": 4, "penalty": 1.0})
    # group 1: both correct, the first ran to the limit: shaped rewards 0 and 1 -> -1/sqrt(2), +1/sqrt(2)
    # group 2: both wrong and short: shaped 0, 0 -> no advantage
    adv = step_advantages(torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([10, 4, 4, 5]), algo)
    assert adv.tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0, 0.0], abs=1e-5)
    plain = AlgorithmSpec(name="grpo", group_size=2, max_response_tokens=10)
    assert step_advantages(torch.tensor([1.0, 1.0]), torch.tensor([10, 4]), plain).tolist() == [0.0, 0.0]


# ------------------------------------------------------------------ dynamic sampling


def test_dynamic_sampling_keeps_mixed_groups_and_asks_for_more_until_the_target_is_met():
    first_round = [[1, 1], [0, 1], [0, 0], [1, 0], [0.5, 0.5, 0.5]]
    d = dynamic_sampling(first_round, target_groups=3, extra_rounds_done=0, max_rounds=2)
    assert (d.keep, d.sample_more, d.missing) == ([1, 3], True, 1)

    second_round = first_round + [[1, 1], [0.0, 0.25], [1, 0]]
    d = dynamic_sampling(second_round, target_groups=3, extra_rounds_done=1, max_rounds=2)
    # the earliest three mixed groups; the surplus one (index 7) is dropped
    assert (d.keep, d.sample_more, d.missing) == ([1, 3, 6], False, 0)


def test_dynamic_sampling_stops_after_max_rounds_with_the_mixed_groups_it_has():
    groups = [[1, 1], [0, 1], [0, 0]]
    d = dynamic_sampling(groups, target_groups=2, extra_rounds_done=2, max_rounds=2)
    assert (d.keep, d.sample_more, d.missing) == ([1], False, 1)
    d = dynamic_sampling([[0, 0], [1, 1]], target_groups=2, extra_rounds_done=2, max_rounds=2)
    assert (d.keep, d.sample_more, d.missing) == ([], False, 2)


def test_a_sampling_loop_driven_by_dynamic_sampling_runs_at_most_one_plus_max_rounds_rounds():
    # Every round samples 2 groups, one uniform and one mixed: the target of 5 is out of reach in 3 rounds.
    groups, rounds = [], 0
    while True:
        groups += [[1.0, 1.0], [0.0, 1.0]]
        d = dynamic_sampling(groups, target_groups=5, extra_rounds_done=rounds, max_rounds=2)
        if not d.sample_more:
            break
        rounds += 1
    assert rounds == 2
    assert d.keep == [1, 3, 5]


# ------------------------------------------------------------------ clipped surrogate


def test_clipped_surrogate_values_and_zero_gradient_on_tokens_clipped_in_the_advantage_direction():
    # ratios 1.5, 0.5, 1.1 for a sequence with A = +1 and one with A = -2; clip range [0.8, 1.28]
    ratios = torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.1]])
    logp = ratios.log().requires_grad_(True)
    old = torch.zeros(2, 3)
    loss, clipped = ppo_clip_loss(logp, old, torch.tensor([1.0, -2.0]), clip_low=0.2, clip_high=0.28)
    # A=+1: max(-r, -clip(r)): 1.5 -> max(-1.5, -1.28) = -1.28 (clipped); 0.5 -> max(-0.5, -0.8) = -0.5; 1.1 -> -1.1
    # A=-2: max(2r, 2clip(r)):  1.5 -> max(3.0, 2.56) = 3.0; 0.5 -> max(1.0, 1.6) = 1.6 (clipped); 1.1 -> 2.2
    assert loss.tolist()[0] == pytest.approx([-1.28, -0.5, -1.1])
    assert loss.tolist()[1] == pytest.approx([3.0, 1.6, 2.2])
    assert clipped.tolist() == [[True, False, False], [False, True, False]]
    loss.sum().backward()
    # d(-A r)/d logp = -A r where unclipped, 0 where the clipped branch is active
    assert logp.grad.tolist()[0] == pytest.approx([0.0, -0.5, -1.1])
    assert logp.grad.tolist()[1] == pytest.approx([3.0, 0.0, 2.2])


def test_clip_higher_leaves_a_positive_token_trainable_that_the_symmetric_clip_freezes():
    logp = torch.tensor([[math.log(1.25)]], requires_grad=True)
    old, adv = torch.zeros(1, 1), torch.tensor([1.0])
    grpo, grpo_clipped = ppo_clip_loss(logp, old, adv, clip_low=0.2, clip_high=0.2)
    (g_grpo,) = torch.autograd.grad(grpo.sum(), logp)
    dapo, dapo_clipped = ppo_clip_loss(logp, old, adv, clip_low=0.2, clip_high=0.28)
    (g_dapo,) = torch.autograd.grad(dapo.sum(), logp)
    assert grpo.item() == pytest.approx(-1.2) and grpo_clipped.item()
    assert dapo.item() == pytest.approx(-1.25) and not dapo_clipped.item()
    assert g_grpo.item() == 0.0
    assert g_dapo.item() == pytest.approx(-1.25)


# ------------------------------------------------------------------ KL


def test_k3_kl_matches_its_formula_and_vanishes_where_policy_and_reference_agree():
    logp = torch.tensor([math.log(0.5), math.log(0.2), math.log(0.3)])
    ref = torch.tensor([math.log(0.25), math.log(0.2), math.log(0.6)])
    # delta = ref - logp: log(1/2) -> 1/2 + ln 2 - 1; 0 -> 0; log 2 -> 2 - ln 2 - 1
    expected = [0.5 + math.log(2) - 1, 0.0, 2 - math.log(2) - 1]
    assert k3_kl(logp, ref).tolist() == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------ aggregation

LOSS = torch.tensor([[1.0, 2.0, 3.0, 1000.0], [10.0, 1000.0, 1000.0, 1000.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize("mode, expected", [
    ("token-mean", (1 + 2 + 3 + 10) / 4),  # every token weighs the same
    ("seq-mean-token-mean", ((1 + 2 + 3) / 3 + 10 / 1) / 2),  # every sequence weighs the same
    ("seq-mean-token-sum", ((1 + 2 + 3) + 10) / 2),
])
def test_loss_aggregation_over_the_response_mask(mode, expected):
    assert aggregate(LOSS, MASK, mode).item() == pytest.approx(expected)


def test_unknown_aggregation_is_refused():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(LOSS, MASK, "mean")


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_weighted_micro_batches_add_up_to_the_mini_batch_aggregate(mode):
    gen = torch.Generator().manual_seed(0)
    loss = torch.randn(5, 7, generator=gen)
    mask = (torch.rand(5, 7, generator=gen) > 0.4).float()
    mask[3] = 0.0  # a sequence with no trained tokens
    whole = aggregate(loss, mask, mode)
    parts = sum(aggregate(loss[s], mask[s], mode) * aggregation_weight(mask[s], mode, 5, float(mask.sum()))
                for s in (slice(0, 2), slice(2, 3), slice(3, 5)))
    assert parts.item() == pytest.approx(whole.item(), abs=1e-6)
