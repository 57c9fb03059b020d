"""The adaptive drafter: rollout data, packing, the spot trainer, async checkpoints,
elastic averaging, tracking, and measurement of acceptance length."""

from .averaging import DrafterSync, weighted_average
from .buffer import RolloutBuffer, Sample, Window, make_windows, prefill_hidden
from .checkpoint import AsyncCheckpointer
from .metrics import AcceptanceTracker, DrafterMetrics
from .replica import DrafterReplica
from .packing import Batch, loss_terms, micro_batches, pack, unpacked
from .trainer import RunResult, SpotTrainer, TrainConfig

__all__ = ["AcceptanceTracker", "AsyncCheckpointer", "Batch", "DrafterMetrics", "DrafterReplica", "DrafterSync",
           "RolloutBuffer", "RunResult", "Sample", "SpotTrainer", "TrainConfig", "Window", "loss_terms",
           "make_windows", "micro_batches", "pack", "prefill_hidden", "unpacked", "weighted_average"]
