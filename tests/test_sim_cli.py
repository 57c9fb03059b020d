"""`tlt simulate` end to end, and the files it reads (cost tables, lengths)."""

import json

import pytest

from tlt.cli import main
from tlt.sim import load_profile, parse_lengths, read_lengths
from tlt.sim.costs import CostTableError
from tlt.sim.lengths import LengthSpecError

QUICK = ["--gpus", "4", "--steps", "2", "--max-tokens", "2048", "--prompts-per-step", "8"]


def test_simulate_prints_json_with_both_modes_and_the_speedup(capsys):
    assert main(["simulate", *QUICK, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for mode in ("baseline", "tlt"):
        run = result[mode]
        assert len(run["steps"]) == 2
        assert set(run["gpu_seconds"]) == {"rollout", "drafter", "train", "sync", "switch", "idle"}
        # Four GPUs are busy or idle every simulated second of every step.
        assert sum(run["gpu_seconds"].values()) == pytest.approx(4 * run["total_seconds"], abs=0.01)
    assert result["speedup"] == pytest.approx(result["baseline"]["total_seconds"] / result["tlt"]["total_seconds"],
                                              rel=1e-3)
    assert result["baseline"]["gpu_seconds"]["drafter"] == 0
    assert result["paper_speedup"] == [1.7, 2.1]
    assert result["setting"]["gpus"] == 4


def test_simulate_prints_the_breakdown_and_writes_timelines(tmp_path, capsys):
    assert main(["simulate", *QUICK, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "speedup" in out and "GPU time" in out and "baseline" in out
    assert json.loads((tmp_path / "result.json").read_text())["tlt"]["steps"]
    svg = (tmp_path / "timeline-tlt.svg").read_text()
    assert svg.startswith("<svg") and "worker-0" in svg and "drafter" in svg


def test_simulate_a_manifest_scaled_to_more_gpus(capsys):
    assert main(["simulate", "examples/qwen2.5-7b-grpo.yaml", "--gpus", "16", "--steps", "1",
                 "--max-tokens", "1024", "--prompts-per-step", "16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["setting"]["gpus"] == 16
    assert result["setting"]["placement"] == "disaggregated"
    assert result["setting"]["engine"].startswith("vllm (fixed EAGLE chain of 4 tokens")  # the manifest's engine


def test_simulate_says_which_rollout_engine_it_models(capsys):
    assert main(["simulate", *QUICK]) == 0
    out = capsys.readouterr().out
    assert "rollout engine modelled: torch (adaptive: bandit over 4 strategies per batch bucket" in out


def test_simulate_rejects_bad_lengths_with_the_accepted_forms(capsys):
    assert main(["simulate", *QUICK, "--lengths", "gamma:k=2"]) == 1
    assert "lognormal:median=" in capsys.readouterr().err


def test_simulate_with_an_engine_cost_table_and_a_lengths_file(tmp_path, capsys):
    from tlt.speculative.costs import CostTable

    table = CostTable(device="cpu", context_len=256, drafter_ratio=0.2,
                      target_seconds={1: {1: 0.01, 2: 0.011, 4: 0.012}, 8: {1: 0.02, 2: 0.03, 4: 0.05}})
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps(table.to_json()))
    lengths = tmp_path / "lengths.txt"
    lengths.write_text("100\n200\n50\n")
    argv = ["simulate", "examples/quickstart.yaml", "--costs", str(costs), "--lengths", f"file:{lengths}",
            "--steps", "1", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["setting"]["profile"]["drafter_ratio"] == 0.2
    assert result["baseline"]["steps"][0]["rollout_seconds"] > 0


def test_engine_cost_table_is_read_as_the_forward_table(tmp_path):
    path = tmp_path / "engine.json"
    path.write_text(json.dumps({"device": "cpu", "context_len": 256, "drafter_ratio": 0.3,
                                "target_seconds": {"1": {"1": 0.01, "4": 0.02}, "4": {"1": 0.03, "4": 0.09}}}))
    profile = load_profile(path)
    assert profile.costs.forward_seconds(4, 4) == pytest.approx(0.09)
    assert profile.costs.forward_seconds(2, 1) == pytest.approx(0.01 + (0.03 - 0.01) / 3)  # linear in batch
    assert profile.costs.drafter_ratio == 0.3
    # Throughputs not given are derived from the table's most tokens per second: 1 x 4 tokens in 0.02 s.
    assert profile.prefill_tokens_per_second == pytest.approx(4 / 0.02)


def test_profile_file_in_tlt_layout_with_fixed_acceptance(tmp_path):
    path = tmp_path / "gpu.yaml"
    path.write_text(
        "name: my-gpu\n"
        "forward_seconds: {1: {1: 0.007, 8: 0.0075}, 64: {1: 0.008, 8: 0.02}}\n"
        "drafter_ratio: 0.1\nkv_seconds_per_token: 2.0e-8\nrole_switch_seconds: 4\n"
        "acceptance: {lengths: {'4_1_4': {1: 0.5, 5: 0.5}}}\n"
    )
    profile = load_profile(path)
    assert profile.name == "my-gpu" and profile.role_switch_seconds == 4.0
    from tlt.speculative.adaptive import Strategy

    assert profile.acceptance.mean(Strategy(4, 1, 4), knowledge=0) == pytest.approx(3.0)


def test_cost_table_without_forward_times_names_the_fix(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"drafter_ratio": 0.1}))
    with pytest.raises(CostTableError, match="forward_seconds"):
        load_profile(path)


def test_length_models_respect_the_limit_and_files_take_several_forms(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    for spec in ("lognormal:median=3000,sigma=1.5", "zipf:a=1.3,scale=500", "fixed:70000"):
        sample = parse_lengths(spec).sample(rng, 2000, 32768)
        assert sample.min() >= 1 and sample.max() <= 32768
    assert parse_lengths("fixed:70000").sample(rng, 3, 32768).tolist() == [32768] * 3
    (tmp_path / "a.json").write_text("[3, 4]")
    (tmp_path / "b.jsonl").write_text('{"response_tokens": 5}\n{"length": 6}\n')
    assert read_lengths(tmp_path / "a.json") == [3, 4]
    assert read_lengths(tmp_path / "b.jsonl") == [5, 6]
    with pytest.raises(LengthSpecError):
        parse_lengths("zipf:a=0.5")


def test_a_trace_is_replayed_in_order_step_after_step(tmp_path):
    from tlt.sim import paper_job, sample_lengths

    path = tmp_path / "trace.txt"
    path.write_text("\n".join(str(n) for n in range(1, 11)))
    spec = paper_job(gpus=1, prompts_per_shard=2, group_size=2, max_tokens=9)  # 4 sequences a step
    steps = sample_lengths(parse_lengths(f"trace:{path}"), spec, 3, seed=0)
    assert [s.tolist() for s in steps] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 1, 2]]  # clipped at 9, wraps


def test_a_warm_drafter_starts_the_run_with_higher_acceptance(capsys):
    assert main(["simulate", *QUICK, "--steps", "1", "--drafter-tokens", "1e9", "--json"]) == 0
    step = json.loads(capsys.readouterr().out)["tlt"]["steps"][0]
    assert step["drafter_alpha"] == pytest.approx(0.75, abs=1e-3)


# ---------------------------------------------------------------------------------
# `tlt simulate --calibrate`: a measured run's rollouts replayed next to their times

CALIBRATION_JOB = """\
apiVersion: tlt.dev/v1alpha1
kind: ReasoningRLJob
metadata: {name: calib}
spec:
  model: {builtin: tiny-arith}
  task: {name: arith}
  algorithm: {name: grpo, steps: 3, promptsPerStep: 2, groupSize: 2, maxResponseTokens: 64}
  placement: disaggregated
  rollout: {replicas: 2, engine: torch, gpusPerReplica: 0, maxBatchSize: 4}
  trainer: {replicas: 1, gpusPerReplica: 0}
  speculative: {mode: "off"}
  elasticity: {lendIdle: false, consolidateTail: {enabled: false}}
"""


def calibration_inputs(tmp_path, records=None):
    """A run folder of two logged steps (the second sampled in two rounds), its job and a cost table:
    0.1 s per forward at any batch, 0.02 s engine overhead per step, 0.05 s per admission."""
    run = tmp_path / "run"
    run.mkdir()
    if records is None:
        records = [
            {"kind": "run", "job": "calib"},
            {"kind": "step", "step": 1, "acceptance_length": 0.0, "time_rollout": 0.75},
            {"kind": "lengths", "step": 1, "shards": 2, "groups": [[3, 3], [5, 5]], "time_rollout": 0.75,
             "sampling_rounds": 1},
            {"kind": "lengths", "step": 2, "shards": 2, "groups": [[3, 3], [5, 5], [2, 2]], "time_rollout": 2.0,
             "sampling_rounds": 2},
        ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    job = tmp_path / "job.yaml"
    job.write_text(CALIBRATION_JOB)
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"forward_seconds": {"1": {"1": 0.1}, "4": {"1": 0.1}},
                                 "step_overhead_seconds": {"1": 0.02}, "prefill_fixed_seconds": 0.05}))
    return run, job, costs


def test_calibrate_replays_each_step_on_the_logged_shards_and_compares(tmp_path, capsys):
    run, job, costs = calibration_inputs(tmp_path)
    assert main(["simulate", str(job), "--calibrate", str(run), "--costs", str(costs), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    first, second = result["steps"]
    # Group 1 ([5, 5]) ran on shard 1: one admission (0.05 s) and 5 steps of 0.1 + 0.02 s = 0.65 s;
    # its last finish wakes the coordinator at once: 0.65 s, against 0.75 s measured.
    assert first["simulated_seconds"] == pytest.approx(0.65)
    assert first["measured_seconds"] == 0.75 and first["error_percent"] == pytest.approx(-13.33)
    assert first["sequences"] == 4 and first["tokens"] == 16
    assert second["simulated_seconds"] is None and "2 rounds" in second["note"]
    assert result["total"] == pytest.approx({"steps": 1, "measured_seconds": 0.75, "simulated_seconds": 0.65,
                                             "error_percent": -13.33})
    assert result["within_20_percent"] is True
    assert result["setting"]["rollout_shards"] == [2] and result["setting"]["poll_seconds"] == 0.0


def test_calibrate_prints_a_table_with_both_numbers_per_step(tmp_path, capsys):
    run, job, costs = calibration_inputs(tmp_path)
    assert main(["simulate", str(job), "--calibrate", str(run), "--costs", str(costs)]) == 0
    out = capsys.readouterr().out
    assert "measured s" in out and "simulated s" in out
    assert "0.750" in out and "0.650" in out and "-13.3%" in out
    assert "not replayed" in out and "total over 1 steps" in out


def test_calibrate_with_a_polling_coordinator_rounds_the_end_up_to_its_next_poll(tmp_path):
    from tlt.api.load import load_jobs
    from tlt.sim.calibrate import calibrate_run

    run, job, costs = calibration_inputs(tmp_path)
    result = calibrate_run(load_jobs(job)[0].spec, load_profile(costs), run, poll_seconds=0.2)
    assert result.steps[0].simulated_seconds == pytest.approx(0.8)  # 0.65 s, seen at the poll of 0.8 s


def test_calibrate_uses_the_prompt_length_and_threshold_the_run_logged(tmp_path, capsys):
    records = [
        {"kind": "step", "step": 1, "acceptance_length": 0.0, "time_rollout": 1.0},
        {"kind": "lengths", "step": 1, "shards": 2, "groups": [[3, 3], [5, 5]], "time_rollout": 1.0,
         "sampling_rounds": 1, "prompt_tokens": 15.4, "batch_threshold": 3},
    ]
    run, job, costs = calibration_inputs(tmp_path, records)
    assert main(["simulate", str(job), "--calibrate", str(run), "--costs", str(costs), "--json"]) == 0
    setting = json.loads(capsys.readouterr().out)["setting"]
    assert setting["prompt_tokens"] == 15 and setting["batch_threshold"] == 3
    assert main(["simulate", str(job), "--calibrate", str(run), "--costs", str(costs), "--json",
                 "--prompt-tokens", "7", "--batch-threshold", "2"]) == 0
    setting = json.loads(capsys.readouterr().out)["setting"]
    assert setting["prompt_tokens"] == 7 and setting["batch_threshold"] == 2, "the options override the log"


def test_calibrate_replays_each_step_at_the_threshold_it_ran(tmp_path, monkeypatch):
    # `auto` is re-resolved after every step as the drafter improves: step 2 ran at 4, not at step 1's 1.
    import tlt.sim.calibrate as calibrate
    from tlt.api.load import load_jobs

    records = [
        {"kind": "lengths", "step": step, "shards": 2, "groups": [[3, 3], [5, 5]], "time_rollout": 1.0,
         "sampling_rounds": 1, "batch_threshold": threshold}
        for step, threshold in ((1, 1), (2, 4))
    ]
    run, job, costs = calibration_inputs(tmp_path, records)
    seen = []
    real = calibrate.predict_rollout_seconds
    monkeypatch.setattr(calibrate, "predict_rollout_seconds",
                        lambda *a, **kw: seen.append(kw["batch_threshold"]) or real(*a, **kw))
    calibrate.calibrate_run(load_jobs(job)[0].spec, load_profile(costs), run)
    assert seen == [1, 4]
    seen.clear()
    calibrate.calibrate_run(load_jobs(job)[0].spec, load_profile(costs), run, batch_threshold=2)
    assert seen == [2, 2], "the option overrides the log"


@pytest.mark.parametrize("case, message", [
    ("no-dir", "does not exist"),
    ("no-metrics", "holds no metrics.jsonl"),
    ("no-lengths", "no `lengths` records"),
    ("bad-record", "lengths record needs"),
    ("bad-json-line", "is not JSON"),
    ("bad-costs", "not valid JSON"),
    ("missing-costs", "cannot read cost table"),
    ("no-costs-flag", "needs --costs"),
    ("no-manifest", "needs the job manifest"),
    ("other-option", "does not apply to --calibrate"),
])
def test_calibrate_bad_inputs_name_the_problem_and_the_fix(tmp_path, capsys, case, message):
    run, job, costs = calibration_inputs(tmp_path)
    args = ["simulate", str(job), "--calibrate", str(run), "--costs", str(costs)]
    if case == "no-dir":
        args[3] = str(tmp_path / "nowhere")
    elif case == "no-metrics":
        (run / "metrics.jsonl").unlink()
    elif case == "no-lengths":
        (run / "metrics.jsonl").write_text(json.dumps({"kind": "step", "step": 1}) + "\n")
    elif case == "bad-record":
        (run / "metrics.jsonl").write_text(json.dumps({"kind": "lengths", "step": 1, "groups": "x"}) + "\n")
    elif case == "bad-json-line":
        (run / "metrics.jsonl").write_text("{not json\n")
    elif case == "bad-costs":
        costs.write_text("{nope")
    elif case == "missing-costs":
        args[5] = str(tmp_path / "absent.json")
    elif case == "no-costs-flag":
        args = args[:4]
    elif case == "no-manifest":
        args = ["simulate", "--calibrate", str(run), "--costs", str(costs)]
    elif case == "other-option":
        args += ["--gpus", "8"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    if case in ("no-dir", "no-lengths", "no-costs-flag", "no-manifest"):
        assert "tlt " in captured.err  # the command that fixes it


def test_bench_engine_terms_are_measured_round_trip_and_move_the_table_to_an_empty_cache(tmp_path):
    from tlt.speculative.costs import CostTable
    from tlt.engine.costs import measure_costs
    from tlt.models import ModelConfig, random_model

    model = random_model(ModelConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2), seed=0)
    measured = measure_costs(model, batch_sizes=(1, 2), widths=(1, 2, 3), context_len=8, repeats=1,
                             progress=False, round_strategy="2_1_2", kv_span=16)
    assert set(measured.step_overhead_seconds) == set(measured.round_overhead_seconds) == {1, 2}
    assert measured.kv_seconds_per_token >= 0 and measured.prefill_tokens_per_second >= 0
    assert measured.round_strategy == "2_1_2" and measured.attention_reads == "longest"
    assert CostTable.from_json(json.loads(json.dumps(measured.to_json()))) == measured

    table = CostTable(device="cpu", context_len=100, drafter_ratio=0.2,
                      target_seconds={1: {1: 0.01, 3: 0.012}, 4: {1: 0.02, 3: 0.03}},
                      kv_seconds_per_token=1e-5, step_overhead_seconds={1: 0.001, 4: 0.002},
                      round_overhead_seconds={1: 0.003}, prefill_fixed_seconds=0.004,
                      prefill_tokens_per_second=1000.0, attention_reads="longest")  # as `tlt bench costs` writes it
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(table.to_json()))
    profile = load_profile(path)
    c = profile.costs
    # Every forward held 100 tokens per sequence: 1e-5 x batch x 100 comes off, the KV term adds it back.
    assert c.target_seconds[1][1] == pytest.approx(0.01 - 1e-3) and c.target_seconds[4][3] == pytest.approx(0.03 - 4e-3)
    assert c.kv_seconds_per_token == 1e-5 and c.attention_reads == "longest"
    assert c.step_overhead_seconds == {1: 0.001, 4: 0.002} and c.round_overhead_seconds == {1: 0.003}
    assert profile.prefill_fixed_seconds == 0.004 and profile.prefill_tokens_per_second == 1000.0
    # An older table without engine terms is read as before.
    old = {k: v for k, v in table.to_json().items() if k in ("device", "context_len", "target_seconds",
                                                            "drafter_ratio", "drafter_seconds", "model")}
    path.write_text(json.dumps(old))
    assert load_profile(path).costs.target_seconds[1][1] == 0.01 and load_profile(path).costs.kv_seconds_per_token == 0
