"""Adaptive control: threshold hysteresis, bucketed bandit, compute guard, plain decoding as an arm."""

import random

import pytest

from tlt.speculative.adaptive import PLAIN, AdaptiveManager, BucketedBandit, Strategy, ThresholdSwitch

ARMS = [Strategy(2, 1, 2), Strategy(4, 1, 4), Strategy(3, 2, 6)]


def test_bandit_converges_to_the_arm_with_the_best_median_reward():
    true_mean = {ARMS[0]: 100.0, ARMS[1]: 180.0, ARMS[2]: 140.0}
    bandit = BucketedBandit(ARMS, epsilon=0.1, window=16, seed=0)
    noise = random.Random(1)
    picks = []
    for _ in range(300):
        arm = bandit.select(batch=2)
        picks.append(arm)
        # heavy-tailed noise: an occasional huge outlier must not win (median, not mean)
        reward = true_mean[arm] * noise.uniform(0.8, 1.2) + (5000 if noise.random() < 0.03 else 0)
        bandit.record(2, arm, reward)
    late = picks[-100:]
    assert late.count(ARMS[1]) >= 80


def test_bandit_keeps_separate_statistics_per_batch_bucket():
    bandit = BucketedBandit(ARMS[:2], buckets=[1, 4, 16], epsilon=0.0)
    for _ in range(5):
        bandit.record(1, ARMS[0], 10.0)
        bandit.record(1, ARMS[1], 1.0)
        bandit.record(12, ARMS[0], 1.0)
        bandit.record(12, ARMS[1], 10.0)
    assert bandit.select(1) == ARMS[0]
    assert bandit.select(12) == ARMS[1]
    assert bandit.bucket(3) == bandit.bucket(4) != bandit.bucket(5)


def test_threshold_switch_has_hysteresis():
    switch = ThresholdSwitch(threshold=8, hysteresis=2)
    seq = [12, 9, 8, 9, 10, 11, 10, 8]
    assert [switch.update(b) for b in seq] == [False, False, True, True, True, False, False, True]


def test_manager_turns_speculation_off_above_threshold_and_guards_compute():
    manager = AdaptiveManager(ARMS, batch_threshold=4, hysteresis=0, compute_budget=12, epsilon=0.0)
    assert manager.decide(5) is None
    # batch 4: (verify+1)*4 <= 12 only for the 2-token arm
    assert manager.decide(4) == ARMS[0]
    assert set(manager.allowed(1)) == set(ARMS)


@pytest.mark.parametrize("text", ["4_1", "a_b_c", "2_1_9"])
def test_malformed_or_impossible_strategies_are_refused(text):
    with pytest.raises(ValueError, match="strategy"):
        Strategy.parse(text)


def test_plain_decoding_is_an_arm_and_wins_when_speculation_is_slower():
    manager = AdaptiveManager([Strategy(4, 1, 4)], batch_threshold=8, hysteresis=0, epsilon=0.0)
    for _ in range(6):
        arm = manager.decide(2)
        if arm is None:
            manager.record_plain(2, tokens=2, seconds=0.01)  # 200 tokens/s plain
        else:
            manager.record(arm, 2, tokens=4, seconds=0.04)  # 100 tokens/s speculating (weak drafter)
    assert manager.decide(2) is None
    assert manager.bandit.median(2, PLAIN) == 200.0


def test_plain_rewards_count_only_when_the_bandit_chose_plain():
    manager = AdaptiveManager([Strategy(4, 1, 4)], batch_threshold=4, hysteresis=0, epsilon=0.0)
    assert manager.decide(100) is None  # above the threshold: off, not the plain arm
    manager.record_plain(100, tokens=100, seconds=0.01)
    assert manager.bandit.median(100, PLAIN) is None


def test_a_new_drafter_version_is_tried_again_after_losing_to_plain_decoding():
    strategy = Strategy(4, 1, 4)
    manager = AdaptiveManager([strategy], batch_threshold=8, hysteresis=0, epsilon=0.0)
    for _ in range(6):  # the run's first drafter is weak: plain decoding wins the bucket
        arm = manager.decide(2)
        if arm is None:
            manager.record_plain(2, tokens=2, seconds=0.01)  # 200 tokens/s
        else:
            manager.record(arm, 2, tokens=4, seconds=0.04)  # 100 tokens/s
    assert manager.decide(2) is None
    manager.drafter_changed()
    assert manager.decide(2) == strategy  # tried before it competes again
    manager.record(strategy, 2, tokens=12, seconds=0.04)  # 300 tokens/s: the new drafter pays
    assert manager.decide(2) == strategy
    assert manager.bandit.median(2, PLAIN) == 200.0  # plain decoding's measurements still hold


