"""Reward functions: math answer normalization, exact match, plugins and their errors, the pool."""

import math
import threading
import textwrap

import pytest

from tlt.rewards import (RewardError, RewardPool, extract_answer, get_reward, math_reward,
                         normalize)


@pytest.mark.parametrize("response, answer", [
    (r"so the answer is \boxed{\frac{3}{4}}", "0.75"),
    (r"\boxed{\dfrac{3}{4}}", "3/4"),
    (r"\boxed{\dfrac34}", "0.75"),
    (r"\boxed{\tfrac{1}{2}}", ".5"),
    ("so she has 3/4 of the cake", "0.75"),
    ("The total is 1,234,567 apples.", "1234567"),
    (r"\boxed{\$12.50}", "12.5"),
    ("It costs $12.50.", "12.50"),
    ("The answer is 50%", "50"),
    (r"\boxed{50\%}", "50"),
    ("x = 5.0", "5"),
    ("5.00", "5"),
    ("The temperature fell to -3 degrees", "-3"),
    (r"\boxed{-\frac{1}{2}}", "-0.5"),
    ("we get \u22127", "-7"),
    (r"\boxed{ 1 2 }", "12"),
    ("He walked 12 miles.", "12"),
    (r"\boxed{10^\circ}", "10"),
    (r"\boxed{\text{(B)}}", "(B)"),
    (r"\boxed{3\sqrt{2}}", r"3\sqrt{2}"),
    (r"first \boxed{1}, then \boxed{2}", "2"),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
    (r"\boxed{x = 5}", "5"),
    (r"\boxed{5 \text{ cm}}", "5"),
])
def test_math_reward_accepts_equivalent_final_answers(response, answer):
    assert math_reward("q", response, answer) == 1.0


@pytest.mark.parametrize("response, answer", [
    (r"\boxed{\frac{3}{4}}", "3/5"),
    ("5.01", "5"),
    ("3", "-3"),
    ("12,34", "1234"),          # not a thousands separator
    ("the answer is 7, not 8", "7"),  # the last number counts
    (r"\boxed{1}, then \boxed{2}", "1"),
    ("no number here", "4"),
    (r"\boxed{3\sqrt{2}}", "3"),
    ("50%", "0.5"),             # a percentage keeps its value
])
def test_math_reward_rejects_near_misses(response, answer):
    assert math_reward("q", response, answer) == 0.0


