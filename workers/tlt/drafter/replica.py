"""One worker's drafter replica: what a rollout worker does with the drafter when lent.

    replica = DrafterReplica(target, worker="shard-0", checkpoint_dir=...)
    replica.record(results, step)      # after each rollout: token ids of what it generated
    replica.lend(sync)                 # drained: train in a background thread
    ...
    replica.reclaim()                  # rollout work is back: returns within one micro-step
    sync.sync(); sync.push(engines)    # coordinator, at the step end

`lend` checks out the current drafter version from the `DrafterSync` (when it moved
on since the last lend), prefills the buffered sequences on the worker's own device
(hidden states never leave it), and trains until reclaimed. `reclaim` preempts the
trainer (a checkpoint is queued, the loop does not wait for it) and reports the
replica's weights and steps on that version to the sync.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from tlt.models.drafter import EagleDrafter

from .averaging import DrafterSync
from .buffer import RolloutBuffer, Sample
from .checkpoint import AsyncCheckpointer
from .packing import training_batches
from .trainer import RunResult, SpotTrainer, TrainConfig


class DrafterReplica:
    def __init__(self, target, worker: str = "0", config: TrainConfig | None = None,
                 buffer: RolloutBuffer | None = None, checkpoint_dir: str | Path | None = None,
                 metrics=None, max_response_tokens: int = 512, row_tokens: int = 1024, rows_per_batch: int = 4):
        self.target = target
        self.worker = worker
        self.buffer = buffer or RolloutBuffer()
        self.max_response_tokens = max_response_tokens
        self.row_tokens = row_tokens
        self.rows_per_batch = rows_per_batch
        drafter = EagleDrafter.for_target(target)
        if checkpoint_dir is not None:
            self.trainer = SpotTrainer.restore(checkpoint_dir, drafter, config, metrics, worker)
        else:
            self.trainer = SpotTrainer(drafter, config, None, metrics, worker)
        self._preempt = threading.Event()
        self._thread: threading.Thread | None = None
        self._sync: DrafterSync | None = None
        self._data_key: tuple | None = None
        self._joined = False
        self.last_result: RunResult | None = None
        self.error: BaseException | None = None

    @property
    def drafter(self) -> EagleDrafter:
        return self.trainer.drafter

    @property
    def training(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def record(self, results: Iterable, step: int, policy_version: int = 0) -> None:
        """Buffer the token ids of finished sequences (engine `Result`s or `Sample`s)."""
        for r in results:
            if isinstance(r, Sample):
                self.buffer.add(r, step)
            else:
                self.buffer.add(Sample.of(r.prompt, r.tokens, policy_version), step)

    def lend(self, sync: DrafterSync) -> None:
        """Start training in the background (no-op when already training)."""
        if self.training:
            return
        self._preempt.clear()
        self._sync = sync
        self._thread = threading.Thread(target=self._train, name=f"drafter-{self.worker}", daemon=True)
        self._thread.start()

    def _train(self) -> None:
        try:
            version, weights = self._sync.checkout(self.worker)
            if not self._joined or version != self.trainer.version:
                # a new version: continue from the averaged weights. The same version after a
                # preemption keeps the local weights (its progress is not lost).
                self.trainer.start_version(version, weights)
                self._joined = True
            key = (len(self.buffer), self.buffer.dropped, tuple(self.buffer.steps))
            if key != self._data_key and not self._preempt.is_set():
                samples = self.buffer.samples()
                batches = training_batches(self.target, samples, self.max_response_tokens, self.row_tokens,
                                           self.rows_per_batch) if samples else []
                self.trainer.set_data(batches)
                self._data_key = key
            if not self._preempt.is_set():
                self.last_result = self.trainer.run(self._preempt)
        except BaseException as err:  # surfaced by reclaim()
            self.error = err

    def reclaim(self, timeout: float | None = None) -> RunResult | None:
        """Preempt training (returns within one micro-step), report to the sync."""
        self._preempt.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"drafter replica {self.worker} did not stop within {timeout} s")
        self._thread = None
        if self.error is not None:
            err, self.error = self.error, None
            raise err
        if self._sync is not None:
            self._sync.report(self.worker, self.trainer.version, self.trainer.steps_in_version,
                              self.trainer.drafter.state_dict())
            self._sync.leave(self.worker)
        return self.last_result

    def close(self) -> None:
        if self.training:
            self.reclaim()
        cp: AsyncCheckpointer | None = self.trainer.checkpointer
        if cp is not None:
            cp.close()
