"""Engine metrics in a given Prometheus registry; the cost table and `tlt bench costs`."""

import json
from dataclasses import replace

import torch
from prometheus_client import CollectorRegistry

from tlt.cli import main
from tlt.engine import Request, TorchEngine
from tlt.engine.costs import measure_costs
from tlt.speculative.costs import CostTable
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


def test_near_tie_recomputes_are_counted_in_the_metric_and_the_counters():
    from tlt.speculative.sampling import Ties
    registry = CollectorRegistry()
    model = random_model(CFG, seed=0)  # float32: near ties recomputed ("auto")
    engine = TorchEngine(model, num_slots=4, max_model_len=64, metrics_registry=registry, ties=Ties(mass=0.1, logits=0.1))
    results = engine.generate([Request(prompt=[1, 2], max_tokens=30, temperature=1.0, seed=i, id=i) for i in range(4)])
    assert all(len(r.tokens) == 30 for r in results), "a near tie delays a token, it never drops one"
    assert registry.get_sample_value("tlt_engine_near_ties_total") == engine.counters().near_ties > 0
    assert TorchEngine(model, num_slots=1, max_model_len=8).ties is not None
    assert TorchEngine(model.double(), num_slots=1, max_model_len=8).ties is None  # float64: exact as it is


def test_cost_table_covers_every_batch_and_width_and_round_trips_json():
    model = random_model(CFG, seed=0)
    table = measure_costs(model, batch_sizes=(1, 4), widths=(1, 3), context_len=8, repeats=1, progress=False)
    assert set(table.target_seconds) == {1, 4}
    assert all(set(row) == {1, 3} and min(row.values()) > 0 for row in table.target_seconds.values())
    assert table.drafter_ratio > 0
    again = CostTable.from_json(json.loads(json.dumps(table.to_json())))
    assert again == table
    assert again.auto_threshold(Strategy(2, 1, 2)) == table.auto_threshold(Strategy(2, 1, 2))


def costs(width3_at_batch4: float, width3_at_batch1: float = 1.0) -> CostTable:
    """A width-1 forward costs 1 at every batch; a width-3 one (2_1_2 verifies 3 tokens) as given."""
    return CostTable(device="cpu", context_len=8, drafter_ratio=0.25,
                     target_seconds={1: {1: 1.0, 3: width3_at_batch1}, 4: {1: 1.0, 3: width3_at_batch4}})


def test_auto_threshold_is_the_largest_batch_where_speculation_pays_by_the_table():
    # 2_1_2 at acceptance 2: speedup = 2 x w1 / (w3 + 2 x 0.25 x w1), which pays (>= 1.05) while
    # w3 <= 1.40476 x w1
    s = Strategy(2, 1, 2)
    assert costs(1.40).auto_threshold(s) == 4  # pays at both batch sizes, just
    assert costs(1.41).auto_threshold(s) == 1  # just misses at batch 4
    assert costs(1.0, width3_at_batch1=1.41).auto_threshold(s) == 0  # pays at 4 but not at 1: 0
    # the acceptance length moves the boundary: at 3 tokens a round w3 = 2.3 still pays (<= 2.357)
    assert costs(2.3).auto_threshold(s, acceptance_length=3.0) == 4
    assert costs(2.4).auto_threshold(s, acceptance_length=3.0) == 1


def test_auto_threshold_is_the_last_batch_size_where_a_compute_bound_table_predicts_a_speedup():
    # flat in width at small batch, linear at large batch
    table = CostTable(drafter_ratio=0.1, target_seconds={b: {w: 0.01 + 0.0004 * b * w for w in (1, 2, 4, 8, 16)}
                                                         for b in (1, 2, 4, 8, 16, 32, 64)})
    arm = Strategy(4, 1, 4)
    threshold = table.auto_threshold(arm, acceptance_length=2.5)
    assert 1 <= threshold < 64
    assert table.predicted_speedup(threshold, arm, 2.5) >= 1.05
    bigger = min(b for b in table.target_seconds if b > threshold)
    assert table.predicted_speedup(bigger, arm, 2.5) < 1.05
    fully_bound = CostTable(target_seconds={b: {w: 0.001 * b * w for w in (1, 2, 4, 8)} for b in (1, 2, 4)})
    assert fully_bound.auto_threshold(arm, acceptance_length=1.2) == 0  # speculation never pays


def test_auto_threshold_counts_the_engines_measured_overhead_per_round():
    # the forwards alone pay at both batch sizes (see above); a round's bookkeeping costs more than
    # a plain step's, and at batch 4 that tips it
    s = Strategy(2, 1, 2)
    forwards = costs(1.30)
    assert forwards.auto_threshold(s) == 4
    engine = replace(forwards, step_overhead_seconds={1: 0.05, 4: 0.05}, round_overhead_seconds={1: 0.05, 4: 0.3})
    assert engine.predicted_speedup(4, s, 2.0) < 1.05 <= engine.predicted_speedup(1, s, 2.0)
    assert engine.auto_threshold(s) == 1


def test_bench_costs_command_prints_a_table_and_writes_json(micro_model, tmp_path, capsys):
    out = tmp_path / "costs.json"
    rc = main(["bench", "costs", "--model", str(micro_model), "--batch-sizes", "1,2", "--widths", "2", "--context", "8",
               "--repeats", "1", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert set(data["target_seconds"]) == {"1", "2"} and set(data["target_seconds"]["1"]) == {"1", "2"}
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == data


def test_bench_costs_rejects_malformed_lists_naming_the_option(capsys):
    assert main(["bench", "costs", "--widths", "a,b"]) == 1
    assert "--widths" in capsys.readouterr().err