def test_extraction_balances_braces_and_falls_back_to_the_last_number():
    assert extract_answer(r"\boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert extract_answer("12 apples and 3/4 pies") == "3/4"
    assert extract_answer("nothing") is None
    assert normalize(r"\text{ 1,000 dollars}") == "1000"


def test_exact_reward_ignores_only_surrounding_whitespace():
    exact = get_reward("exact")
    assert exact("p", "  Paris\n", "Paris") == 1.0
    assert exact("p", "paris", "Paris") == 0.0


def test_task_reward_uses_the_arith_verifier():
    task = get_reward("task")
    assert task("42 e+7 o+5 n=03\n", "ans=61", "61") == 1.0
    assert task("42 e+7 o+5 n=03\n", "ans=60", "61", task="arith") == 0.0


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        LENGTH_LIMIT = 3
        def short(prompt, response, answer, **meta):
            return 1.0 if len(response) <= LENGTH_LIMIT else 0.0
        def as_bool(prompt, response, answer, **meta):
            return response == answer
        def text(prompt, response, answer, **meta):
            return "good"
        def nothing(prompt, response, answer, **meta):
            return None
        def nan(prompt, response, answer, **meta):
            return float("nan")
        class Scorer:
            def grade(self, prompt, response, answer, **meta):
                return 0.5
        scorer = Scorer()
    """))
    (tmp_path / "broken_rewards.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_plugin_is_loaded_from_module_and_function(plugin_dir):
    assert get_reward("my_rewards:short")("p", "abc", "x") == 1.0
    assert get_reward("my_rewards:short")("p", "abcd", "x") == 0.0
    assert get_reward("my_rewards:as_bool")("p", "a", "a") == 1.0
    assert get_reward("my_rewards:scorer.grade")("p", "a", "a") == 0.5


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("broken_rewards:f", "cannot import module 'broken_rewards'.*no_such_dependency_xyz"),
    ("my_rewards:missing", "has no attribute 'missing'"),
    ("my_rewards:LENGTH_LIMIT", "is a int, not a function"),
    ("my_rewards:", "must be written as 'package.module:function'"),
    ("bleu", "unknown reward 'bleu'.*module:function"),
])
def test_plugin_that_cannot_be_loaded_fails_with_the_fix(plugin_dir, spec, message):
    with pytest.raises(RewardError, match=message):
        get_reward(spec)


@pytest.mark.parametrize("name, shown", [("text", "'good'"), ("nothing", "None"), ("nan", "NaN")])
def test_plugin_returning_a_non_number_is_reported(plugin_dir, name, shown):
    reward = get_reward(f"my_rewards:{name}")
    with pytest.raises(RewardError, match=f"my_rewards:{name}.*{shown}.*must return a number"):
        reward("p", "r", "a")


def test_pool_scores_like_direct_calls_keyed_by_submission():
    responses = {i: rf"\boxed{{{i}}}" for i in range(20)}
    with RewardPool("math", workers=2) as pool:
        for key, response in responses.items():
            pool.submit(key, "q", response, str(key // 2 * 2))
        got = pool.gather()
    assert got == {k: math_reward("q", r, str(k // 2 * 2)) for k, r in responses.items()}
    assert sum(got.values()) == 10


def test_pool_submit_returns_while_scoring_waits_so_it_overlaps_generation(plugin_dir):
    (plugin_dir / "gated_rewards.py").write_text(textwrap.dedent("""
        import threading
        gate = threading.Event()
        def gated(prompt, response, answer, **meta):
            assert gate.wait(timeout=30), "gate never opened"
            return 1.0
    """))
    import gated_rewards

    with RewardPool("gated_rewards:gated", workers=1) as pool:
        future = pool.submit("first", "p", "r", "a")
        assert not future.done()  # scoring is still blocked, yet submit has returned
        gated_rewards.gate.set()
        assert pool.gather() == {"first": 1.0}


def test_pool_reports_which_response_a_reward_failed_on(plugin_dir):
    (plugin_dir / "raising_rewards.py").write_text(
        "def boom(prompt, response, answer, **meta):\n    raise KeyError(response)\n")
    with RewardPool("raising_rewards:boom", workers=2) as pool:
        pool.submit(("group", 3), "p", "bad response", "a")
        with pytest.raises(RewardError, match=r"failed on response \('group', 3\).*KeyError"):
            pool.gather()


def test_pool_rejects_a_bad_reward_before_any_work(plugin_dir):
    with pytest.raises(RewardError, match="has no attribute"):
        RewardPool("my_rewards:missing")


def test_process_pool_scores_in_other_processes():
    with RewardPool("math", workers=1, kind="process") as pool:
        pool.submit("a", "q", r"\boxed{0.5}", "1/2")
        pool.submit("b", "q", "42", "41")
        assert pool.gather() == {"a": 1.0, "b": 0.0}


def test_a_reward_running_past_the_timeout_scores_zero_is_logged_and_frees_its_worker(plugin_dir, caplog):
    (plugin_dir / "slow_rewards.py").write_text(textwrap.dedent("""
        import threading
        release = threading.Event()
        def slow(prompt, response, answer, **meta):
            if response == "hang":
                release.wait(timeout=60)
            return 1.0
    """))
    import slow_rewards

    try:
        with RewardPool("slow_rewards:slow", workers=1, timeout=0.2) as pool:
            pool.submit("stuck", "p", "hang", "a")
            pool.submit("fine", "p", "ok", "a")  # queued behind the stuck one on the only worker
            with caplog.at_level("WARNING", logger="tlt.rewards"):
                got = pool.gather()
            assert got == {"stuck": 0.0, "fine": 1.0}
            assert pool.timed_out == ["stuck"]
            assert "ran longer than 0.2s on response 'stuck'" in caplog.text
            assert "timeoutSeconds" in caplog.text
    finally:
        slow_rewards.release.set()


def test_a_reward_within_the_timeout_keeps_its_score_and_errors():
    with RewardPool("math", workers=2, timeout=30) as pool:
        pool.submit("a", "q", r"\boxed{0.5}", "1/2")
        pool.submit("b", "q", "42", "41")
        assert pool.gather() == {"a": 1.0, "b": 0.0}
        assert pool.timed_out == []
    with pytest.raises(ValueError, match="timeout must be > 0"):
        RewardPool("math", timeout=0)


def test_a_failing_reward_under_a_timeout_still_names_the_response(plugin_dir):
    (plugin_dir / "raising_timed.py").write_text(
        "def boom(prompt, response, answer, **meta):\n    raise KeyError(response)\n")
    with RewardPool("raising_timed:boom", workers=1, timeout=30) as pool:
        pool.submit(("group", 1), "p", "bad", "a")
        with pytest.raises(RewardError, match=r"failed on response \('group', 1\).*KeyError"):
            pool.gather()
