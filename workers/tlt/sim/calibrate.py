"""Replay a measured run's rollouts through the simulator: simulated vs measured seconds per step.

`tlt run` logs, per step, a `lengths` record: every response length by prompt group in
sampling order (group n ran on shard n mod shards) and the measured rollout time; the
`step` record beside it has the drafter's measured acceptance length. For each step
the replay gives the simulator (the very code `tlt simulate` runs: `ClusterSimulator`
through `predict_rollout_seconds`) the job spec, the cost table `tlt bench costs`
measured on the machine, those lengths in that shard assignment, and that acceptance,
then compares its rollout time with the measured one:

    tlt bench costs --batch-sizes 1,2,4,8,16,32 --widths 1,2,4,5,7,9,17 --context 64 --json costs.json
    tlt run examples/quickstart.yaml --fresh --run-dir /tmp/calib-run
    tlt simulate examples/quickstart.yaml --calibrate /tmp/calib-run --costs costs.json --prompt-tokens 15

What the replay matches to the embedded runner (`tlt.coordinator.loop`):
- shards = the record's `shards`, `maxBatchSize` slots each, continuous batching;
- `batchThreshold: auto` as the runner resolves it: `CostTable.auto_threshold` on the cost
  table for the first strategy at an assumed acceptance length of 2, at least 1
  (the runner measures its own table at start-up and does not log the result; pass
  `--batch-threshold` to override);
- speculation: the adaptive manager and its bandit (plain decoding is an arm), each
  strategy emitting tokens per round with the step's measured mean acceptance
  length (a chain whose per-level acceptance gives that mean);
- the elastic policy (`tlt.elastic.plan`: lending, tail consolidation) every 0.2 s
  (`POLL_SECONDS`, the coordinator's control interval), and the rollout ends at its
  last finish (a shard that drains wakes the coordinator at once);
- the engine's costs per iteration: target forward + (speculating) drafting, the
  engine's own overhead per step or round, KV reads padded to the longest context,
  and a fixed + per-token prefill per admission, all from the cost table.

Steps sampled in several rounds (DAPO dynamic sampling) are listed but not replayed:
the record does not say which groups each round decoded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from tlt.api.model import ReasoningRLJobSpec
from tlt.sim.acceptance import AcceptanceModel
from tlt.sim.costs import Profile
from tlt.sim.run import predict_rollout_seconds
from tlt.speculative.adaptive import Strategy
from tlt.speculative.controller import speculates

POLL_SECONDS = 0.2  # tlt.coordinator.loop.POLL_SECONDS: the embedded coordinator's control interval
PROBE_CONTEXT = 128  # context of the cost table the embedded runner measures for `auto` at start-up
PROBE_ACCEPTANCE = 2.0  # the acceptance length that rule assumed before runs measured it (and logged the threshold)


class CalibrationError(ValueError):
    """A run folder or record that cannot be replayed; the message names it and the fix."""


@dataclass
class StepReplay:
    step: int
    measured_seconds: float
    simulated_seconds: float | None
    sequences: int
    tokens: int
    acceptance_length: float
    note: str = ""

    @property
    def error_percent(self) -> float | None:
        if self.simulated_seconds is None or self.measured_seconds <= 0:
            return None
        return 100.0 * (self.simulated_seconds - self.measured_seconds) / self.measured_seconds

    def as_dict(self) -> dict:
        err = self.error_percent
        return {
            "step": self.step,
            "measured_seconds": round(self.measured_seconds, 4),
            "simulated_seconds": None if self.simulated_seconds is None else round(self.simulated_seconds, 4),
            "error_percent": None if err is None else round(err, 2),
            "sequences": self.sequences,
            "tokens": self.tokens,
            "acceptance_length": round(self.acceptance_length, 4),
            "note": self.note,
        }


@dataclass
class Calibration:
    steps: list[StepReplay]
    setting: dict = field(default_factory=dict)

    @property
    def replayed(self) -> list[StepReplay]:
        return [s for s in self.steps if s.simulated_seconds is not None]

    @property
    def measured_seconds(self) -> float:
        return sum(s.measured_seconds for s in self.replayed)

    @property
    def simulated_seconds(self) -> float:
        return sum(s.simulated_seconds for s in self.replayed)

    @property
    def error_percent(self) -> float:
        m = self.measured_seconds
        return 100.0 * (self.simulated_seconds - m) / m if m > 0 else math.nan

    def as_dict(self) -> dict:
        return {
            "setting": self.setting,
            "steps": [s.as_dict() for s in self.steps],
            "total": {
                "steps": len(self.replayed),
                "measured_seconds": round(self.measured_seconds, 4),
                "simulated_seconds": round(self.simulated_seconds, 4),
                "error_percent": round(self.error_percent, 2),
            },
            "within_20_percent": bool(abs(self.error_percent) <= 20.0),
        }


def read_run(run_dir: str | Path) -> tuple[list[dict], dict[int, dict]]:
    """The `lengths` records of a run folder (last one per step, in step order) and its `step` records."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CalibrationError(f"run folder {run_dir} does not exist; give the folder `tlt run` wrote "
                               "(spec.output.path, or its --run-dir)")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise CalibrationError(f"{run_dir} holds no metrics.jsonl; give the folder `tlt run` wrote, "
                               "after at least one completed step")
    lengths: dict[int, dict] = {}
    steps: dict[int, dict] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise CalibrationError(f"{path}:{number} is not JSON; the file is damaged (rerun the job "
                                   "with --fresh)") from None
        if not isinstance(record, dict):
            continue
        if record.get("kind") == "lengths":
            _check_lengths(record, path, number)
            lengths[int(record["step"])] = record  # a resumed run re-logs a step: the last one counts
        elif record.get("kind") == "step" and "step" in record:
            steps[int(record["step"])] = record
    if not lengths:
        raise CalibrationError(f"{path} has no `lengths` records (per-step response lengths); it was written "
                               "by an older tlt: run the job again (`tlt run JOB --fresh --run-dir DIR`)")
    return [lengths[k] for k in sorted(lengths)], steps


