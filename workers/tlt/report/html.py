"""report.html: the story of a run, rendered from metrics.jsonl alone (and, after `tlt bench e2e`,
the baseline run's metrics.jsonl beside it)."""

from __future__ import annotations

import html
import json
import statistics
from pathlib import Path

from tlt.eval.evaluate import paired_change, unpack_solved
from tlt.report.log import read_records
from tlt.report.svg import grouped_bars, line_chart, stacked_bars, timeline

STEP_PHASES = ("rollout", "reward", "train", "sync")
# In a run folder, names the baseline run this one is compared with (`tlt bench e2e` writes it).
COMPARISON_FILE = "baseline.json"


def role_spans(records: list[dict], end: float) -> dict[str, list[tuple[float, float, str]]]:
    """Per worker, the (start, end, role) spans implied by its role-switch records."""
    switches: dict[str, list[tuple[float, str]]] = {}
    for r in records:
        if r.get("kind") == "role":
            switches.setdefault(r["worker"], []).append((r["t"], r["role"]))
    spans = {}
    for worker, events in switches.items():
        events.sort()
        spans[worker] = [
            (start, events[i + 1][0] if i + 1 < len(events) else max(end, start), role)
            for i, (start, role) in enumerate(events)
        ]
    return spans


def latest_per_step(records: list[dict], kind: str) -> list[dict]:
    """Records of one kind, one per step: a step re-run after a resume replaces the old record."""
    by_step = {r["step"]: r for r in records if r.get("kind") == kind}
    return [by_step[s] for s in sorted(by_step)]


def accuracy_change(evals: list[dict], suffix: str = "") -> dict | None:
    """Prompts gained and lost from the first evaluation to the last (see `paired_change`)."""
    marked = [e for e in evals if f"solved{suffix}" in e]
    if len(marked) < 2:
        return None
    first, last = marked[0], marked[-1]
    n = first["prompts"]
    change = paired_change(unpack_solved(first[f"solved{suffix}"], n), unpack_solved(last[f"solved{suffix}"], n))
    return {"from_step": first["step"], "to_step": last["step"], **change}


def describe_change(change: dict) -> str:
    """An `accuracy_change` in words (the report's table, `tlt bench e2e`)."""
    return (f"{change['gained']} prompts gained, {change['lost']} lost from step {change['from_step']} "
            f"to {change['to_step']} (sign test p = {change['p_value']:.2g})")


def summarize(records: list[dict]) -> dict:
    """The headline figures of a run (also printed at the end of `tlt run`)."""
    steps = latest_per_step(records, "step")
    evals = latest_per_step(records, "eval")
    out: dict = {"steps": len(steps)}
    if evals:
        out["accuracy_first"] = evals[0]["accuracy"]
        out["accuracy_last"] = evals[-1]["accuracy"]
        if "accuracy_sampled" in evals[0] and "accuracy_sampled" in evals[-1]:
            out["pass_at_1_first"] = evals[0]["accuracy_sampled"]
            out["pass_at_1_last"] = evals[-1]["accuracy_sampled"]
        for key, suffix in (("accuracy_change", ""), ("pass_at_1_change", "_sampled")):
            change = accuracy_change(evals, suffix)
            if change:
                out[key] = change
    if steps:
        step_times = [step_seconds(s) for s in steps]
        rollout = sum(s.get("time_rollout", 0.0) for s in steps)
        out["mean_step_seconds"] = statistics.fmean(step_times)
        out["rollout_share"] = rollout / (sum(step_times) or 1.0)
        accepts = [s["acceptance_length"] for s in steps if s.get("acceptance_length")]
        if accepts:
            out["mean_acceptance_length"] = statistics.fmean(accepts)
        lent = [s["lent_fraction"] for s in steps if "lent_fraction" in s]
        if lent:
            out["lent_fraction"] = statistics.fmean(lent)
        out["reward_last"] = steps[-1].get("reward_mean")
    return out


def step_seconds(step: dict) -> float:
    return sum(step.get(f"time_{p}", 0.0) for p in STEP_PHASES)


