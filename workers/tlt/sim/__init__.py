"""Trace-driven cluster simulator of a ReasoningRLJob, driving the real elastic policy and adaptive manager.

What tlt buys a job on 64 or 1,024 GPUs, before renting them:

    tlt simulate --gpus 64                  # built-in paper-like job, baseline vs tlt
    tlt simulate --gpus 1024 --json         # the same at scale, JSON for tooling
    tlt simulate job.yaml --gpus 256 --costs my-gpu.yaml --lengths trace:lengths.txt --out sim/

How it works (modules):
- `cluster`: the event heap. Rollout shards decode their prompt groups; every control
  interval (and at each phase change) a snapshot of all workers goes through
  `tlt.elastic.plan`, the very function the operator and the embedded loop call, and
  its actions are carried out with role-switch and pod-start latencies. Then rewards,
  the policy update (trainer GPUs, or every worker when colocated), weight sync.
- `shard`: decoding in chunks of iterations over which the decision of the shard's
  own `tlt.speculative.adaptive.AdaptiveManager` (threshold switch + bucketed bandit,
  reward = accepted tokens per second) holds; finishes shrink the batch inside a chunk.
- `acceptance`: tokens per speculation round from the drafter's acceptance rate, which
  grows with tokens trained on lent GPUs and decays with each policy update.
- `costs`: the cost table (target forward seconds per batch and verify width, drafter
  ratio, KV term) and the profile around it; reads `tlt bench costs --json` output.
  The built-in `qwen2.5-7b-h100` profile documents every number and its source.
- `lengths`: log-normal, Zipf, fixed, sampled from a file, or a replayed trace.
- `run`: baseline (speculation, lending, consolidation and drafter off: the veRL-like
  synchronous run) vs tlt on the same seed and lengths; the calibration predictor.
- `calibrate`: a measured run's logged rollouts replayed, simulated vs measured seconds.

Calibration against a measured run (`calibrate_run`, docs/simulator.md): every step of a
`tlt run` folder replayed through this simulator with a cost table measured on the same
machine, next to the measured rollout time:

    OMP_NUM_THREADS=1 taskset -c 1 tlt bench costs --batch-sizes 1,2,4,8,16,32 \
        --widths 1,2,4,5,7,9,17 --context 64 --repeats 15 --json costs.json
    tlt run examples/quickstart.yaml --fresh --run-dir /tmp/calib-run
    tlt simulate examples/quickstart.yaml --calibrate /tmp/calib-run --costs costs.json --prompt-tokens 15

The cost table then carries the engine's own measured terms (overhead per decode step
and per speculative round, KV reads padded to the longest context, fixed + per-token
prefill per admission), and the replay matches the runner's shard assignment, `auto`
threshold, measured acceptance length and 0.2 s poll. For one step by hand:

    profile = load_profile("costs.json").with_changes(prompt_tokens=15)
    predict_rollout_seconds(profile, measured_lengths_of_a_step, spec, mode="tlt",
                            control_interval_s=0.2, batch_threshold=1, poll_seconds=0.2)

Not modelled: KV-cache memory capacity (a shard holds any batch it is given), failures
(Replace actions are ignored), stragglers and network contention beyond a fixed
weight-sync time, prefill interference with decoding, asynchronous (off-policy) RL.
"""

from tlt.sim.acceptance import AcceptanceModel
from tlt.sim.calibrate import Calibration, CalibrationError, calibrate_run
from tlt.sim.cluster import CATEGORIES, ClusterSimulator, SimOptions, SimResult, StepResult
from tlt.sim.costs import BUILTIN_PROFILES, CostTable, CostTableError, Profile, load_profile, profile_from_dict
from tlt.sim.lengths import LengthModel, LengthSpecError, parse_lengths, read_lengths
from tlt.sim.run import (
    PAPER_SPEEDUP,
    breakdown_rows,
    Comparison,
    baseline_spec,
    compare,
    paper_job,
    predict_rollout_seconds,
    sample_lengths,
    scale_spec,
)

__all__ = [
    "AcceptanceModel",
    "BUILTIN_PROFILES",
    "CATEGORIES",
    "Calibration",
    "CalibrationError",
    "ClusterSimulator",
    "Comparison",
    "CostTable",
    "CostTableError",
    "LengthModel",
    "LengthSpecError",
    "PAPER_SPEEDUP",
    "Profile",
    "SimOptions",
    "SimResult",
    "StepResult",
    "baseline_spec",
    "breakdown_rows",
    "calibrate_run",
    "compare",
    "load_profile",
    "paper_job",
    "parse_lengths",
    "predict_rollout_seconds",
    "profile_from_dict",
    "read_lengths",
    "sample_lengths",
    "scale_spec",
]
