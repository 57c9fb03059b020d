"""Discrete-event simulation of one ReasoningRLJob on a cluster.

An event heap drives the workers through synchronous RL steps:

  rollout  shards decode their prompt groups (`ShardDecoder`, the adaptive manager and
           bandit of `tlt.speculative.adaptive` per shard); every control interval the
           snapshot of all workers goes through `tlt.elastic.plan` and its actions are
           carried out: lend (role switch, then drafter training), return (role switch
           back), consolidate (source and target stop at their current iteration
           boundary, the moved sequences are re-prefilled on the target), scale
           dedicated drafters (pod start). Phase changes are planned at once too.
  reward   the rewards not overlapped with the tail.
  train    trainer workers (colocated: every worker) update the policy once all are back.
  sync     new policy weights (and the averaged drafter) reach every worker.

Every worker's time is accounted by activity: rollout (decoding and prefill), drafter
(training the drafter), train, sync, switch (role switches and pod starts) and idle.
Everything random comes from generators seeded by `seed`: one run is reproducible,
and the baseline and tlt runs of a seed see the same response lengths.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from tlt.api.model import ReasoningRLJobSpec
from tlt.api.topology import (
    DRAFTER_ROLE,
    dedicated_drafters,
    head_role,
    lending_enabled,
    node_name,
    shard_names,
    shard_role,
    trainer_slots,
)
from tlt.elastic import (
    Consolidate,
    Lend,
    Progress,
    Replace,
    Return,
    ScaleDrafters,
    ShardState,
    Worker,
    plan,
)
from tlt.sim.costs import Profile
from tlt.sim.shard import ShardDecoder
from tlt.speculative.adaptive import AdaptiveManager, Strategy, ThresholdSwitch
from tlt.speculative.controller import speculates, speculation_controller

CATEGORIES = ("rollout", "drafter", "train", "sync", "switch", "idle")


class VLLMSchedule:
    """Speculation as `rollout.engine: vllm` runs it: one EAGLE chain fixed at start-up, drafted
    while a step runs at most `threshold` sequences (vLLM's per-batch-size schedule), no bandit."""

    def __init__(self, strategy: Strategy, threshold: int):
        self.strategy = strategy
        self.switch = ThresholdSwitch(threshold)

    def set_threshold(self, threshold: int) -> None:
        self.switch.threshold = threshold  # vLLM's schedule has no hysteresis

    def decide(self, batch: int) -> Strategy | None:
        return self.strategy if batch > 0 and self.switch.update(batch) else None

    def record(self, strategy: Strategy, batch: int, tokens: int, seconds: float) -> None:
        pass


def engine_strategies(spec: ReasoningRLJobSpec) -> list[Strategy]:
    """The strategies the job's rollout engine can use: the torch engine's bandit arms, or vLLM's one chain."""
    if spec.rollout.engine == "vllm":
        from tlt.engine.vllm_config import draft_depth

        depth = draft_depth(spec)
        return [Strategy(depth, 1, depth)]
    return [Strategy.parse(x) for x in spec.speculative.strategies]


def describe_engine(spec: ReasoningRLJobSpec) -> str:
    """Which engine the simulation models, and how it speculates."""
    s = spec.speculative
    if not speculates(spec):
        return f"{spec.rollout.engine} (no speculation)"
    when = "always" if s.mode == "always" else (
        "at running batch <= the measured threshold" if s.batch_threshold == "auto" else f"at running batch <= {s.batch_threshold}")
    if spec.rollout.engine == "vllm":
        return f"vllm (fixed EAGLE chain of {engine_strategies(spec)[0].steps} tokens, {when}; no bandit)"
    if s.mode == "always":
        return f"torch (always {s.strategies[0]})"
    return f"torch (adaptive: bandit over {len(s.strategies)} strategies per batch bucket, {when})"


@dataclass(frozen=True)
class SimOptions:
    steps: int = 3
    seed: int = 0
    control_interval_s: float = 5.0
    max_chunk_iterations: int = 1024
    exact: bool = False  # speculative chunks never cross a finish (slower; for hand-checked schedules)
    timeline_workers: int = 48  # workers whose spans are kept for the plot (all are accounted)
    include_startup: bool = False  # account the pods' first start as a step-0 period
    drafter_tokens: float = 0.0  # what the drafter learned before the job (a warm start)
    batch_threshold: int | None = None  # `auto` resolved as the run did (None: from the cost table and acceptance)
    poll_seconds: float = 0.0  # the coordinator sees the rollout's end at its next poll (0: at once)


@dataclass
class StepResult:
    step: int
    seconds: float
    rollout_seconds: float
    train_seconds: float
    gpu_seconds: dict[str, float]
    generated_tokens: int
    speculative_tokens: int
    acceptance_alpha: float
    drafter_tokens: float
    batch_threshold: int | None

    def as_dict(self) -> dict:
        return {
            "step": self.step,
            "seconds": round(self.seconds, 4),
            "rollout_seconds": round(self.rollout_seconds, 4),
            "train_seconds": round(self.train_seconds, 4),
            "gpu_seconds": {k: round(v, 3) for k, v in self.gpu_seconds.items()},
            "generated_tokens": self.generated_tokens,
            "speculative_fraction": round(self.speculative_tokens / max(1, self.generated_tokens), 4),
            "drafter_alpha": round(self.acceptance_alpha, 4),
            "drafter_tokens_trained": round(self.drafter_tokens),
            "batch_threshold": self.batch_threshold,
        }


@dataclass
class SimResult:
    mode: str
    gpus: int
    steps: list[StepResult]
    timeline: dict[str, list[tuple[float, float, str]]]
    actions: dict[str, int]
    startup_seconds: float

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    @property
    def gpu_seconds(self) -> dict[str, float]:
        return {c: sum(s.gpu_seconds[c] for s in self.steps) for c in CATEGORIES}

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "gpus": self.gpus,
            "total_seconds": round(self.total_seconds, 4),
            "gpu_seconds": {k: round(v, 3) for k, v in self.gpu_seconds.items()},
            "startup_seconds": self.startup_seconds,
            "actions": dict(self.actions),
            "steps": [s.as_dict() for s in self.steps],
        }