def test_a_new_drafter_version_keeps_the_leading_strategys_rewards_and_re_tries_the_others():
    short, deep = Strategy(4, 1, 4), Strategy(6, 1, 6)
    manager = AdaptiveManager([short, deep], batch_threshold=8, hysteresis=0, epsilon=0.0)
    rewards = {short: 300.0, deep: 500.0, PLAIN: 200.0}  # batch 4: the deep chain leads
    for _ in range(9):
        arm = manager.decide(4)
        manager.record_plain(4, tokens=2, seconds=0.01) if arm is None else manager.record(arm, 4, rewards[arm], 1.0)
    for _ in range(6):  # batch 1: plain decoding leads
        arm = manager.decide(1)
        manager.record_plain(1, tokens=2, seconds=0.01) if arm is None else manager.record(arm, 1, 100.0, 1.0)
    assert manager.decide(4) == deep and manager.decide(1) is None
    manager.drafter_changed()
    # batch 4: the arm that lost is tried once with the new drafter, then competes with the
    # leader's whole window (not with one noisy round of it)
    assert manager.bandit.median(4, deep) == 500.0 and manager.bandit.median(4, short) is None
    assert manager.decide(4) == short
    manager.record(short, 4, 450.0, 1.0)  # better than before, still below the leader's median
    assert manager.decide(4) == deep
    # batch 1: plain decoding led, so every strategy is tried again
    assert manager.decide(1) == short and manager.bandit.median(1, deep) is None
    assert manager.bandit.median(1, PLAIN) == 200.0


def test_a_new_drafter_version_that_accepts_as_much_keeps_every_reward_and_one_that_changed_re_tries():
    """The coordinator pushes a version after every step; re-trying the arms each time cost the
    quickstart 15% of its rollout time with a warmed-up drafter that no longer changed."""
    short, deep = Strategy(4, 1, 4), Strategy(6, 1, 6)
    manager = AdaptiveManager([short, deep], batch_threshold=8, hysteresis=0, epsilon=0.0)

    def rounds(n, accepted):  # n rounds at batch 4; the deep chain leads; `accepted` tokens per row
        for _ in range(n):
            arm = manager.decide(4)
            if arm is None:
                manager.record_plain(4, tokens=4, seconds=0.02)  # 200 tokens/s
            else:
                manager.record(arm, 4, tokens=4 * accepted, seconds=4 * accepted / (500.0 if arm == deep else 300.0))

    rounds(9, 4.0)
    manager.drafter_changed()  # nothing to compare with yet: the losing arm is re-tried
    assert manager.bandit.median(4, short) is None
    rounds(9, 4.0)
    assert manager.bandit.median(4, short) == 300.0
    manager.drafter_changed()  # v1 accepted 4.0 a round; the arms were re-tried at 4.0: all hold
    assert manager.bandit.median(4, short) == 300.0 and manager.bandit.median(4, deep) == 500.0
    rounds(9, 4.3)
    manager.drafter_changed()  # +7.5% since the re-try: within the 10% tolerance
    assert manager.bandit.median(4, short) == 300.0
    rounds(9, 4.5)
    manager.drafter_changed()  # +12.5% since the re-try: the arms may rank otherwise now
    assert manager.bandit.median(4, short) is None and manager.bandit.median(4, deep) == 500.0
    assert manager.decide(4) == short


def test_a_new_threshold_brings_its_default_hysteresis_along():
    # `auto` starts at 1 with a fresh drafter and rises once it is measured: the switch must then
    # hold speculation on a quarter of the new threshold above it, as if it had started there.
    manager = AdaptiveManager([Strategy(4, 1, 4)], batch_threshold=1, epsilon=0.0)
    manager.set_threshold(64)
    assert manager.decide(64) is not None
    assert manager.decide(80) is not None  # 64 + 16: still on
    assert manager.decide(81) is None
    fixed = AdaptiveManager([Strategy(4, 1, 4)], batch_threshold=1, hysteresis=0, epsilon=0.0)
    fixed.set_threshold(64)
    assert fixed.decide(64) is not None and fixed.decide(65) is None  # an explicit hysteresis stays


def _exploring(plain_seconds: float, spec_seconds: float, rounds: int = 4000, epsilon: float = 0.1):
    """Rounds at batch 1, one token each, plain decoding leading: (share of the rounds that
    speculated, time over the time of plain decoding alone)."""
    manager = AdaptiveManager([Strategy(8, 1, 8)], batch_threshold=4, hysteresis=0, epsilon=epsilon, seed=3)
    spent = speculated = 0
    for _ in range(rounds):
        arm = manager.decide(1)
        if arm is None:
            manager.record_plain(1, tokens=1, seconds=plain_seconds)
            spent += plain_seconds
        else:
            manager.record(arm, 1, tokens=1, seconds=spec_seconds)
            spent += spec_seconds
            speculated += 1
    return speculated / rounds, spent / (rounds * plain_seconds)


def test_exploring_an_arm_far_slower_than_the_leader_costs_less_than_epsilon_of_the_time():
    # A young drafter's 8-token chain that accepts nothing: 4x a plain round for the same token.
    # Uniform exploration (half of epsilon's rounds on it) would cost 0.05 x 3 = 15% more time.
    share, time = _exploring(plain_seconds=0.01, spec_seconds=0.04)
    assert share < 0.025
    assert time < 1.1


def test_an_arm_close_to_the_leader_is_still_explored_about_as_often_as_epsilon_says():
    # 10% slower than plain decoding: tried nearly as often as a uniform choice would (0.05 x 0.9),
    # so a drafter that overtakes plain decoding is noticed
    share, _ = _exploring(plain_seconds=0.01, spec_seconds=0.011)
    assert 0.03 < share < 0.06
