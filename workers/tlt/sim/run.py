"""Baseline vs tlt on the same seed and lengths, and the rollout-time predictor for calibration."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tlt.api.load import parse_job
from tlt.api.model import ReasoningRLJobSpec
from tlt.sim.cluster import CATEGORIES, ClusterSimulator, SimOptions, SimResult
from tlt.sim.costs import Profile
from tlt.sim.lengths import LengthModel

PAPER_SPEEDUP = (1.7, 2.1)  # end-to-end speedup the TLT paper reports over veRL


def baseline_spec(spec: ReasoningRLJobSpec) -> ReasoningRLJobSpec:
    """The veRL-like synchronous run: no speculation, no lending, no consolidation, no drafter."""
    elasticity = spec.elasticity.model_copy(
        update={"lend_idle": False,
                "consolidate_tail": spec.elasticity.consolidate_tail.model_copy(update={"enabled": False})}
    )
    return spec.model_copy(update={
        "speculative": spec.speculative.model_copy(update={"mode": "off"}),
        "elasticity": elasticity,
        "drafter": spec.drafter.model_copy(update={"enabled": False}),
    })


def scale_spec(spec: ReasoningRLJobSpec, gpus: int) -> ReasoningRLJobSpec:
    """The job on `gpus` GPUs: dedicated drafters kept, trainers in the spec's proportion, rollout the rest."""
    per_shard = max(1, spec.rollout.gpus_per_replica)
    if spec.placement == "colocated":
        shards = gpus // per_shard
        if shards < 1:
            raise ValueError(f"{gpus} GPUs cannot hold one {per_shard}-GPU worker")
        return spec.model_copy(update={"rollout": spec.rollout.model_copy(update={"replicas": shards})})
    drafter_gpus = 0
    if spec.drafter.enabled:
        drafter_gpus = spec.drafter.dedicated_replicas * max(1, spec.drafter.gpus_per_replica)
    per_trainer = max(1, spec.trainer.gpus_per_replica)
    rollout_gpus = spec.rollout.replicas * per_shard
    trainer_gpus = spec.trainer.replicas * per_trainer
    left = gpus - drafter_gpus
    trainers = max(1, round(left * trainer_gpus / (rollout_gpus + trainer_gpus) / per_trainer))
    shards = (left - trainers * per_trainer) // per_shard
    if shards < 1:
        raise ValueError(
            f"{gpus} GPUs leave no rollout shard after {trainers} trainer(s) and {drafter_gpus} drafter GPU(s)"
        )
    return spec.model_copy(update={
        "rollout": spec.rollout.model_copy(update={"replicas": shards}),
        "trainer": spec.trainer.model_copy(update={"replicas": trainers}),
    })


def sample_lengths(model: LengthModel, spec: ReasoningRLJobSpec, steps: int, seed: int) -> list[np.ndarray]:
    """Response lengths per step, from their own generator: both modes of a seed see the same ones."""
    count = spec.algorithm.prompts_per_step * spec.algorithm.group_size
    if model.kind == "trace":
        return model.replay(steps, count, spec.algorithm.max_response_tokens)
    rng = np.random.default_rng([seed, 7])
    return [model.sample(rng, count, spec.algorithm.max_response_tokens) for _ in range(steps)]


@dataclass
class Comparison:
    baseline: SimResult
    tlt: SimResult
    setting: dict

    @property
    def speedup(self) -> float:
        return _ratio(self.baseline.total_seconds, self.tlt.total_seconds)

    @property
    def step_speedups(self) -> list[float]:
        return [_ratio(b.seconds, t.seconds) for b, t in zip(self.baseline.steps, self.tlt.steps)]

    @property
    def rollout_speedup(self) -> float:
        baseline = sum(s.rollout_seconds for s in self.baseline.steps)
        return _ratio(baseline, sum(s.rollout_seconds for s in self.tlt.steps))

    def as_dict(self) -> dict:
        return {
            "setting": self.setting,
            "baseline": self.baseline.as_dict(),
            "tlt": self.tlt.as_dict(),
            "speedup": round(self.speedup, 4),
            "rollout_speedup": round(self.rollout_speedup, 4),
            "step_speedups": [round(x, 4) for x in self.step_speedups],
            "last_step_speedup": round(self.step_speedups[-1], 4) if self.step_speedups else None,
            "paper_speedup": list(PAPER_SPEEDUP),
        }