@dataclass
class _SimWorker:
    name: str
    role: str
    index: int
    gpus: int
    assigned: str | None = None
    ready: bool = True
    activity: str = "idle"
    since: float = 0.0
    shard: ShardDecoder | None = None
    manager: object | None = None
    chunk_token: int = 0  # events of a superseded chunk or switch are ignored
    chunk_start: float = 0.0
    switch_token: int = 0
    switching: bool = False
    lend_after_chunk: bool = False
    moves_out: list[tuple[str, int]] = field(default_factory=list)
    moves_in: int = 0

    @property
    def current_role(self) -> str:
        return self.assigned or self.role

    @property
    def rolls_out(self) -> bool:
        return self.role in ("rollout", "worker")

    @property
    def lent(self) -> bool:
        return self.role != "drafter" and self.current_role == "drafter"

    def snapshot(self, now: float) -> Worker:
        """The worker as the coordinator reports it: finishes inside a running chunk count once they happen."""
        state = ShardState()
        if self.shard is not None:
            done = self.shard.finished_within(now - self.chunk_start)
            running, waiting = self.shard.running - done, self.shard.queued
            out = sum(n for _, n in self.moves_out)
            from_waiting = min(out, waiting)
            state = ShardState(running=running - (out - from_waiting) + self.moves_in,
                               waiting=waiting - from_waiting, finished=self.shard.finished + done)
        return Worker(name=self.name, role=self.role, index=self.index, assigned=self.assigned, ready=self.ready,
                      shard=state)


