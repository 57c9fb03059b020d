"""The end-to-end comparison: the plain synchronous baseline (speculation off, elasticity
off, what a veRL-style run does) and tlt on the same job and seed, in one process."""

from __future__ import annotations

import copy
import json
import statistics
import sys
from pathlib import Path

from tlt.api.model import ReasoningRLJob
from tlt.coordinator.loop import EmbeddedRun
from tlt.report import read_records
from tlt.report.html import latest_per_step


def baseline_of(job: ReasoningRLJob) -> ReasoningRLJob:
    """The same job with speculation and elasticity off."""
    doc = job.model_dump(by_alias=True, exclude_none=True, mode="json")
    doc["spec"]["speculative"]["mode"] = "off"
    doc["spec"]["elasticity"] = {"lendIdle": False, "consolidateTail": {"enabled": False}}
    return ReasoningRLJob.model_validate(doc)


def _figures(run_dir: Path) -> dict:
    records = read_records(run_dir / "metrics.jsonl")
    steps = latest_per_step(records, "step")
    evals = latest_per_step(records, "eval")
    rollout = [s["time_rollout"] for s in steps]
    whole = [s["time_rollout"] + s["time_reward"] + s["time_train"] + s["time_sync"] for s in steps]
    return {
        "rollout_seconds": statistics.median(rollout),
        "step_seconds": statistics.median(whole),
        "rollout_share": sum(rollout) / sum(whole),
        "accuracy": evals[-1]["accuracy"] if evals else None,
        "acceptance_length": statistics.fmean([s["acceptance_length"] for s in steps]) if steps else 0.0,
        "lent_fraction": statistics.fmean([s.get("lent_fraction", 0.0) for s in steps]) if steps else 0.0,
    }


def compare(job: ReasoningRLJob, out: Path, progress: bool = True) -> dict:
    out = Path(out)
    runs = {"baseline": baseline_of(job), "tlt": copy.deepcopy(job)}
    figures = {}
    for name, variant in runs.items():
        EmbeddedRun(variant, run_dir=out / name, fresh=True, progress=progress).run()
        figures[name] = _figures(out / name)
    base, tlt = figures["baseline"], figures["tlt"]
    result = {
        "baseline": base,
        "tlt": tlt,
        "rollout_speedup": base["rollout_seconds"] / tlt["rollout_seconds"],
        "step_speedup": base["step_seconds"] / tlt["step_seconds"],
        "accuracy_gap": None if base["accuracy"] is None else tlt["accuracy"] - base["accuracy"],
    }
    return result


def print_comparison(result: dict, file=sys.stdout) -> None:
    b, t = result["baseline"], result["tlt"]
    rows = [
        ("median rollout seconds / step", b["rollout_seconds"], t["rollout_seconds"]),
        ("median step seconds", b["step_seconds"], t["step_seconds"]),
        ("rollout share of the step", b["rollout_share"], t["rollout_share"]),
        ("held-out accuracy (last eval)", b["accuracy"], t["accuracy"]),
        ("mean acceptance length", b["acceptance_length"], t["acceptance_length"]),
        ("fraction of worker time lent", b["lent_fraction"], t["lent_fraction"]),
    ]
    print(f"{'':34} {'baseline':>10} {'tlt':>10}", file=file)
    for label, x, y in rows:
        print(f"{label:34} {x if x is not None else float('nan'):10.3f} {y if y is not None else float('nan'):10.3f}", file=file)
    print(f"rollout speedup {result['rollout_speedup']:.2f}x, whole-step speedup {result['step_speedup']:.2f}x", file=file)
    print(json.dumps(result, default=float), file=file)
