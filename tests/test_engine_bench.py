"""`tlt bench engine` runs on a CPU with the tiny shape and prints its JSON (smoke run: no
timing asserted), and named shapes build with random weights on the device."""

import json

import pytest
import torch

from tlt.cli import main
from tlt.models.shapes import SHAPES, random_on_device, shape_config


def test_bench_engine_prints_the_json_a_gpu_run_reports(capsys, tmp_path):
    out = tmp_path / "engine.json"
    code = main(["bench", "engine", "--shape", "tiny", "--device", "cpu", "--batch-sizes", "1,3", "--prompt", "24",
                 "--steps", "2", "--warmup", "1", "--strategies", "4_1_4,2_2_3", "--spec-batch-sizes", "1",
                 "--json", str(out)])
    assert code == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data == json.loads(out.read_text())
    assert data["shape"] == "tiny" and data["device"] == "cpu" and data["prompt_tokens"] == 24
    assert set(data["plain"]) == {"1", "3"}
    for row in data["plain"].values():
        assert row["ms_per_step"] > 0 and row["tokens_per_s"] > 0
        assert row["host_syncs_per_step"] is None and row["fraction_of_roofline"] is None  # no CUDA here
    assert set(data["speculative"]) == {"4_1_4", "2_2_3"}
    for rows in data["speculative"].values():
        assert set(rows) == {"1"} and rows["1"]["ms_per_round"] > 0 and rows["1"]["round_over_plain_step"] > 0
    for key in ("params", "weight_bytes", "bandwidth_bytes_per_s", "static", "cuda_graphs", "peak_memory_bytes"):
        assert key in data


def test_bench_engine_with_a_given_bandwidth_reports_the_roofline_fraction(capsys):
    assert main(["bench", "engine", "--shape", "tiny", "--device", "cpu", "--batch-sizes", "2", "--prompt", "8",
                 "--steps", "2", "--warmup", "0", "--strategies", "", "--bandwidth", "50"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    row = data["plain"]["2"]
    assert data["bandwidth_bytes_per_s"] == 50e9 and data["bandwidth_source"] == "--bandwidth"
    assert 0 < row["roofline_ms"] and row["fraction_of_roofline"] == pytest.approx(
        row["roofline_ms"] / row["ms_per_step"], rel=0.01)


def test_bench_engine_refuses_an_unknown_shape_naming_the_known_ones(capsys):
    assert main(["bench", "engine", "--shape", "gpt-9", "--device", "cpu"]) != 0
    err = capsys.readouterr().err
    assert "gpt-9" in err and "qwen2.5-7b" in err


def test_named_shapes_build_with_random_weights_without_a_download():
    assert {"qwen2.5-7b", "qwen2.5-0.5b", "tiny"} <= set(SHAPES)
    assert shape_config("qwen2.5-7b").num_key_value_heads == 4
    model = random_on_device(shape_config("tiny"), "cpu", torch.float32, seed=1)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as the shape says
    assert float(model.model.layers[0].input_layernorm.weight.detach().min()) == 1.0
    std = float(model.model.layers[0].mlp.up_proj.weight.detach().std())
    assert 0.015 < std < 0.025
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]]))).all()