class ClusterSimulator:
    """One run (baseline or tlt) of `steps` RL steps; `run()` returns a `SimResult`."""

    def __init__(self, spec: ReasoningRLJobSpec, profile: Profile, lengths: list[np.ndarray], options: SimOptions,
                 mode: str = "tlt", on_step=None):
        if len(lengths) < options.steps:
            raise ValueError(f"need response lengths for {options.steps} steps, got {len(lengths)}")
        self.spec = spec
        self.profile = profile
        self.lengths = lengths
        self.options = options
        self.mode = mode
        self.on_step = on_step  # called with each finished StepResult (progress display)
        self.now = 0.0
        self.heap: list = []
        self.counter = itertools.count()
        self.workers: dict[str, _SimWorker] = {}
        self.step = 0
        self.phase = "idle"
        self.tick_token = 0
        self.knowledge = options.drafter_tokens  # drafter training tokens, discounted by drift
        self.version_knowledge = options.drafter_tokens  # what the drafter version in use has learned
        self.drafter_tokens_step = 0.0
        self.unlearned = 0.0  # drafter tokens trained since the last policy update
        self.step_gpu: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
        self.timeline: dict[str, list[tuple[float, float, str]]] = {}
        self.actions: dict[str, int] = {}
        self.speculative_tokens = 0
        self.train_waiting: set[str] = set()
        self.train_started = False
        self.rollout_end = 0.0
        self.step_start = 0.0
        self.train_start = 0.0
        self.batch_threshold: int | None = None
        self._acceptance_cache: dict[Strategy, tuple] = {}
        self.tracked: dict[str, bool] = {}
        self._busy_hint = ""
        self.train_seconds = 0.0
        self._build_workers()
        self.elastic = lending_enabled(spec) or spec.elasticity.consolidate_tail.enabled
        self.non_shards = sum(not w.rolls_out for w in self.workers.values()) + dedicated_drafters(spec)

    # -- setup -----------------------------------------------------------------
    def _build_workers(self) -> None:
        spec = self.spec
        seeds = np.random.SeedSequence(self.options.seed).spawn(spec.rollout.replicas + 1)
        gpus = max(1, spec.rollout.gpus_per_replica)
        role = shard_role(spec)
        for i, name in enumerate(shard_names(spec)):
            w = _SimWorker(name=name, role=role, index=i, gpus=gpus)
            w.shard = ShardDecoder(spec.rollout.max_batch_size, self.profile, np.random.default_rng(seeds[i]),
                                   self.options.max_chunk_iterations, self.options.exact)
            w.manager = self._manager(i)
            self.workers[w.name] = w
        if spec.placement == "disaggregated":
            for slot in trainer_slots(spec):
                w = _SimWorker(name=slot.node, role=slot.role, index=slot.index, gpus=max(1, slot.gpus))
                self.workers[w.name] = w

    def _manager(self, index: int):
        """The shard's speculation policy, as its engine builds it (`auto` is resolved per step)."""
        spec = self.spec
        threshold = spec.speculative.batch_threshold if isinstance(spec.speculative.batch_threshold, int) else 1
        if spec.rollout.engine == "vllm" and spec.speculative.mode == "adaptive" and speculates(spec):
            return VLLMSchedule(engine_strategies(spec)[0], threshold)
        return speculation_controller(spec, threshold, seed=self.options.seed * 100003 + index,
                                      strategies=engine_strategies(spec))

    def _auto_threshold(self) -> int | None:
        """`batchThreshold: auto`: the engine's rule on the cost table, with the drafter version in use."""
        s = self.spec.speculative
        if s.mode != "adaptive" or not speculates(self.spec):
            return None
        if isinstance(s.batch_threshold, int):
            return s.batch_threshold
        if self.options.batch_threshold is not None:
            return self.options.batch_threshold
        best = 0
        for strategy in engine_strategies(self.spec):
            mean = self.profile.acceptance.mean(strategy, self.version_knowledge)
            best = max(best, self.profile.costs.auto_threshold(strategy, mean))
        return best

    # -- event loop --------------------------------------------------------------
    def _at(self, time: float, kind: str, *payload) -> None:
        heapq.heappush(self.heap, (time, next(self.counter), kind, payload))

    def run(self) -> SimResult:
        startup = self.profile.pod_start_seconds
        for w in self.workers.values():
            self._set(w, "switch")
        # Dedicated drafter pods start with the job (the first plan would ask for them too).
        self._scale_drafters(dedicated_drafters(self.spec))
        self.now = startup
        for w in self.workers.values():
            self._set(w, "switch" if w.switching else "idle")
        startup_gpu = dict(self.step_gpu)
        self.step_gpu = dict.fromkeys(CATEGORIES, 0.0)
        steps: list[StepResult] = []
        for step in range(1, self.options.steps + 1):
            steps.append(self._run_step(step))
            if self.on_step:
                self.on_step(steps[-1])
        if self.options.include_startup:
            steps.insert(0, StepResult(0, startup, 0.0, 0.0, startup_gpu, 0, 0, 0.0, 0.0, None))
        return SimResult(self.mode, sum(w.gpus for w in self.workers.values()), steps, self.timeline, self.actions,
                         startup)

    def _run_step(self, step: int) -> StepResult:
        start = self.now
        self.step_start = start
        self.step = step
        self.phase = "rollout"
        self.drafter_tokens_step = 0.0
        self.speculative_tokens = 0
        self._acceptance_cache.clear()
        self.batch_threshold = self._auto_threshold()
        for w in self.workers.values():
            if isinstance(w.manager, (AdaptiveManager, VLLMSchedule)) and self.batch_threshold is not None:
                w.manager.set_threshold(self.batch_threshold)
        self._assign(self.lengths[step - 1])
        self._control()
        for w in self._shards():
            self._maybe_decode(w)
        self.tick_token += 1
        if self.elastic:  # without lending or consolidation a periodic plan has nothing to do
            self._at(self.now + self.options.control_interval_s, "tick", self.tick_token)
        self._check_rollout_done()
        self.done = False
        while not self.done:
            time, _, kind, payload = heapq.heappop(self.heap)
            self.now = max(self.now, time)
            getattr(self, "_on_" + kind)(*payload)
        generated = sum(w.shard.generated for w in self._shards())
        for w in self.workers.values():  # spans end at the step boundary so each step is accounted alone
            self._set(w, w.activity)
        result = StepResult(
            step=step,
            seconds=self.now - start,
            rollout_seconds=self.rollout_end - start,
            train_seconds=self.train_seconds,
            gpu_seconds=self.step_gpu,
            generated_tokens=generated,
            speculative_tokens=self.speculative_tokens,
            acceptance_alpha=self.profile.acceptance.alpha(self.version_knowledge_used),
            drafter_tokens=self.drafter_tokens_step,
            batch_threshold=self.batch_threshold,
        )
        self.step_gpu = dict.fromkeys(CATEGORIES, 0.0)
        return result

    def _assign(self, lengths: np.ndarray) -> None:
        """All samples of a prompt group on one shard; groups dealt round-robin."""
        shards = self._shards()
        group = self.spec.algorithm.group_size
        groups = [lengths[i:i + group] for i in range(0, len(lengths), group)]
        for g, sample in enumerate(groups):
            shards[g % len(shards)].shard.assign(sample, self.profile.prompt_tokens)
        self.step_tokens = int(lengths.sum()) + len(lengths) * self.profile.prompt_tokens
        self.version_knowledge_used = self.version_knowledge

    def _shards(self) -> list[_SimWorker]:
        return [w for w in self.workers.values() if w.rolls_out]

    # -- accounting ----------------------------------------------------------------
    def _set(self, w: _SimWorker, activity: str) -> None:
        """Close the worker's current span and start `activity` now."""
        duration = self.now - w.since
        if duration > 0:
            self.step_gpu[w.activity] += duration * w.gpus
            if w.activity == "drafter":
                trained = duration * w.gpus * self.profile.drafter_train_tokens_per_second
                self.unlearned += trained
                self.drafter_tokens_step += trained
            if self._tracked(w):
                spans = self.timeline.setdefault(w.name, [])
                if spans and spans[-1][2] == w.activity and abs(spans[-1][1] - w.since) < 1e-9:
                    spans[-1] = (spans[-1][0], self.now, w.activity)
                else:
                    spans.append((w.since, self.now, w.activity))
        w.activity = activity
        w.since = self.now

    def _tracked(self, w: _SimWorker) -> bool:
        """Workers drawn in the timeline: every trainer and drafter (up to 8 each), shards fill the rest."""
        if w.name not in self.tracked:
            limit = self.options.timeline_workers
            if w.rolls_out:
                room = limit - min(8, self.non_shards)
                keep = w.index < room
            else:
                keep = w.index < 8
            self.tracked[w.name] = keep
        return self.tracked[w.name]

    # -- the elastic policy ------------------------------------------------------------
    def _control(self) -> None:
        snapshot = [w.snapshot(self.now) for w in self.workers.values()]
        progress = Progress(step=self.step, phase=self.phase, batch_threshold=self.batch_threshold)
        for action in plan(self.spec, snapshot, progress):
            kind = type(action).__name__
            self.actions[kind] = self.actions.get(kind, 0) + 1
            if isinstance(action, Lend):
                self._lend(self.workers[action.worker])
            elif isinstance(action, Return):
                self._return(self.workers[action.worker])
            elif isinstance(action, Consolidate):
                self._consolidate(action)
            elif isinstance(action, ScaleDrafters):
                self._scale_drafters(action.replicas)
            elif isinstance(action, Replace):  # no failures are simulated
                pass

    def _lend(self, w: _SimWorker) -> None:
        if w.shard is not None and w.shard.pending is not None:
            w.lend_after_chunk = True  # its last sequences end with the running chunk: lent right after
            return
        w.assigned = "drafter"
        self._switch(w)

    def _return(self, w: _SimWorker) -> None:
        w.assigned = None
        w.lend_after_chunk = False
        self._switch(w)

    def _switch(self, w: _SimWorker) -> None:
        self._set(w, "switch")
        w.switching = True
        w.switch_token += 1
        self._at(self.now + self.profile.role_switch_seconds, "switched", w.name, w.switch_token)

    def _on_switched(self, name: str, token: int) -> None:
        w = self.workers[name]
        if token != w.switch_token:
            return
        w.switching = False
        w.ready = True
        if w.current_role == "drafter":
            self._set(w, "drafter")
        elif self.phase == "train" and name in self.train_waiting:
            self._set(w, "idle")
            self._maybe_train(name)
        elif self.phase == "sync" and w.role != "drafter":
            self._set(w, "sync")
        else:
            self._set(w, "idle")
            self._maybe_decode(w)

    def _consolidate(self, action: Consolidate) -> None:
        """Sources stop at their current iteration boundary, hand over, and the target admits the moved ones."""
        target = self.workers[action.target]
        self._interrupt(target)
        for source, count in zip(action.sources, action.sequences):
            w = self.workers[source]
            w.moves_out.append((action.target, count))
            target.moves_in += count
            self._interrupt(w)
            self._hand_over(w)
            if not w.shard.work:
                self._set(w, "idle")
            self._maybe_decode(w)
        self._maybe_decode(target)

    def _interrupt(self, w: _SimWorker) -> None:
        if w.shard.pending is None:
            return
        w.shard.interrupt(self.now - w.chunk_start)
        w.chunk_token += 1  # its scheduled end is void
        self._commit(w)

    def _hand_over(self, w: _SimWorker) -> None:
        for target_name, count in w.moves_out:
            target = self.workers[target_name]
            target.moves_in -= count
            target.shard.receive(w.shard.take(count))
        w.moves_out.clear()

    def _scale_drafters(self, replicas: int) -> None:
        existing = sorted((w for w in self.workers.values() if w.role == "drafter"), key=lambda w: w.index)
        for w in existing[replicas:]:
            self._set(w, "idle")
            del self.workers[w.name]
        gpus = max(1, self.spec.drafter.gpus_per_replica)
        for i in range(len(existing), replicas):
            w = _SimWorker(name=node_name(DRAFTER_ROLE, i), role=DRAFTER_ROLE, index=i, gpus=gpus, ready=False, since=self.now)
            self.workers[w.name] = w
            w.switching = True
            self._set(w, "switch")
            w.switch_token += 1
            self._at(self.now + self.profile.pod_start_seconds, "switched", w.name, w.switch_token)

    # -- rollout -------------------------------------------------------------------------
    def _maybe_decode(self, w: _SimWorker) -> None:
        if (self.phase != "rollout" or w.shard is None or w.switching or w.current_role != w.role
                or w.shard.pending is not None or w.shard.work == 0):
            return
        manager = w.manager
        if manager is None:
            chunk = w.shard.plan_chunk(lambda batch: None, self._acceptance, 0)
        else:
            if isinstance(manager, AdaptiveManager):
                # Off stays off above the threshold; a strategy holds within the bandit's bucket.
                chunk = w.shard.plan_chunk(manager.decide, self._acceptance, manager.switch.threshold,
                                           lambda batch: _bucket_floor(manager.bandit, batch),
                                           lambda batch, arm: self._rounds_cap(manager.bandit, batch, arm),
                                           chose_plain=lambda: manager.plain_chosen)
            elif isinstance(manager, VLLMSchedule):  # off above the threshold; the one chain holds below it
                chunk = w.shard.plan_chunk(manager.decide, self._acceptance, manager.switch.threshold, lambda batch: 0)
            else:
                chunk = w.shard.plan_chunk(manager.decide, self._acceptance, None, lambda batch: 0)
        self._set(w, "rollout")
        w.chunk_token += 1
        w.chunk_start = self.now
        self._at(self.now + chunk.total_seconds, "chunk", w.name, w.chunk_token)

    def _rounds_cap(self, bandit, batch: int, arm: Strategy) -> int:
        """Short chunks while an arm is new in a bucket, growing with each reward it has there."""
        seen = len(bandit.rewards.get((bandit.bucket(batch), arm), ()))
        return min(self.options.max_chunk_iterations, 8 << min(seen, 30))

    def _commit(self, w: _SimWorker) -> None:
        chunk = w.shard.commit()
        tokens = int(chunk.tokens.sum())
        if chunk.strategy is not None:
            self.speculative_tokens += tokens
            w.manager.record(chunk.strategy, chunk.batch, tokens, chunk.seconds)
        elif isinstance(w.manager, AdaptiveManager):
            w.manager.record_plain(chunk.batch, tokens, chunk.seconds)  # the bandit's plain arm

    def _acceptance(self, strategy: Strategy):
        if strategy not in self._acceptance_cache:
            model = self.profile.acceptance
            self._acceptance_cache[strategy] = model.distribution(strategy, self.version_knowledge_used)
        return self._acceptance_cache[strategy]

    def _on_chunk(self, name: str, token: int) -> None:
        w = self.workers[name]
        if token != w.chunk_token:
            return
        self._commit(w)
        self._set(w, "idle")
        if w.shard.work:
            self._maybe_decode(w)
        else:
            if w.lend_after_chunk:
                w.lend_after_chunk = False
                w.assigned = "drafter"
                self._switch(w)
            self._check_rollout_done()

    def _on_tick(self, token: int) -> None:
        if token != self.tick_token or self.phase != "rollout":
            return
        self._control()
        self._at(self.now + self.options.control_interval_s, "tick", token)

    def _check_rollout_done(self) -> None:
        if self.phase != "rollout":
            return
        hint = self.workers.get(self._busy_hint)
        if hint is not None and _busy(hint):
            return  # the shard that was busy last time usually still is
        for w in self._shards():
            if _busy(w):
                self._busy_hint = w.name
                return
        self.rollout_end = self.now
        poll = self.options.poll_seconds
        if poll > 0:  # the coordinator notices at its first poll after the last finish
            polls = math.ceil((self.now - self.step_start) / poll - 1e-9)
            self.rollout_end = self.step_start + max(1.0, polls) * poll
        self.phase = "reward"
        self.tick_token += 1
        self._control()
        self._at(self.rollout_end + self.profile.reward_seconds, "reward_done")

    # -- training and sync ------------------------------------------------------------------
    def _trainers(self) -> list[_SimWorker]:
        role = head_role(self.spec)
        return [w for w in self.workers.values() if w.role == role]

    def _on_reward_done(self) -> None:
        self.phase = "train"
        self.train_started = False
        self.train_seconds = 0.0
        self._control()
        self.train_waiting = {w.name for w in self._trainers() if w.switching or w.current_role != w.role}
        self._maybe_train()

    def _maybe_train(self, back: str | None = None) -> None:
        """Training starts once every trainer is back in its own role."""
        self.train_waiting.discard(back)
        if self.train_started or self.train_waiting:
            return
        trainers = self._trainers()
        self.train_started = True
        gpus = sum(w.gpus for w in trainers)
        self.train_seconds = self.profile.train_fixed_seconds + self.step_tokens / (
            self.profile.train_tokens_per_second * gpus
        )
        self.train_start = self.now
        for w in trainers:
            self._set(w, "train")
        self._at(self.now + self.train_seconds, "train_done")

    def _on_train_done(self) -> None:
        for w in self.workers.values():  # the drafter's knowledge so far, then the target moves on
            if w.activity == "drafter":
                self._set(w, "drafter")
        # What the drafter learned on this step's rollouts, then the target moves on.
        generated = sum(w.shard.generated for w in self._shards())
        self.knowledge += self.profile.acceptance.learned(self.unlearned, generated)
        self.unlearned = 0.0
        self.knowledge = self.profile.acceptance.after_policy_update(self.knowledge)
        self.phase = "sync"
        self._control()
        for w in self.workers.values():
            if w.role != "drafter" and not w.switching:
                self._set(w, "sync")
        self._at(self.now + self.profile.weight_sync_seconds, "sync_done")

    def _on_sync_done(self) -> None:
        for w in self.workers.values():
            if w.activity == "sync":
                self._set(w, "drafter" if w.current_role == "drafter" else "idle")
        if self.step % self.spec.drafter.sync_every == 0 and self.version_knowledge != self.knowledge:
            self.version_knowledge = self.knowledge
            for w in self.workers.values():
                if isinstance(w.manager, AdaptiveManager):
                    w.manager.drafter_changed()  # a new drafter version, as the engine's
        self.phase = "idle"
        self.done = True



def _bucket_floor(bandit, batch: int) -> int:
    """Largest batch size below `batch`'s bucket: the bandit treats every size above it alike."""
    index = bandit.bucket(batch)
    return bandit.buckets[index - 1] if index > 0 else 0


def _busy(w: _SimWorker) -> bool:
    return bool(w.shard.work or w.shard.pending is not None or w.moves_out or w.moves_in)
