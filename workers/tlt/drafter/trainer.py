"""The spot trainer: trains the drafter only while its worker is lent, and gives the
device back within one micro-step when rollout work returns.

- AdamW on the drafter's own weights (fc and its decoder layer); the target's
  embedding and LM head are shared and frozen.
- Loss: `packing.loss_terms` (SmoothL1 + 0.1 x CE of LM-head distributions, masked
  to response tokens), accumulated over `grad_accum` micro-batches with exact
  per-token weights; linear lr warmup, then constant or, with `decay_steps`, an
  inverse-square-root decay (training is online and never "ends": the rate keeps
  falling slowly instead of reaching zero at a planned last step); gradient clipping.
- Preemption: `run(preempt)` checks the `threading.Event` before every micro-step and
  returns as soon as it is set. Everything (weights, optimizer moments, accumulated
  gradients, data cursor) stays in memory, so the next `run` continues exactly where
  this one stopped: the weights are identical to an uninterrupted run.
- Checkpoints: every `checkpoint_every` optimizer steps and at each preemption, a
  snapshot goes to an `AsyncCheckpointer`; `SpotTrainer.restore` resumes from the
  latest one after a crash or restart.

The data order is a pure function of (seed, epoch), and the cursor is the global
micro-step index, so a restored trainer replays the same batches.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .checkpoint import AsyncCheckpointer, read_state, snapshot
from .packing import Batch, loss_terms


@dataclass
class TrainConfig:
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    ce_weight: float = 0.1
    grad_accum: int = 1  # micro-batches per optimizer step
    checkpoint_every: int = 50  # optimizer steps; 0 = only at preemption
    seed: int = 0
    decay_steps: int = 0  # 0: constant after warmup; else lr * sqrt(d / (d + steps since warmup))

    def lr_at(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.decay_steps > 0:
            return self.lr * math.sqrt(self.decay_steps / (self.decay_steps + step - max(0, self.warmup_steps)))
        return self.lr


@dataclass
class RunResult:
    reason: str  # "preempted" | "done" | "no-data"
    steps: int  # optimizer steps done in this run
    micro_steps: int  # micro-steps done in this run
    loss: float | None  # mean loss of the last optimizer step


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps of this replica in all
    version_start: int = 0  # `step` when the current drafter version was loaded
    micro: int = 0  # micro-steps done inside the current accumulation group
    tokens: int = 0  # target tokens trained on
    preemptions: int = 0
    data_start: int = 0  # global micro index at which the current data began
    data_id: str = ""
    losses: list[float] = field(default_factory=list)  # per optimizer step (bounded)


def data_fingerprint(batches: Sequence[Batch]) -> str:
    h = hashlib.sha256()
    for b in batches:
        h.update(b.tokens.cpu().numpy().tobytes())
        h.update(b.loss_mask.cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class SpotTrainer:
    def __init__(self, drafter, config: TrainConfig | None = None,
                 checkpointer: AsyncCheckpointer | None = None, metrics=None, worker: str = "0"):
        self.drafter = drafter
        self.config = config or TrainConfig()
        self.checkpointer = checkpointer
        self.metrics = metrics
        self.worker = worker
        for p in drafter.target.parameters():  # shared with the engine: frozen
            p.requires_grad_(False)
        self.params = [p for p in drafter.parameters()]
        for p in self.params:
            p.requires_grad_(True)
        c = self.config
        decay = [p for p in self.params if p.dim() >= 2]
        no_decay = [p for p in self.params if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=c.lr_at(0), betas=c.betas)
        self.state = TrainerState()
        self.batches: list[Batch] = []
        self.version = 0
        self.micro_steps_total = 0  # micro-steps executed by this object (not restored)
        self._group_sum = 0.0
        self.on_micro_step: Callable[["SpotTrainer"], None] | None = None  # test/progress hook

    # ---- data ----
    def set_data(self, batches: Sequence[Batch]) -> None:
        """Train on `batches` from the next accumulation group on (new rollout data)."""
        batches = [b for b in batches if b.num_targets > 0]
        fid = data_fingerprint(batches)
        if fid == self.state.data_id:  # the same data (e.g. after a restore): keep the cursor
            self.batches = list(batches)
            return
        self.batches = list(batches)
        self._drop_partial_group()
        self.state.data_id = fid
        self.state.data_start = self._global_micro_index()

    def _drop_partial_group(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._group_sum = 0.0
        self.state.micro = 0

    def _global_micro_index(self) -> int:
        return self.state.step * self.config.grad_accum + self.state.micro

    def _batch_at(self, k: int) -> Batch:
        n = len(self.batches)
        rel = k - self.state.data_start
        epoch, i = divmod(rel, n)
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=gen)
        return self.batches[int(perm[i])]

    def _group_count(self, step: int) -> int:
        a = self.config.grad_accum
        return sum(self._batch_at(step * a + j).num_targets for j in range(a))

    # ---- training ----
    def run(self, preempt: threading.Event | None = None, max_steps: int | None = None,
            until_step: int | None = None) -> RunResult:
        """Train until `max_steps` more optimizer steps (or the total `until_step`) are
        done, or until `preempt` is set (checked before every micro-step)."""
        if not self.batches:
            return RunResult("no-data", 0, 0, None)
        goal = until_step if until_step is not None else (
            self.state.step + max_steps if max_steps is not None else None)
        steps = micro = 0
        last_loss = None
        self.drafter.train()
        dev = self.drafter.fc.weight.device
        while goal is None or self.state.step < goal:
            if preempt is not None and preempt.is_set():
                self.state.preemptions += 1
                if self.metrics is not None:
                    self.metrics.preempted(self.worker)
                self.checkpoint()
                return RunResult("preempted", steps, micro, last_loss)
            step = self.state.step
            batch = self._batch_at(self._global_micro_index()).to(dev)
            total = self._group_count(step)
            loss_sum, count = loss_terms(self.drafter, batch, self.config.ce_weight)
            (loss_sum / max(total, 1)).backward()
            self._group_sum += float(loss_sum.detach())
            self.state.micro += 1
            self.state.tokens += int(count)
            micro += 1
            self.micro_steps_total += 1
            if self.state.micro == self.config.grad_accum:
                last_loss = self._optimizer_step(total)
                steps += 1
            if self.on_micro_step is not None:
                self.on_micro_step(self)
        return RunResult("done", steps, micro, last_loss)

    def _optimizer_step(self, total: int) -> float:
        c = self.config
        for g in self.optimizer.param_groups:
            g["lr"] = c.lr_at(self.state.step)
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._group_sum / max(total, 1)
        self._group_sum = 0.0
        self.state.micro = 0
        self.state.step += 1
        self.state.losses.append(loss)
        del self.state.losses[:-1000]
        if self.metrics is not None:
            self.metrics.trained(self.worker, loss, total)
        if c.checkpoint_every and self.state.step % c.checkpoint_every == 0:
            self.checkpoint()
        return loss

    def mean_loss(self, last: int = 10) -> float | None:
        tail = self.state.losses[-last:]
        return sum(tail) / len(tail) if tail else None

    # ---- state ----
    def state_dict(self) -> dict:
        return {
            "step": self.state.step,
            "version": self.version,
            "trainer": asdict(self.state),
            "config": asdict(self.config),
            "drafter": self.drafter.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "grads": [p.grad for p in self.params],
            "group_sum": self._group_sum,
            "drafter_config": self.drafter.config.to_hf_dict(),
        }

    def checkpoint(self) -> None:
        """Hand a snapshot to the background writer (no disk wait)."""
        if self.checkpointer is not None:
            self.checkpointer.submit(snapshot(self.state_dict()))

    def load_state_dict(self, state: dict) -> None:
        self.drafter.load_state_dict(state["drafter"])
        self.optimizer.load_state_dict(state["optimizer"])
        for p, g in zip(self.params, state.get("grads") or [None] * len(self.params)):
            p.grad = None if g is None else g.to(p.device, p.dtype).clone()
        self._group_sum = state.get("group_sum", 0.0)
        t = state["trainer"]
        self.state = TrainerState(**t)
        self.version = state.get("version", 0)

    @classmethod
    def restore(cls, folder: str | Path, drafter, config: TrainConfig | None = None,
                metrics=None, worker: str = "0", checkpoint: bool = True) -> "SpotTrainer":
        """A trainer at the latest checkpoint in `folder` (or fresh when there is none),
        writing further checkpoints there."""
        folder = Path(folder)
        state = read_state(folder, map_location=drafter.fc.weight.device)
        if config is None and state is not None:
            cfg = dict(state["config"])
            cfg["betas"] = tuple(cfg["betas"])
            config = TrainConfig(**cfg)
        trainer = cls(drafter, config, AsyncCheckpointer(folder) if checkpoint else None, metrics, worker)
        if state is not None:
            trainer.load_state_dict(state)
        return trainer

    # ---- replicas (elastic data parallel) ----
    def start_version(self, version: int, weights: dict[str, torch.Tensor]) -> None:
        """Continue from the averaged weights of drafter `version` (a sync point).

        Accumulated gradients of an unfinished group are dropped; optimizer moments
        stay (each replica keeps its own, as in local SGD)."""
        self.drafter.load_state(weights)
        self._drop_partial_group()
        self.state.version_start = self.state.step
        self.version = version

    @property
    def steps_in_version(self) -> int:
        """Optimizer steps trained on the current drafter version (the averaging weight)."""
        return self.state.step - self.state.version_start


def isfinite_loss(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
