"""`tlt bench rollout` compares every mode's outputs with plain decoding's, greedy and at
--temperature (coupled verification makes them token-identical), and refuses a negative one."""

import pytest
import torch

from tlt.cli import main
from tlt.drafter.rollout_bench import BenchConfig, run_bench
from tlt.drafter.warmup import tokenizer_for
from tlt.models.drafter import EagleDrafter
from tlt.models.resolve import load_named


@pytest.fixture(scope="module")
def micro():
    folder, target = load_named("micro-arith")
    return target, EagleDrafter.for_target(target, seed=1), tokenizer_for(folder)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rollout_bench_reports_identical_outputs_in_every_mode(micro, temperature):
    target, drafter, tok = micro
    cfg = BenchConfig(batch_sizes=(1, 3), tokens=12, requests=5, max_tokens=24, repeats=1, threshold=2,
                      temperature=temperature)
    summary = run_bench(target, drafter, tok, cfg, progress=False)
    assert summary["temperature"] == temperature
    assert summary["outputs_identical"] is True
    assert summary["mismatched_sequences"] == {"plain": 0, "always": 0, "adaptive": 0}
    assert set(summary["batch"]) == {"1", "3"} and summary["batch"]["1"]["always"] > 0


def test_rollout_bench_refuses_a_negative_temperature(capsys):
    assert main(["bench", "rollout", "--temperature", "-1", "--drafter", "/nonexistent"]) != 0
    assert "--temperature" in capsys.readouterr().err
