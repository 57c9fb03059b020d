"""Engine metrics in a given Prometheus registry; the cost table and `tlt bench costs`."""

import json

import torch
from prometheus_client import CollectorRegistry

from tlt.cli import main
from tlt.engine import Request, TorchEngine
from tlt.engine.costs import CostTable, measure_costs
from tlt.models import ModelConfig, random_model
from tlt.models.drafter import EagleDrafter
from tlt.speculative.adaptive import FixedStrategy, Strategy

CFG = ModelConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)


def test_metrics_count_tokens_and_acceptance_by_strategy_in_the_given_registry():
    registry = CollectorRegistry()
    model = random_model(CFG, seed=0)
    engine = TorchEngine(model, num_slots=2, max_model_len=64, drafter=EagleDrafter.for_target(model),
                         speculation=FixedStrategy(Strategy(3, 1, 3)), metrics_registry=registry)
    engine.generate([Request(prompt=[1, 2], max_tokens=10, temperature=0.0, id=i) for i in range(2)])
    assert registry.get_sample_value("tlt_engine_generated_tokens_total") == 20
    rounds = registry.get_sample_value("tlt_engine_acceptance_length_count", {"strategy": "3_1_3"})
    assert rounds == engine.counters().verify_rounds > 0
    assert registry.get_sample_value("tlt_engine_speculation_seconds_total", {"state": "on"}) > 0
    assert registry.get_sample_value("tlt_engine_running_batch_size") is not None


def test_cost_table_covers_every_batch_and_width_and_round_trips_json():
    model = random_model(CFG, seed=0)
    table = measure_costs(model, batch_sizes=(1, 4), widths=(1, 3), context_len=8, repeats=1, progress=False)
    assert set(table.target_seconds) == {1, 4}
    assert all(set(row) == {1, 3} and min(row.values()) > 0 for row in table.target_seconds.values())
    assert table.drafter_ratio > 0
    again = CostTable.from_json(json.loads(json.dumps(table.to_json())))
    assert again == table
    assert again.auto_threshold(Strategy(2, 1, 2)) in {0, 1, 4}


def test_bench_costs_command_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "costs.json"
    rc = main(["bench", "costs", "--batch-sizes", "1,2", "--widths", "2", "--context", "8",
               "--repeats", "1", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert set(data["target_seconds"]) == {"1", "2"} and set(data["target_seconds"]["1"]) == {"1", "2"}
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == data


def test_bench_costs_rejects_malformed_lists_naming_the_option(capsys):
    assert main(["bench", "costs", "--widths", "a,b"]) == 1
    assert "--widths" in capsys.readouterr().err