def _check_lengths(record: dict, path: Path, number: int) -> None:
    where = f"{path}:{number}: lengths record"
    groups = record.get("groups")
    ok = (isinstance(record.get("step"), int) and isinstance(record.get("shards"), int) and record["shards"] >= 1
          and isinstance(record.get("time_rollout"), (int, float))
          and isinstance(groups, list) and groups
          and all(isinstance(g, list) and g and all(isinstance(n, int) and n >= 0 for n in g) for g in groups))
    if not ok:
        raise CalibrationError(f"{where} needs step, shards >= 1, time_rollout and groups (lists of token "
                               "counts); the file is damaged (rerun the job with --fresh)")


def embedded_threshold(profile: Profile, spec: ReasoningRLJobSpec) -> int:
    """`batchThreshold: auto` as the embedded runner resolved it before it logged it (its cost table, first
    strategy, an assumed acceptance length): for runs whose records lack `batch_threshold`."""
    s = spec.speculative
    if isinstance(s.batch_threshold, int):
        return s.batch_threshold
    measured = profile.costs.at_context(PROBE_CONTEXT)  # the runner's table held PROBE_CONTEXT tokens per sequence
    return max(1, measured.auto_threshold(Strategy.parse(s.strategies[0]), PROBE_ACCEPTANCE))


def acceptance_with_mean(spec: ReasoningRLJobSpec, mean: float) -> AcceptanceModel:
    """Every strategy emits `mean` tokens per round on average: a chain accepting each level alike."""
    lengths = {}
    for text in spec.speculative.strategies:
        strategy = Strategy.parse(text)
        lengths[strategy.name] = _chain_with_mean(strategy.steps, mean)
    return AcceptanceModel(lengths=lengths)


def _chain_with_mean(depth: int, mean: float) -> dict[int, float]:
    mean = min(max(1.0, mean), depth + 1.0)
    if mean <= 1.0:
        return {1: 1.0}

    def dist(p: float) -> list[float]:
        return [p**j * (1.0 - p) for j in range(depth)] + [p**depth]

    lo, hi = 0.0, 1.0
    for _ in range(60):  # the mean grows with p: bisect
        p = (lo + hi) / 2.0
        if sum((j + 1) * q for j, q in enumerate(dist(p))) < mean:
            lo = p
        else:
            hi = p
    return {j + 1: q for j, q in enumerate(dist((lo + hi) / 2.0))}


def _step_threshold(record: dict, override: int | None, default: int) -> int:
    """The threshold a logged step ran with (`--batch-threshold` overrides it)."""
    if override is not None:
        return override
    logged = record.get("batch_threshold")
    return int(logged) if isinstance(logged, int) and not isinstance(logged, bool) else default


