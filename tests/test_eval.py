"""Evaluation: batched generation, scoring and length statistics, and the `tlt eval` command."""

import json

import pytest
import torch

from tlt.cli import main
from tlt.eval import evaluate, generate, load_jsonl, load_policy, percentile, task_items
from tlt.eval.evaluate import encode_prompts
from tlt.rewards import get_reward
from tlt.tasks.tokenizer import CharCodec


def test_percentiles_interpolate_between_ranks():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 90) == 5
    assert percentile([10, 20, 30, 40, 50, 60, 70, 80, 90, 100], 90) == pytest.approx(91)
    assert percentile([3, 1, 2], 100) == 3


def test_batched_greedy_equals_one_prompt_at_a_time(micro_model):
    model, _ = load_policy(micro_model)
    codec = CharCodec()
    prompts = [[codec.bos_id] + codec.encode(text) for text in ("7", "12 e+3 o+5 n=04\n", "ab cd")]
    batched = generate(model, prompts, max_tokens=12, temperature=0.0)
    alone = [generate(model, [p], max_tokens=12, temperature=0.0)[0] for p in prompts]
    assert batched == alone
    assert all(len(out) == 12 for out in batched)


def test_sampling_is_reproducible_for_a_seed_whatever_the_batch_size(micro_model):
    model, _ = load_policy(micro_model)
    prompts = [[1, 20, 21], [1, 22]] * 3
    first = generate(model, prompts, max_tokens=10, temperature=1.0, seed=5)
    assert first == generate(model, prompts, max_tokens=10, temperature=1.0, seed=5, batch_size=1)
    assert first != generate(model, prompts, max_tokens=10, temperature=1.0, seed=6)


def test_rows_stop_at_their_first_stop_token_and_keep_it(micro_model):
    model, _ = load_policy(micro_model)
    prompts = [[1, 20 + i] for i in range(8)]
    free = generate(model, prompts, max_tokens=15, temperature=1.0, seed=3)
    stop = free[0][4]  # a token some row produces
    stopped = generate(model, prompts, max_tokens=15, temperature=1.0, seed=3, stop_ids=[stop])
    for full, cut in zip(free, stopped):
        if stop in full:
            assert cut == full[: full.index(stop) + 1]
        else:
            assert cut == full
    assert stopped[0] == free[0][:5]


def test_top_p_near_zero_is_greedy(micro_model):
    model, _ = load_policy(micro_model)
    prompts = [[1, 30], [1, 40, 41]]
    greedy = generate(model, prompts, max_tokens=8, temperature=0.0)
    assert generate(model, prompts, max_tokens=8, temperature=1.0, top_p=1e-6, seed=9) == greedy


def test_evaluate_scores_responses_and_reports_the_length_tail(micro_model):
    items = task_items("arith", 12, seed=1)
    codec = CharCodec()
    references = {i.prompt: p.trace for i, p in zip(items, _problems(12, 1))}

    def perfect_then_wrong(model, prompt_ids, max_tokens, **kw):
        # A stand-in engine: the reference trace for even rows, a wrong answer for odd rows.
        outs = []
        for row, ids in enumerate(prompt_ids):
            text = references[codec.decode(ids)]
            if row % 2:
                text = "ans=xx"
            outs.append(codec.encode(text) + [codec.eos_id])
        return outs

    summary, responses = evaluate(micro_model, items, get_reward("task"),
                                  generate_fn=perfect_then_wrong, progress=False)
    lengths = [len(codec.encode(references[i.prompt])) + 1 if row % 2 == 0 else 7
               for row, i in enumerate(items)]
    assert summary.accuracy == 0.5
    assert summary.max_length == max(lengths)
    assert summary.p50_length == percentile(lengths, 50)
    assert summary.mean_length == pytest.approx(sum(lengths) / len(lengths))
    assert summary.truncated == 0
    assert responses[0] == references[items[0].prompt]


def test_score_counts_responses_the_reward_calls_correct_and_the_truncated_ones():
    # What `tlt eval` and a run's held-out evaluation report for the same responses.
    from tlt.eval import EvalItem, score

    items = [EvalItem(f"p{i}", "a", {}) for i in range(3)]
    rewards = {"right": 1.0, "close": 0.4, "wrong": 0.0}
    summary = score(items, ["right", "close", "wrong"], [[5, 6, 0], [5, 0], [5, 6, 7, 8]],
                    lambda prompt, response, answer: rewards[response], stop_ids=[0], temperature=0.0, max_tokens=4)
    assert summary.accuracy == pytest.approx(1 / 3)
    assert (summary.max_length, summary.mean_length, summary.p90_length) == (4, 3.0, percentile([3, 2, 4], 90))
    assert summary.truncated == 1
    assert summary.solved == [True, False, False] and "solved" not in summary.as_dict()


