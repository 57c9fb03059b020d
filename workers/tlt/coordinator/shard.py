"""One rollout worker: its engine (torch or vLLM), its rollout buffer, and drafter training while lent.

Plain Python (tested without Ray); `tlt.coordinator.actors` wraps it as a Ray actor.
Rollout runs in a background thread so the control loop can poll progress, lend the
worker once it drains, and take sequences away from it for tail consolidation.

Both engines offer the same calls (submit, step, counters, preempt, weight updates,
sleep/wake). With vLLM the shard also keeps a torch copy of the policy: drafter
training needs the target's hidden states, which vLLM does not return. It waits in
CPU memory while vLLM decodes and moves to the GPU while the shard is lent (vLLM asleep).
"""

from __future__ import annotations

import os
import tempfile
import threading
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from tlt.api.model import ReasoningRLJobSpec
from tlt.drafter import RolloutBuffer, Sample, SpotTrainer, TrainConfig, drafter_metrics
from tlt.drafter.buffer import make_windows, prefill_hidden
from tlt.drafter.packing import micro_batches
from tlt.engine.memory import fit_kv_memory
from tlt.engine.torch_engine import TorchEngine
from tlt.engine.types import Counters, Request, Result
from tlt.models.config import ConfigError
from tlt.models.drafter import EagleDrafter
from tlt.models.loading import load_model, load_weights
from tlt.speculative.adaptive import AdaptiveManager, FixedStrategy, Strategy
from tlt.speculative.controller import speculates, speculation_controller
from tlt.speculative.ngram import NgramDrafter
from tlt.trainer.sync import receiver_metrics


PREFILL_TOKENS = 1024  # most (padded) tokens per target prefill preparing drafter data: a reclaim waits for one
# Tokens per lent drafter training step (one packed micro-batch): many small optimizer steps per
# short lend, and a reclaim waits for one of them at most
DRAFTER_BATCH_TOKENS = 1024
# Online drafter training: after its warmup the rate falls as 1/sqrt(1 + steps/30) (half the peak
# after 90 more optimizer steps). A constant rate high enough to learn within the first RL steps
# (6e-3 on the quickstart) pulled a warmed-up drafter down from 5.9 to 4.7 within 4 versions (1e-3
# held 5.75); with the decay, fresh drafters at 1e-2 reached 4.1-6.0 over steps 17-24 in six runs
# (one run at a constant 6e-3: 4.3-5.3), and 4.7-6.3 in six runs once attention per window made a
# training step 1.8x cheaper (`bench/drafter_packing.py`).
DRAFTER_LR_DECAY_STEPS = 30
PROBE_TOKENS = 128  # response tokens per prompt when measuring a drafter's acceptance length


def bind_threads(cores: list[int] | None) -> None:
    """Run this process's torch work on `cores` only (a lent worker uses only its share)."""
    if not cores:
        return
    try:
        os.sched_setaffinity(0, set(cores))
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: the thread count below still bounds the share
    torch.set_num_threads(len(cores))


def _prefill_chunks(samples: list[Sample]) -> list[list[Sample]]:
    """`samples` in order, cut into chunks of at most PREFILL_TOKENS when padded to their longest
    (a longer sequence alone)."""
    chunks: list[list[Sample]] = []
    for sample in samples:
        chunk = chunks[-1] if chunks else None
        if chunk and (len(chunk) + 1) * max(len(sample.tokens), *(len(s.tokens) for s in chunk)) <= PREFILL_TOKENS:
            chunk.append(sample)
        else:
            chunks.append([sample])
    return chunks


def rollout_device(spec: ReasoningRLJobSpec) -> str:
    """CUDA when the spec gives rollout shards GPUs and this machine has one, else the CPU."""
    return "cuda" if spec.rollout.gpus_per_replica > 0 and torch.cuda.is_available() else "cpu"


def initial_drafter(spec: ReasoningRLJobSpec, target, state: dict | None = None) -> EagleDrafter:
    """The drafter a shard starts from: a checkpoint's `state` (resume), else `drafter.initCheckpoint`
    (an EAGLE folder, e.g. from `tlt drafter warmup`), else a fresh one."""
    if state or not spec.drafter.init_checkpoint:
        drafter = EagleDrafter.for_target(target, seed=spec.algorithm.seed)
        if state:
            drafter.load_state(state)
    else:
        folder = spec.drafter.init_checkpoint
        try:
            drafter = EagleDrafter.load(folder, target)
        except (OSError, ValueError) as err:  # ConfigError is a ValueError
            raise ConfigError(f"spec.drafter.initCheckpoint: {folder}: {err} "
                              "(a drafter folder is what `tlt drafter warmup --out DIR` writes)") from None
    return drafter