def calibrate_run(spec: ReasoningRLJobSpec, profile: Profile, run_dir: str | Path, *, prompt_tokens: int | None = None,
              batch_threshold: int | None = None, poll_seconds: float = 0.0, seed: int = 0) -> Calibration:
    """Each logged step's rollout replayed in the simulator next to its measured time. `poll_seconds`:
    a coordinator that notices the rollout's end only at its next poll (0: at once, as it does)."""
    records, step_records = read_run(run_dir)
    # Runs log their prompt length and resolved threshold; the options override (older runs lack them).
    logged_prompts = [float(r["prompt_tokens"]) for r in records if isinstance(r.get("prompt_tokens"), (int, float))]
    if prompt_tokens is None and logged_prompts:
        prompt_tokens = round(sum(logged_prompts) / len(logged_prompts))
    # `auto` is re-resolved after every step: each step replays with the threshold it ran.
    override = batch_threshold
    logged_threshold = next((int(r["batch_threshold"]) for r in records if isinstance(r.get("batch_threshold"), int)), None)
    if batch_threshold is None:
        batch_threshold = logged_threshold
    if prompt_tokens is not None:
        profile = profile.with_changes(prompt_tokens=prompt_tokens)
    # No pod starts, role switches or rewards inside a replayed rollout; the drafter does
    # not learn within it (its measured acceptance stands for it).
    profile = profile.with_changes(pod_start_seconds=0.0, role_switch_seconds=0.0)
    if not speculates(spec):
        spec = spec.model_copy(update={"speculative": spec.speculative.model_copy(update={"mode": "off"})})
    threshold = batch_threshold if batch_threshold is not None else embedded_threshold(profile, spec)
    steps = []
    for record in records:
        step = int(record["step"])
        groups = record["groups"]
        flat = [n for g in groups for n in g]
        acceptance = float((step_records.get(step) or {}).get("acceptance_length") or 0.0)
        replay = StepReplay(step=step, measured_seconds=float(record["time_rollout"]), simulated_seconds=None,
                            sequences=len(flat), tokens=sum(flat), acceptance_length=acceptance)
        sizes = {len(g) for g in groups}
        if int(record.get("sampling_rounds", 1)) > 1:
            replay.note = (f"not replayed: sampled in {record['sampling_rounds']} rounds and the record "
                           "does not say which groups each round decoded")
        elif len(sizes) != 1:
            replay.note = f"not replayed: groups of different sizes {sorted(sizes)}"
        else:
            step_spec = spec.model_copy(update={
                "rollout": spec.rollout.model_copy(update={"replicas": int(record["shards"])}),
                "algorithm": spec.algorithm.model_copy(update={"group_size": sizes.pop(),
                                                               "prompts_per_step": len(groups)}),
            })
            step_profile = profile.with_changes(acceptance=acceptance_with_mean(spec, acceptance))
            replay.simulated_seconds = predict_rollout_seconds(
                step_profile, flat, step_spec, mode="tlt", seed=seed, control_interval_s=POLL_SECONDS,
                batch_threshold=_step_threshold(record, override, threshold), poll_seconds=poll_seconds)
        steps.append(replay)
    setting = {
        "run_dir": str(run_dir),
        "profile": profile.name,
        "profile_source": profile.source,
        "rollout_shards": sorted({int(r["shards"]) for r in records}),
        "max_batch_size": spec.rollout.max_batch_size,
        "speculative": spec.speculative.mode,
        "batch_threshold": threshold,
        "poll_seconds": poll_seconds,
        "prompt_tokens": profile.prompt_tokens,
        "consolidate_tail": spec.elasticity.consolidate_tail.enabled,
        "lend_idle": spec.elasticity.lend_idle,
    }
    return Calibration(steps, setting)


def format_calibration(result: Calibration, title: str = "") -> str:
    s = result.setting
    lines = [
        title or f"calibration: {s['run_dir']} replayed with cost table {s['profile_source'] or s['profile']}",
        f"shards {','.join(map(str, s['rollout_shards']))} x {s['max_batch_size']} slots, speculative "
        f"{s['speculative']} (threshold {s['batch_threshold']}), consolidation "
        f"{'on' if s['consolidate_tail'] else 'off'}, poll {s['poll_seconds']:g} s, prompt {s['prompt_tokens']} tokens",
        "",
        f"{'step':>4} {'seqs':>5} {'tokens':>7} {'accept':>6} {'measured s':>10} {'simulated s':>11} {'error':>8}",
    ]
    for st in result.steps:
        if st.simulated_seconds is None:
            lines.append(f"{st.step:>4} {st.sequences:>5} {st.tokens:>7} {st.acceptance_length:>6.2f} "
                         f"{st.measured_seconds:>10.3f} {'-':>11} {'-':>8}  {st.note}")
            continue
        lines.append(f"{st.step:>4} {st.sequences:>5} {st.tokens:>7} {st.acceptance_length:>6.2f} "
                     f"{st.measured_seconds:>10.3f} {st.simulated_seconds:>11.3f} {st.error_percent:>+7.1f}%")
    if result.replayed:
        err = result.error_percent
        lines += [
            "",
            f"total over {len(result.replayed)} steps: measured {result.measured_seconds:.3f}s, simulated "
            f"{result.simulated_seconds:.3f}s, error {err:+.1f}% ({'within' if abs(err) <= 20 else 'NOT within'} 20%)",
        ]
    else:
        lines += ["", "no step could be replayed"]
    return "\n".join(lines)