def test_which_prompts_were_solved_round_trips_through_hex():
    from tlt.eval.evaluate import pack_solved, unpack_solved

    for solved in ([True], [False] * 3, [True, False, True, True, False] * 103):
        packed = pack_solved(solved)
        assert all(c in "0123456789abcdef" for c in packed)
        assert unpack_solved(packed, len(solved)) == solved
    assert len(pack_solved([True] * 512)) == 128


@pytest.mark.parametrize("gained, lost, p", [
    (4, 8, 2 * (1 + 12 + 66 + 220 + 495) / 4096),  # a net loss of 4 prompts among 12 flips: chance
    (0, 10, 2 / 1024),  # ten lost, none gained: not chance
    (5, 5, 1.0),
    (0, 0, 1.0),  # nothing moved
])
def test_paired_change_counts_flips_and_gives_the_exact_sign_test(gained, lost, p):
    from tlt.eval.evaluate import paired_change

    before = [True] * lost + [False] * gained + [True] * 20 + [False] * 7
    after = [False] * lost + [True] * gained + [True] * 20 + [False] * 7
    change = paired_change(before, after)
    assert (change["gained"], change["lost"]) == (gained, lost)
    assert change["p_value"] == pytest.approx(p)
    assert paired_change(after, before)["p_value"] == pytest.approx(p)  # symmetric


def test_paired_change_refuses_evaluations_of_different_prompts():
    from tlt.eval.evaluate import paired_change

    with pytest.raises(ValueError, match="same prompts: 2 vs 3"):
        paired_change([True, False], [True, False, True])


def _problems(count, seed):
    from tlt.tasks import get_task
    return get_task("arith").problems("heldout", count, seed=seed)


def test_chat_template_is_applied_when_the_tokenizer_has_one(micro_model):
    _, tokenizer = load_policy(micro_model)
    assert encode_prompts(tokenizer, ["hi"], chat_template=True) == [tokenizer("hi")["input_ids"]]
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}")
    templated = encode_prompts(tokenizer, ["hi"], chat_template=True)[0]
    assert tokenizer.decode(templated, skip_special_tokens=True) == "[user] hi\n[assistant] "
    assert encode_prompts(tokenizer, ["hi"], chat_template=False) == [tokenizer("hi")["input_ids"]]


def test_jsonl_rows_need_prompt_and_answer(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "1+1?", "answer": 2, "level": 1}\n\n{"prompt": "2+2?", "answer": "4"}\n')
    items = load_jsonl(good)
    assert [(i.prompt, i.answer) for i in items] == [("1+1?", "2"), ("2+2?", "4")]
    assert items[0].meta == {"level": 1}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1?", "answer": 2}\n{"question": "x", "answer": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'prompt' \(fields present: answer, question\)"):
        load_jsonl(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(ValueError, match="broken.jsonl:1: not valid JSON"):
        load_jsonl(broken)


def test_eval_command_prints_accuracy_and_lengths_as_json(micro_model, capsys):
    code = main(["eval", "--model", str(micro_model), "--task", "arith", "--num-prompts", "6",
                 "--max-tokens", "20", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_prompts"] == 6 and 0.0 <= result["accuracy"] <= 1.0
    assert 1 <= result["p50_length"] <= result["p90_length"] <= result["max_length"] <= 20


def test_eval_command_on_a_dataset_uses_the_math_verifier(micro_model, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "1+1", "solution": "2"}\n')
    code = main(["eval", "--model", str(micro_model), "--data", str(data), "--max-tokens", "4",
                 "--prompt-field", "question", "--answer-field", "solution", "--temperature", "0"])
    assert code == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "p90" in out


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent", "--task", "arith"], "not a Hugging Face model folder"),
    (["--task", "sudoku"], "unknown task 'sudoku'"),
    (["--data", "/nonexistent.jsonl"], "no such file"),
    (["--task", "arith", "--max-tokens", "0"], "--max-tokens must be at least 1"),
    (["--task", "arith", "--reward", "nomod_xyz:f"], "cannot import module"),
])
def test_eval_command_explains_bad_input(micro_model, capsys, args, message):
    if "--model" not in args:
        args = ["--model", str(micro_model)] + args
    assert main(["eval"] + args) == 1
    assert message in capsys.readouterr().err
