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


def test_simulate_rejects_bad_lengths_with_the_accepted_forms(capsys):
    assert main(["simulate", *QUICK, "--lengths", "gamma:k=2"]) == 1
    assert "lognormal:median=" in capsys.readouterr().err


def test_simulate_with_an_engine_cost_table_and_a_lengths_file(tmp_path, capsys):
    from tlt.engine.costs import CostTable as EngineCostTable

    table = EngineCostTable(device="cpu", context_len=256, drafter_ratio=0.2,
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
