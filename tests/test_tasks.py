"""The built-in arith task: long-tailed lengths, disjoint deterministic splits, an exact verifier."""

import random
import re

import pytest

from tlt.eval.evaluate import percentile
from tlt.tasks import get_task, task_names
from tlt.tasks.arith import parse_prompt, render_trace
from tlt.tasks.tokenizer import CharCodec, build_tokenizer

LINE = re.compile(r"(\d\d):(\d\d)\+(\d)=(\d\d)")


def response_tokens(problem):
    return len(CharCodec().encode(problem.trace)) + 1  # + <eos>


def test_response_lengths_have_a_long_tail_within_the_token_budget():
    task = get_task("arith", max_response_tokens=512)
    lengths = [response_tokens(p) for p in task.problems("train", 2000, seed=0)]
    median = percentile(lengths, 50)
    assert 15 <= median <= 80, "the median response should be tens of tokens"
    assert max(lengths) >= 10 * median
    assert max(lengths) <= 512
    assert percentile(lengths, 90) >= 3 * median


def test_a_smaller_token_budget_caps_every_response():
    task = get_task("arith", max_response_tokens=100)
    assert max(response_tokens(p) for p in task.problems("train", 500, seed=1)) <= 100


def test_a_budget_too_small_for_one_step_is_rejected_with_the_minimum():
    with pytest.raises(ValueError, match="max_response_tokens=10.*at least 14"):
        get_task("arith", max_response_tokens=10)


def test_train_and_heldout_never_share_a_problem():
    task = get_task("arith")
    train = {p.prompt for seed in range(3) for p in task.problems("train", 3000, seed=seed)}
    heldout = {p.prompt for p in task.problems("heldout", 1000, seed=0)}
    assert train and heldout and not train & heldout


def test_problems_are_the_same_for_a_seed_and_differ_across_seeds():
    task = get_task("arith")
    assert task.problems("heldout", 50, seed=7) == task.problems("heldout", 50, seed=7)
    assert task.problems("heldout", 50, seed=7) != task.problems("heldout", 50, seed=8)


def test_unknown_task_and_split_name_the_choices():
    assert "arith" in task_names()
    with pytest.raises(KeyError, match="known tasks are .*arith"):
        get_task("sudoku")
    with pytest.raises(ValueError, match="train, heldout"):
        get_task("arith").problems("test", 1)


def test_reference_trace_follows_the_parity_rule_to_the_answer():
    assert render_trace(42, 7, 5, 3) == "03:42+7=49\n02:49+5=54\n01:54+7=61\nans=61"
    assert render_trace(97, 2, 5, 1) == "01:97+5=02\nans=02"  # wraps modulo 100


@pytest.mark.parametrize("response, reward", [
    ("02:42+7=49\n01:49+5=54\n00:54+7=61\nans=61", 1.0),
    ("ans=61", 1.0),                 # outcome reward: the final answer is what counts
    ("...\nans=61\n", 1.0),          # trailing whitespace is fine
    ("...\nans=62", 0.0),            # off by one
    ("...\nans=16", 0.0),            # digits swapped
    ("...\nans=61x", 0.0),           # junk after the answer
    ("...\nans=61\n00:61+5=66", 0.0),  # answer not at the end
    ("...\nans=", 0.0),
    ("...\n00:54+7=61", 0.0),        # truncated before the answer line
    ("...\nans 61", 0.0),
    ("...\nans=161", 0.0),
    ("", 0.0),
])
def test_verifier_accepts_only_the_exact_final_answer(response, reward):
    task = get_task("arith")
    assert task.verify("42 e+7 o+5 n=03\n", response, "61") == reward


def test_every_reference_trace_verifies_and_parses():
    task = get_task("arith")
    for problem in task.problems("heldout", 300, seed=3):
        assert task.verify(problem.prompt, problem.trace, problem.answer) == 1.0
        start, even_inc, odd_inc, steps = parse_prompt(problem.prompt)
        assert render_trace(start, even_inc, odd_inc, steps) == problem.trace


def test_noisy_traces_keep_the_format_and_only_slip_in_results():
    task = get_task("arith")
    rng = random.Random(0)
    problems = task.problems("train", 400, seed=2)
    correct = 0
    for problem in problems:
        trace = task.noisy_trace(problem, rng, error_rate=0.2)
        start, even_inc, odd_inc, steps = parse_prompt(problem.prompt)
        lines = trace.split("\n")
        assert len(lines) == steps + 1
        value = start
        for left, line in zip(range(steps, 0, -1), lines):
            k, v, inc, w = map(int, LINE.fullmatch(line).groups())
            assert (k, v) == (left, value)
            assert inc == (even_inc if v % 2 == 0 else odd_inc)
            value = w
        assert lines[-1] == f"ans={value:02d}"
        correct += task.verify(problem.prompt, trace, problem.answer)
    # Some slips, but not all: the supervised data teaches a fallible model.
    assert 0.2 < correct / len(problems) < 0.9
    assert task.noisy_trace(problems[0], rng, 0.0) == problems[0].trace


def test_tokenizer_is_characters_and_digit_pairs_with_bos_first():
    tokenizer = build_tokenizer()
    text = "42 e+7 o+5 n=03\n"
    ids = tokenizer(text)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces == ["<bos>", "42", " ", "e", "+", "7", " ", "o", "+", "5", " ", "n", "=", "03", "\n"]
    assert ids[1:] == CharCodec().encode(text)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.decode(tokenizer("123 é")["input_ids"], skip_special_tokens=True) == "123 "


def test_sample_command_prints_problems_traces_and_the_length_tail(capsys):
    from tlt.cli import main

    assert main(["task", "sample", "--count", "2", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    first = get_task("arith").problems("train", 1, seed=4)[0]
    assert first.prompt in out and first.trace in out
    assert "reward 1.0" in out and "p50" in out and "max" in out


def test_sample_command_can_show_the_slips_of_the_bootstrap_data(capsys):
    import json

    from tlt.cli import main

    assert main(["task", "sample", "--count", "40", "--error-rate", "0.5", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 40
    assert {row["reward"] for row in rows} == {0.0, 1.0}


@pytest.mark.parametrize("args, message", [
    (["task", "sample", "--count", "0"], "--count must be at least 1"),
    (["task", "sample", "--task", "chess"], "unknown task 'chess'"),
    (["task", "sample", "--max-response-tokens", "5"], "at least 14"),
    (["task", "sample", "--error-rate", "2"], "--error-rate must be between 0 and 1"),
    (["task", "bootstrap", "--name", "huge"], "unknown base model"),
    (["task", "bootstrap", "--steps", "0"], "--steps must be at least 1"),
    (["task", "bootstrap", "--threads", "0"], "--threads must be at least 1"),
])
def test_task_commands_explain_bad_input(capsys, args, message):
    from tlt.cli import main

    assert main(args) == 1
    assert message in capsys.readouterr().err


def test_bootstrap_command_prints_the_model_folder(tmp_path, monkeypatch, capsys):
    from tlt.cli import main

    monkeypatch.setenv("TLT_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["task", "bootstrap", "--name", "micro-arith", "--steps", "2", "--threads", "1",
                 "--out", str(tmp_path / "m")]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(tmp_path / "m")
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()