def compare(spec: ReasoningRLJobSpec, profile: Profile, lengths: list[np.ndarray], options: SimOptions,
            setting: dict | None = None, on_step=None) -> Comparison:
    """Run the baseline, then tlt, on the same lengths and seed; `on_step(mode, StepResult)` reports progress."""
    results = {}
    for mode, mode_spec in (("baseline", baseline_spec(spec)), ("tlt", spec)):
        report = (lambda step, mode=mode: on_step(mode, step)) if on_step else None
        results[mode] = ClusterSimulator(mode_spec, profile, lengths, options, mode=mode, on_step=report).run()
    return Comparison(results["baseline"], results["tlt"], setting or {})


def predict_rollout_seconds(profile: Profile, lengths, spec: ReasoningRLJobSpec, mode: str = "tlt", seed: int = 0,
                            control_interval_s: float = 1.0, batch_threshold: int | None = None,
                            poll_seconds: float = 0.0) -> float:
    """Predicted rollout time of one step whose responses have `lengths` (in order, as measured).

    For calibration against a real run: give the cost table `tlt bench costs` measured on the
    machine, the response lengths of one measured step, and the job's spec; compare with the
    measured rollout time of that step. `mode="baseline"` predicts the run without speculation.
    Groups of `groupSize` consecutive lengths go to shard n mod replicas, as the runners deal
    them. `batch_threshold` resolves `auto` as the run did; `poll_seconds`: the coordinator
    notices the end at its next poll (`tlt.sim.calibrate` replays a whole run this way).
    """
    lengths = np.clip(np.asarray(list(lengths), dtype=np.int64), 1, None)
    count = spec.algorithm.prompts_per_step * spec.algorithm.group_size
    if len(lengths) != count:
        spec = spec.model_copy(update={"algorithm": spec.algorithm.model_copy(update={
            "prompts_per_step": max(1, math.ceil(len(lengths) / spec.algorithm.group_size))})})
    run_spec = baseline_spec(spec) if mode == "baseline" else spec
    options = SimOptions(steps=1, seed=seed, control_interval_s=control_interval_s, timeline_workers=0,
                         batch_threshold=batch_threshold, poll_seconds=poll_seconds)
    profile = profile.with_changes(pod_start_seconds=0.0)
    result = ClusterSimulator(run_spec, profile, [lengths], options, mode=mode).run()
    return result.steps[0].rollout_seconds


# ---------------------------------------------------------------------------------
# The built-in paper-like job


def paper_job(gpus: int = 64, prompts_per_shard: int = 4, group_size: int = 16, max_tokens: int = 32768,
              steps: int = 5, consolidate: bool = False) -> ReasoningRLJobSpec:
    """A veRL-like colocated GRPO job of a 7B model, one GPU per rollout shard, 32K-token responses,
    on the torch engine (adaptive speculation per batch size; `engine: vllm` cannot do that).

    Prompts scale with the GPUs (`prompts_per_shard` prompt groups per shard), so every
    shard starts a step with prompts_per_shard x group_size sequences at any cluster size.
    Tail consolidation is off as in the TLT paper: with 32K contexts the KV reads of a
    packed tail slow the longest responses more than freeing shards gains (see the report).
    """
    body = {
        "apiVersion": "tlt.dev/v1alpha1",
        "kind": "ReasoningRLJob",
        "metadata": {"name": "paper-like"},
        "spec": {
            "model": {"hubId": "Qwen/Qwen2.5-7B-Instruct"},
            "data": {"path": "/datasets/math/train.jsonl"},
            "algorithm": {"name": "grpo", "steps": steps, "promptsPerStep": prompts_per_shard * gpus,
                          "groupSize": group_size, "maxResponseTokens": max_tokens},
            "placement": "colocated",
            "rollout": {"replicas": gpus, "gpusPerReplica": 1, "engine": "torch", "maxBatchSize": 256},
            "speculative": {"mode": "adaptive", "batchThreshold": "auto"},
            "elasticity": {"lendIdle": True, "consolidateTail": {"enabled": consolidate, "threshold": 8}},
        },
    }
    return parse_job(body).spec


def breakdown_rows(result: SimResult) -> dict[str, float]:
    """Share of GPU time per category, in percent."""
    gpu = result.gpu_seconds
    total = sum(gpu.values()) or 1.0
    return {c: 100.0 * gpu[c] / total for c in CATEGORIES}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan
