"""The adaptive drafter: rollout data, packing, the spot trainer, async checkpoints,
replica averaging, tracking, and measurement of acceptance length. A rollout shard
(`tlt.coordinator.shard`) is the replica that uses them in a job."""

from .averaging import average_replicas, weighted_average
from .buffer import RolloutBuffer, Sample, Window, make_windows, prefill_hidden
from .checkpoint import AsyncCheckpointer
from .metrics import AcceptanceTracker, DrafterMetrics, drafter_metrics
from .packing import Batch, loss_terms, micro_batches, pack
from .trainer import RunResult, SpotTrainer, TrainConfig

__all__ = ["AcceptanceTracker", "AsyncCheckpointer", "Batch", "DrafterMetrics", "RolloutBuffer", "RunResult",
           "Sample", "SpotTrainer", "TrainConfig", "Window", "average_replicas", "drafter_metrics", "loss_terms",
           "make_windows", "micro_batches", "pack", "prefill_hidden", "weighted_average"]