def comparison_charts(steps: list[dict], baseline: list[dict]) -> list[str]:
    """This run's step and rollout time beside the baseline's, step by step."""
    base = {s["step"]: s for s in latest_per_step(baseline, "step")}
    ids = [s["step"] for s in steps if s["step"] in base]
    mine = {s["step"]: s for s in steps}
    return [
        grouped_bars("Step time: baseline vs tlt (same rollouts)", ids, {
            "baseline": [step_seconds(base[i]) for i in ids], "tlt": [step_seconds(mine[i]) for i in ids]}),
        grouped_bars("Rollout time: baseline vs tlt", ids, {
            "baseline": [base[i]["time_rollout"] for i in ids], "tlt": [mine[i]["time_rollout"] for i in ids]}),
    ]


def render_report(records: list[dict], title: str = "tlt run", baseline: list[dict] | None = None) -> str:
    steps = latest_per_step(records, "step")
    evals = latest_per_step(records, "eval")
    end = max((r.get("t", 0.0) for r in records), default=0.0)
    step_ids = [s["step"] for s in steps]

    charts = comparison_charts(steps, baseline) if baseline else []
    charts += [
        line_chart(
            "Reward and held-out accuracy",
            {
                "train reward (mean)": [(s["step"], s["reward_mean"]) for s in steps if "reward_mean" in s],
                "held-out greedy accuracy": [(e["step"], e["accuracy"]) for e in evals],
                "held-out pass@1 (sampled)": [(e["step"], e["accuracy_sampled"]) for e in evals
                                              if "accuracy_sampled" in e],
            },
            y_label="fraction",
        ),
        stacked_bars(
            "Step time: rollout / reward / train / sync",
            step_ids,
            {p: [s.get(f"time_{p}", 0.0) for s in steps] for p in STEP_PHASES},
        ),
        line_chart(
            "Acceptance length per step (labels: drafter version)",
            {"mean acceptance length": [(s["step"], s["acceptance_length"]) for s in steps if s.get("acceptance_length")]},
            y_label="tokens per verification",
            labels={(s["step"], s["acceptance_length"]): f"v{s.get('drafter_version', 0)}"
                    for s in steps if s.get("acceptance_length")},
        ),
        line_chart(
            "Rollout response length",
            {
                "mean": [(s["step"], s["response_len_mean"]) for s in steps if "response_len_mean" in s],
                "max": [(s["step"], s["response_len_max"]) for s in steps if "response_len_max" in s],
            },
            y_label="tokens",
        ),
    ]
    gantt = timeline("Worker roles over time", role_spans(records, end))
    summary = summarize(records)
    rows = "".join(
        f"<tr><th>{html.escape(k.replace('_', ' '))}</th><td>{_show(v)}</td></tr>" for k, v in summary.items()
    )
    grid = "".join(f'<div class="chart">{c}</div>' for c in charts)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:24px;color:#111}}.grid{{display:flex;flex-wrap:wrap;gap:12px}}
.chart{{border:1px solid #e5e7eb;padding:6px}}table{{border-collapse:collapse}}th,td{{padding:4px 10px;border-bottom:1px solid #eee;text-align:left}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<table>{rows}</table>
<h2>Training</h2><div class="grid">{grid}</div>
<h2>Workers</h2><div class="chart">{gantt}</div>
<p>Rendered from metrics.jsonl ({len(records)} records).</p>
</body></html>
"""


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict) and "gained" in value:  # an accuracy_change
        return html.escape(describe_change(value))
    return html.escape(str(value))


def write_report(run_dir: str | Path, title: str | None = None) -> Path:
    """Render run_dir/metrics.jsonl into run_dir/report.html (atomically replaced)."""
    run_dir = Path(run_dir)
    records = read_records(run_dir / "metrics.jsonl")
    baseline = None
    if (run_dir / COMPARISON_FILE).is_file():
        other = Path(json.loads((run_dir / COMPARISON_FILE).read_text())["baseline"])
        baseline = read_records(other / "metrics.jsonl") or None
    out = run_dir / "report.html"
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(render_report(records, title or f"tlt run: {run_dir.name}", baseline))
    tmp.replace(out)
    return out