def auto_threshold(spec: ReasoningRLJobSpec, costs, acceptance_length: float | None) -> int:
    """`batchThreshold: auto`: the largest running batch at which the first strategy pays on this
    machine's cost table (`tlt.speculative.costs.CostTable`), at the acceptance length the drafter was
    measured to reach (None: nothing measured, e.g. no drafter); at least 1."""
    strategy = Strategy.parse(spec.speculative.strategies[0])
    if acceptance_length is None:
        return max(1, costs.auto_threshold(strategy))
    return max(1, costs.auto_threshold(strategy, acceptance_length=acceptance_length))


def newest_acceptance(measured) -> float | None:
    """The acceptance length of the newest drafter version any shard measured, from the shards'
    `(version, accepted tokens, verify rounds)`; None when none verified a round. Older versions are
    left out: a shard whose tail never reached a speculating batch still reports the last version it
    measured, and mixing that in held `auto` low for steps after the drafter had learned."""
    measured = [m for m in measured if m[2]]
    if not measured:
        return None
    newest = max(v for v, _, _ in measured)
    return sum(t for v, t, _ in measured if v == newest) / sum(r for v, _, r in measured if v == newest)


def cost_batch_sizes(spec: ReasoningRLJobSpec) -> tuple[int, ...]:
    """The running batches `auto`'s cost table is measured at: powers of two up to the most a shard
    decodes at once (`rollout.maxBatchSize`, or a step's rollouts if fewer), and that most itself,
    so `auto` can reach every batch the shards run."""
    most = min(spec.rollout.max_batch_size, spec.algorithm.prompts_per_step * spec.algorithm.group_size)
    sizes = [1 << i for i in range(most.bit_length()) if 1 << i < most]
    return (*sizes, most)


def preflight(spec: ReasoningRLJobSpec, decodes: bool = True) -> str | None:
    """What stops this machine from running the job's workers, in one line naming the field and
    the fix, or None; checked before any work starts (`tlt run`, `tlt worker`). `decodes`: the
    machine runs rollout shards (a trainer pod does not need vLLM)."""
    from tlt.engine.vllm_backend import engine_problem

    problem = engine_problem(spec) if decodes else None
    folder = spec.drafter.init_checkpoint
    if problem is None and folder and spec.drafter.enabled and spec.drafter.architecture == "eagle":
        missing = [f for f in ("config.json", "model.safetensors") if not (Path(folder) / f).is_file()]
        if missing:
            problem = (f"spec.drafter.initCheckpoint: {folder} holds no {' or '.join(missing)}; point it at a "
                       "drafter folder (what `tlt drafter warmup --out DIR` writes) or remove the field")
    return problem


@dataclass
class ShardProgressReport:
    """What the control loop sees of a shard (mirrors tlt.api.model.ShardProgress)."""

    name: str
    role: str
    running: int
    waiting: int
    finished: int
    generated_tokens: int
    speculating: bool
    acceptance_length: float
    drafter_steps: int = 0
    busy: bool = False
    results_ready: int = 0
    near_ties: int = 0  # draws recomputed in float64 in this rollout (`tlt.speculative.sampling.Ties`)


@dataclass
class _Rollout:
    step: int
    thread: threading.Thread | None = None
    results: list[Result] = field(default_factory=list)
    error: BaseException | None = None
    # the engine's counters when the rollout started: progress reports this rollout's acceptance
    counters_at_start: Counters = field(default_factory=Counters)


class RolloutShard:
    """`engine`: "torch" or "vllm"; default `spec.rollout.engine` (drafter hosts and probes, which
    never decode a rollout, pass "torch")."""

    def __init__(self, name: str, model_dir: str, spec: ReasoningRLJobSpec, *, cores: list[int] | None = None,
                 batch_threshold: int = 4, drafter_state: dict | None = None, max_model_len: int | None = None,
                 max_slots: int | None = None, engine: str | None = None):
        bind_threads(cores)
        self.name = name
        self.spec = spec
        self.role = "rollout"
        self.engine_kind = engine or spec.rollout.engine
        device = rollout_device(spec)
        # With vLLM the torch copy is only for drafter training: it waits on the CPU (see the module doc).
        self.lend_device = device
        dtype = spec.model.dtype if spec.model.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
        self.model = load_model(model_dir, dtype=dtype, device="cpu" if self.engine_kind == "vllm" else device)
        self.policy_version = 0
        self.drafter_version = 0
        prompt_room = 256 if spec.task is not None else (spec.data.max_prompt_tokens if spec.data else 1024)
        self.max_model_len = max_model_len or spec.algorithm.max_response_tokens + prompt_room
        drafter = None
        self.eagle: EagleDrafter | None = None
        if speculates(spec):
            if spec.drafter.architecture == "eagle":
                self.eagle = drafter = initial_drafter(spec, self.model, drafter_state)
            else:
                drafter = NgramDrafter()
        if self.engine_kind == "vllm":
            self.engine = self._vllm_engine(model_dir, batch_threshold, max_slots)
        else:
            num_slots = max_slots or spec.rollout.max_batch_size
            if device == "cuda":  # the KV cache must fit spec.rollout.gpuMemoryUtilization (clear error if not)
                fit_kv_memory(self.model, num_slots, self.max_model_len, spec.rollout.gpu_memory_utilization,
                              drafter=drafter)
            self.engine = TorchEngine(
                self.model,
                num_slots=num_slots,
                max_model_len=self.max_model_len,
                drafter=drafter,
                speculation=speculation_controller(spec, batch_threshold) if drafter is not None else None,
            )
        self.buffer = RolloutBuffer(keep_steps=spec.drafter.buffer_steps)
        self.trainer: SpotTrainer | None = None
        if self.eagle is not None and spec.drafter.train_on_idle:
            self.trainer = SpotTrainer(
                self.eagle, TrainConfig(lr=spec.drafter.learning_rate, decay_steps=DRAFTER_LR_DECAY_STEPS),
                worker=name, metrics=drafter_metrics())
        self._rollout: _Rollout | None = None
        self._data_key: tuple | None = None
        # id(sample) -> (sample, its training windows): the hidden states the torch engine decoded
        # them with, or else one target prefill per buffered sequence
        self._windows: dict[int, tuple[Sample, list]] = {}
        self._data: list = []
        self._preempt = threading.Event()
        self._train_thread: threading.Thread | None = None
        self._lending = threading.Lock()  # lend and reclaim come from different actor threads
        self._lock = threading.Lock()
        self._drained = threading.Event()  # set when the decode loop has ended (nothing left to decode, or it failed)
        self._recorded = (0, 0)  # (accepted tokens, verify rounds) already in the drafter metrics
        self._measured: dict[int, tuple[int, int]] = {}  # drafter version -> its (accepted tokens, verify rounds)
        self._weights = None  # (WeightGroup, manifest, dtype) once in the trainer's weight group

    def _vllm_engine(self, model_dir: str, threshold: int, max_slots: int | None):
        from tlt.engine.vllm_backend import VLLMEngine, llm_kwargs

        drafter_dir = None
        if self.eagle is not None:  # vLLM loads its draft model from a folder at start-up
            drafter_dir = tempfile.mkdtemp(prefix=f"tlt-{self.name}-drafter-")
            weakref.finalize(self, __import__("shutil").rmtree, drafter_dir, True)
            self.eagle.save(drafter_dir, dtype=self.model.dtype)
        args = llm_kwargs(self.spec, model_dir, drafter_dir=drafter_dir, threshold=threshold,
                          max_model_len=self.max_model_len)
        if max_slots:
            args["max_num_seqs"] = max_slots
        return VLLMEngine(args, vocab_size=self.model.config.vocab_size, threshold=threshold)

    def _place_torch_copy(self, device: str) -> None:
        """vLLM shards: the torch policy and drafter go to the GPU while lent and back to the CPU after."""
        if self.engine_kind != "vllm" or self.lend_device == "cpu":
            return
        self.model.to(device)
        if self.eagle is not None:
            self.eagle.to(device)
        if device == "cpu":
            # prepared hidden states would hold the GPU during rollout
            self._data_key, self._data, self._windows = None, [], {}

    # ---- rollout ----
    def start_rollout(self, step: int, requests: list[Request]) -> None:
        """Start decoding `requests` in the background (a new step's rollout)."""
        self.reclaim()
        self.buffer.start_step(step)
        self._forget_dropped_windows()  # a shard that is never lent must not hoard them
        rollout = _Rollout(step, counters_at_start=self.engine.counters())
        self._rollout = rollout
        self._drained.clear()
        self.engine.wake()
        self.engine.submit(self._keeping_hidden(requests))
        rollout.thread = threading.Thread(target=self._decode_loop, args=(rollout,), daemon=True, name=f"{self.name}-decode")
        rollout.thread.start()

    def add_requests(self, requests: list[Request]) -> None:
        """More work for the running rollout (tail consolidation moves sequences here)."""
        self.reclaim()
        self.engine.submit(self._keeping_hidden(requests))
        rollout = self._rollout
        if rollout is not None and (rollout.thread is None or not rollout.thread.is_alive()):
            self._drained.clear()
            rollout.thread = threading.Thread(target=self._decode_loop, args=(rollout,), daemon=True)
            rollout.thread.start()

    def _keeping_hidden(self, requests: list[Request]) -> list[Request]:
        """A torch shard that trains a drafter asks for the hidden states its decode computes
        anyway (the EAGLE drafter reads them): a lend then trains on them without a prefill."""
        if self.trainer is None or self.engine_kind != "torch":
            return requests
        return [replace(r, return_hidden_states=True) for r in requests]

    def _decode_loop(self, rollout: _Rollout) -> None:
        try:
            while self.engine.has_work():
                done = self.engine.step()
                if done:
                    for r in done:
                        sample = Sample.of(r.prompt, r.tokens, self.policy_version)
                        if r.hidden_states is not None:  # kept in host memory: the GPU's is the KV cache's
                            self._keep_windows(sample, r.hidden_states.cpu())
                            r.hidden_states = None  # the coordinator gets the tokens, not the states
                        self.buffer.add(sample)
                    with self._lock:
                        rollout.results.extend(done)
        except BaseException as err:  # surfaced to the coordinator by take_results()
            rollout.error = err
        self._record_acceptance()  # before the coordinator moves the versions on
        self._drained.set()

    def _record_acceptance(self) -> None:
        """The rounds verified since the last call, into the acceptance length of the versions in use."""
        c = self.engine.counters()
        with self._lock:
            tokens, rounds = c.accepted_tokens - self._recorded[0], c.verify_rounds - self._recorded[1]
            if rounds > 0:
                self._recorded = (c.accepted_tokens, c.verify_rounds)
                drafter_metrics().accepted(self.drafter_version, self.policy_version, tokens, rounds)
                before = self._measured.get(self.drafter_version, (0, 0))
                self._measured[self.drafter_version] = (before[0] + tokens, before[1] + rounds)

    # ---- speculation's batch threshold (`auto`) ----
    def measured_acceptance(self) -> tuple[int, int, int]:
        """(drafter version, accepted tokens, verify rounds) of this shard's rollouts with the newest
        drafter version it measured: the one it runs, or until that has verified a round, the last one
        before it ((0, 0, 0): none). The coordinator pushes a new version after every step's rollout,
        before it re-tunes the threshold, and takes the newest version any shard measured."""
        self._record_acceptance()
        with self._lock:
            newest = max((v for v, (_, rounds) in self._measured.items() if rounds and v <= self.drafter_version), default=None)
            return (0, 0, 0) if newest is None else (newest, *self._measured[newest])

    def measure_acceptance(self, prompts: list[list[int]], stop_ids: list[int], strategy: Strategy) -> float | None:
        """The acceptance length this shard's drafter reaches on `prompts` at the rollout's sampling,
        speculating with `strategy` at every step (None without a drafter)."""
        drafter = self.engine.drafter if self.engine_kind == "torch" else None
        if drafter is None or not prompts:
            return None
        a = self.spec.algorithm
        requests = [Request(prompt=list(p), max_tokens=min(a.max_response_tokens, PROBE_TOKENS), stop_ids=list(stop_ids),
                            temperature=a.temperature, top_p=a.top_p, seed=a.seed + i, id=i)
                    for i, p in enumerate(prompts)]
        engine = TorchEngine(self.model, num_slots=len(requests), max_model_len=self.max_model_len,
                             drafter=NgramDrafter() if isinstance(drafter, NgramDrafter) else drafter,
                             speculation=FixedStrategy(strategy))
        engine.generate(requests)
        c = engine.counters()
        return c.mean_acceptance_length if c.verify_rounds else None

    def set_threshold(self, threshold: int) -> None:
        """Speculate at running batches up to `threshold` from now on (the torch engine's adaptive
        manager; vLLM's schedule is fixed at start-up)."""
        if self.engine_kind == "torch" and isinstance(self.engine.speculation, AdaptiveManager):
            self.engine.speculation.set_threshold(threshold)

    def progress(self) -> ShardProgressReport:
        self._record_acceptance()
        c = self.engine.counters()
        rollout = self._rollout
        busy = bool(rollout and rollout.thread and rollout.thread.is_alive())
        return ShardProgressReport(
            name=self.name, role=self.role, running=c.running, waiting=c.waiting, finished=c.finished,
            generated_tokens=c.generated_tokens, speculating=c.speculating,
            acceptance_length=c.acceptance_since(rollout.counters_at_start) if rollout else 0.0,
            drafter_steps=self.trainer.state.step if self.trainer else 0,
            busy=busy, results_ready=len(rollout.results) if rollout else 0,
            near_ties=c.near_ties - rollout.counters_at_start.near_ties if rollout else 0,
        )

    def take_results(self) -> list[Result]:
        """The sequences finished since the last call; re-raises a decode failure."""
        rollout = self._rollout
        if rollout is None:
            return []
        if rollout.error is not None:
            raise RuntimeError(f"{self.name}: rollout failed: {rollout.error!r}") from rollout.error
        with self._lock:
            out, rollout.results = rollout.results, []
        return out

    def wait_for_drain(self, timeout: float) -> bool:
        """Block until the decode loop has ended, at most `timeout` seconds: the coordinator lends a
        drained shard, and sees the end of a rollout, when it happens rather than at its next poll.
        Sequences that finish before are taken at the coordinator's control interval: waking it for
        each one (dozens a second while short responses finish) cost the decoding shards their
        cores, 10-25% of every speculative round on 2 CPU cores."""
        return self._drained.wait(timeout)

    def move_out(self, count: int) -> list[Request]:
        """Hand over up to `count` unfinished sequences as continuation requests (re-prefill elsewhere)."""
        rollout = self._rollout
        if rollout is None or count <= 0:
            return []
        return self.engine.preempt(count)

    # ---- lending ----
    def lend(self) -> bool:
        """Switch to drafter training on this worker's own rollouts (until reclaimed)."""
        with self._lending:
            if self.trainer is None or self.engine.has_work():
                return False
            if self._train_thread is not None and self._train_thread.is_alive():
                return True
            self.role = "drafter"
            if self.engine_kind == "vllm":
                self.engine.sleep()  # frees the GPU (weights to CPU memory, KV cache dropped)
                self._place_torch_copy(self.lend_device)
            self._preempt.clear()
            self._train_thread = threading.Thread(target=self._train_loop, daemon=True, name=f"{self.name}-drafter")
            self._train_thread.start()
            return True

    def _train_loop(self) -> None:
        batches = self._training_data()
        if batches is None or self._preempt.is_set():
            return
        self.trainer.set_data(batches)
        while not self._preempt.is_set():
            if self.trainer.run(preempt=self._preempt, max_steps=1).reason == "no-data":
                break

    def _keep_windows(self, sample: Sample, hidden: torch.Tensor) -> None:
        """A buffered sequence's training windows, cut from the target's states of its first
        `len(hidden)` tokens: all of them from a prefill; from decoding, all but the last token,
        which was never fed (no pair needs the state after it)."""
        fed = sample if len(hidden) == len(sample.tokens) else Sample(
            sample.tokens[:len(hidden)], sample.prompt_len, sample.policy_version)
        windows = make_windows([fed], [hidden], max_response_tokens=self.spec.drafter.window_tokens)
        with self._lock:
            self._windows[id(sample)] = (sample, windows)

    def _forget_dropped_windows(self) -> None:
        kept = {id(s) for s in self.buffer.samples()}
        with self._lock:
            self._windows = {k: v for k, v in self._windows.items() if k in kept}

    def _training_data(self):
        """Packed batches of the buffered rollouts. A sequence the torch engine decoded here brings
        its hidden states along; any other (put in the buffer directly, or decoded by vLLM, which
        returns none) gets one target prefill, in length-sorted chunks (little padding; a
        preemption waits for one chunk at most) whose results outlive the lend: lends are short,
        and a lend spent prefilling the whole buffer again trains nothing. A sequence keeps the
        hidden states of the policy that decoded or prefilled it (at most `drafter.bufferSteps`
        updates old)."""
        key = (len(self.buffer), self.buffer.dropped, tuple(self.buffer.steps))
        if self._data_key == key:
            return self._data
        samples = self.buffer.samples()
        if not samples:
            return None
        self._forget_dropped_windows()
        todo = sorted((s for s in samples if id(s) not in self._windows), key=lambda s: len(s.tokens))
        for chunk in _prefill_chunks(todo):
            if self._preempt.is_set():
                return None  # the chunks prefilled so far are kept for the next lend
            for sample, hidden in zip(chunk, prefill_hidden(self.model, chunk)):
                self._keep_windows(sample, hidden)
        batches = []
        for chunk in _prefill_chunks(samples):  # packed in pieces too: a reclaim waits for one
            if self._preempt.is_set():
                return None
            batches += micro_batches([w for s in chunk for w in self._windows[id(s)][1]], DRAFTER_BATCH_TOKENS)
        self._data_key, self._data = key, batches
        return batches

    def reclaim(self) -> None:
        """Preempt drafter training at once (within one micro-step) and go back to rollout."""
        with self._lending:  # a lend in another actor thread has started its thread, or not begun
            self._preempt.set()
            if self._train_thread is not None:
                self._train_thread.join()
                self._train_thread = None
            self._place_torch_copy("cpu")
            self.engine.wake()
            self.role = "rollout"

    # ---- weights ----
    def set_policy(self, version: int, state: dict) -> None:
        """New policy weights given as a state dict (a Ray object: start-up, a re-created worker, a fallback)."""
        self.reclaim()
        self._load_policy(state)
        self.policy_version = version
        receiver_metrics().updates.labels(via="object").inc()

    def _load_policy(self, state: dict) -> None:
        """Some or all policy weights (HF names) into the engine's model."""
        self.engine.update_policy_weights(state)
        if self.engine_kind == "vllm":  # the torch copy computes the drafter's training data
            with torch.no_grad():
                load_weights(self.model, dict(state), strict=False)

    def policy_receiver(self) -> tuple[str, str]:
        """(device type, dtype) this worker wants policy weights in (the weight group's transport)."""
        device = "cpu" if self.engine_kind == "vllm" else self.model.device.type  # vLLM takes weights as CPU tensors
        return device, str(self.model.dtype).removeprefix("torch.")

    def join_weight_group(self, address: str, port: int, epoch: int, rank: int, size: int, backend: str, dtype: str,
                          plan) -> None:
        """Join the trainer's weight broadcast group (`tlt.trainer.sync`), leaving an earlier one."""
        from tlt.trainer.sync import WeightGroup

        if self._weights is not None:
            self._weights[0].close()
            self._weights = None
        self._weights = (WeightGroup(address, port, epoch, rank, size, backend), plan, dtype)

    def receive_policy(self, version: int) -> bool:
        """New policy weights from the trainer's rank 0 over the weight group, loaded layer by layer."""
        import time

        from tlt.models.loading import resolve_dtype

        group, plan, dtype = self._weights
        self.reclaim()
        started = time.perf_counter()
        try:
            for part in group.receive(plan, resolve_dtype(dtype)):
                self._load_policy(part)
        except Exception:
            group.close()  # the coordinator forms the group again, and sends these weights another way
            self._weights = None
            raise
        metrics = receiver_metrics()
        metrics.updates.labels(via="broadcast").inc()
        metrics.seconds.inc(time.perf_counter() - started)
        self.policy_version = version
        return True

    def free_for_training(self) -> None:
        """Colocated: this worker's GPU trains next; free the rollout KV cache (re-allocated with the next weights)."""
        self.reclaim()
        self.engine.sleep()

    def drafter_report(self) -> tuple[int, int, dict | None]:
        """(version, optimizer steps trained in this version, weights) for averaging."""
        if self.eagle is None:
            return self.drafter_version, 0, None
        state = {k: v.detach().clone() for k, v in self.eagle.state_dict().items()}
        steps = self.trainer.steps_in_version if self.trainer else 0
        return self.drafter_version, steps, state

    def set_drafter(self, version: int, state: dict) -> None:
        self.reclaim()
        self._record_acceptance()
        if self.eagle is not None:
            self.engine.update_drafter_weights(state)
            if self.engine_kind == "vllm":
                self.eagle.load_state(state)
            if self.trainer is not None:
                self.trainer.start_version(version, state)
            drafter_metrics().pushed()
        self.drafter_version = version
        drafter_metrics().set_version(version)
