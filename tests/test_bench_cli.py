"""`tlt bench e2e` and `tlt bench rollout` as a user runs them, on the micro model: the final
JSON line's fields and what must hold of them (the same tokens sampled, ratios present and
positive), never timings."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tlt.cli import main
from tlt.models.resolve import load_named

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def micro_folder():
    folder, _ = load_named("micro-arith")
    return folder


def last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def e2e_job(model: Path) -> dict:
    """The quickstart on the micro model: 2 steps of 4 prompts x 2 responses of at most 40 tokens."""
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    spec = doc["spec"]
    spec["model"] = {"path": str(model)}
    spec["algorithm"].update(steps=2, promptsPerStep=4, groupSize=2, maxResponseTokens=40, miniBatchSize=8)
    # The micro model answers nothing right: the length penalty gives the responses of a group
    # different rewards, so the trained policy depends on what was sampled.
    spec["algorithm"]["overlongPenalty"] = {"enabled": True, "bufferTokens": 32}
    spec["eval"] = {"everySteps": 2, "numPrompts": 4}  # at steps 0 and 2
    spec["rollout"]["maxBatchSize"] = 8
    spec["speculative"] = {"mode": "adaptive", "batchThreshold": 4, "strategies": ["3_1_3"]}
    spec["elasticity"] = {"lendIdle": True, "consolidateTail": {"enabled": True, "threshold": 2}}
    return doc


@pytest.mark.slow
def test_bench_e2e_prints_a_comparison_of_runs_that_sampled_identical_rollouts(micro_folder, tmp_path, capsys):
    """Coupled verification: tlt (speculation, lending, consolidation) samples exactly the
    baseline's tokens at every step, so both runs train the same policy."""
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(e2e_job(micro_folder)))
    out = tmp_path / "bench"
    assert main(["bench", "e2e", str(job), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    result = last_json_line(printed)
    assert result == json.loads((out / "comparison.json").read_text())

    assert result["differing_rollouts"] == {"1": 0, "2": 0}
    assert result["identical_rollouts"] is True and result["rewards_equal"] is True
    # The runs took turns: start-up, step 1, step 2 and the export, each run in its turn.
    assert result["schedule"] == "lockstep" and result["turns"] == 2 * 4
    assert result["seed"] == 0 and "algorithm seed 0;" in printed
    tlt, base = result["tlt"], result["baseline"]
    assert tlt["steps"] == base["steps"] == [1, 2]
    assert tlt["acceptance_length"] >= 1.0, "tlt must have speculated for the check to mean anything"
    assert base["acceptance_length"] == 0 and base["lent_fraction"] == 0  # the baseline: no speculation, no lending
    for key in ("step_speedup", "rollout_speedup"):
        assert result[key] > 0 and len(result[f"{key}_per_step"]) == 2
        assert all(r > 0 for r in result[f"{key}_per_step"])
    # held-out accuracy: the same prompts at steps 0 and 2, compared prompt by prompt
    change = tlt["accuracy_change"]
    assert (change["from_step"], change["to_step"]) == (0, 2) and change == base["accuracy_change"]
    assert change["gained"] + change["lost"] <= 4 and 0 < change["p_value"] <= 1
    assert (f"held-out greedy accuracy (tlt run): {change['gained']} prompts gained, {change['lost']} lost "
            "from step 0 to 2") in printed
    for run in (tlt, base):
        assert 0 < run["rollout_share"] <= 1
        assert run["rollout_tokens_per_second"] > 0 and run["train_tokens_per_second"] > 0
    # The same rollouts train the same policy; the update's old logprobs come from the
    # engine (a verify forward of several tokens when speculating, of one without; after a near
    # tie, the next step's forward), equal to float32 rounding, so the weights agree far below
    # what one update changes (about 6e-4 here; they differed by 7e-9 to 1.7e-7).
    a, b = (load_file(str(out / run / "policy" / "model.safetensors")) for run in ("baseline", "tlt"))
    start = load_file(str(micro_folder / "model.safetensors"))
    assert max(float((a[k] - start[k]).abs().max()) for k in start) > 1e-6, "training moved nothing"
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    assert "Step time: baseline vs tlt" in (out / "tlt" / "report.html").read_text()


def test_bench_e2e_seed_compares_the_job_at_that_algorithm_seed(tmp_path, monkeypatch, capsys):
    """`--seed N` reruns the comparison at another seed (another sampling and data order) without
    editing the manifest; a negative seed is refused before any work, naming the field."""
    import tlt.coordinator.bench as bench

    compared = []

    def fake_compare(job, out, progress=True):  # records the job; the comparison itself is the test above
        compared.append(job.spec.algorithm.seed)
        raise SystemExit(0)

    monkeypatch.setattr(bench, "compare", fake_compare)
    job = ROOT / "examples" / "quickstart.yaml"
    with pytest.raises(SystemExit):
        main(["bench", "e2e", str(job), "--seed", "3", "--out", str(tmp_path / "b"), "--quiet"])
    assert compared == [3]
    assert main(["bench", "e2e", str(job), "--seed", "-1", "--out", str(tmp_path / "b"), "--quiet"]) != 0
    assert compared == [3] and "spec.algorithm.seed must be >= 0" in capsys.readouterr().err


def test_bench_rollout_warms_up_a_drafter_and_prints_ratios_of_identical_outputs(micro_folder, tmp_path,
                                                                                 monkeypatch, capsys):
    monkeypatch.setenv("TLT_CACHE_DIR", str(tmp_path / "cache"))  # the warmed-up drafter goes here
    rc = main(["bench", "rollout", "--model", str(micro_folder), "--warmup-steps", "12", "--warmup-prompts", "16",
               "--requests", "6", "--max-tokens", "32", "--batch-sizes", "1,3", "--tokens", "16", "--repeats", "1",
               "--threshold", "2", "--temperature", "1.0"])
    assert rc == 0
    summary = last_json_line(capsys.readouterr().out)
    drafters = list((tmp_path / "cache" / "drafters").iterdir())
    assert len(drafters) == 1 and (drafters[0] / "config.json").is_file()

    assert summary["bench"] == "rollout_sd" and summary["temperature"] == 1.0
    assert summary["outputs_identical"] is True
    assert summary["mismatched_sequences"] == {"plain": 0, "always": 0, "adaptive": 0}
    assert (summary["threshold"], summary["threshold_source"]) == (2, "given")
    assert set(summary["batch"]) == set(summary["batch_acceptance"]) == {"1", "3"}
    for row in summary["batch"].values():
        assert set(row) == {"always", "adaptive"} and all(ratio > 0 for ratio in row.values())
    # always-on speculation ran verification rounds (each emits 1 to chain + 1 tokens)
    assert all(1.0 <= a <= summary["chain"] + 1 for a in summary["batch_acceptance"].values())
    tail = summary["long_tail"]
    assert tail["requests"] == 6 and tail["plain_seconds"] > 0
    assert tail["always_ratio"] > 0 and tail["adaptive_ratio"] > 0
    assert 1.0 <= tail["always_acceptance"] <= summary["chain"] + 1
    assert summary["mean_acceptance_length"] == tail["always_acceptance"]
    assert 0 < tail["response_tokens"]["max"] <= 32 and tail["response_tokens"]["total"] > 0
