"""New policy weights from the trainer to the rollout workers over one broadcast group.

After each update the trainer's rank 0 broadcasts the policy to every rollout shard
(and drafter host) directly, device to device where it can: NCCL when every member
has a GPU, gloo over TCP otherwise. Nothing goes through the coordinator's process
or Ray's object store. The group is its own, outside the trainer's ranks: rank 0
of the group is the trainer's rank 0, ranks 1..n the receivers; it meets in the
trainer's rendezvous store (MASTER_ADDR:MASTER_PORT, served by the trainer's rank 0)
under a prefix of its own, and is formed again whenever its members change.

Weights travel one layer at a time (one flat buffer per decoder layer, the
embeddings and head on their own), in the receivers' dtype: under ZeRO-3 the
trainer ranks gather one layer's parameters, rank 0 sends it and lets it go, so
the policy is never materialised whole on one rank, and each receiver loads a
layer as soon as it arrives.

    sender = WeightGroup(addr, port, epoch, rank=0, size=1 + n, backend="gloo")
    for layer in layers: sender.send_layer(layer, dtype)   # trainer rank 0 (other ranks: gather only)
    receiver = WeightGroup(addr, port, epoch, rank=i, size=1 + n, backend="gloo")
    for part in receiver.receive(manifest, dtype): engine.update_policy_weights(part)
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Iterator

import torch
import torch.distributed as dist

TIMEOUT = timedelta(minutes=5)  # forming the group, and each layer's broadcast
_LAYER = re.compile(r"^(.*?\blayers\.\d+)\.")

# name -> shape, in the order they are sent; grouped into the buckets sent as one tensor
Manifest = list[list[tuple[str, tuple[int, ...]]]]


def layer_key(name: str) -> str:
    """The unit a parameter travels in: its decoder layer (`model.layers.3`), or itself."""
    m = _LAYER.match(name)
    return m.group(1) if m else name


def manifest(named_shapes: Iterable[tuple[str, tuple[int, ...]]]) -> Manifest:
    """Parameters grouped by `layer_key`, in their order (consecutive parameters of one layer together)."""
    out: Manifest = []
    last = None
    for name, shape in named_shapes:
        key = layer_key(name)
        if key != last:
            out.append([])
            last = key
        out[-1].append((name, tuple(int(s) for s in shape)))
    return out


def full_shape(param: torch.Tensor) -> tuple[int, ...]:
    """A parameter's shape, also when ZeRO-3 holds only this rank's partition of it."""
    return tuple(getattr(param, "ds_shape", param.shape))


class WeightGroup:
    """This process's membership of a weight broadcast group (rank 0 sends, the others receive)."""

    def __init__(self, address: str, port: int, epoch: int, rank: int, size: int, backend: str = "gloo",
                 timeout: timedelta = TIMEOUT):
        self.rank, self.size, self.backend = rank, size, backend
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        # A client of the trainer's rendezvous store (its rank 0 serves it); the prefix keeps groups apart.
        store = dist.TCPStore(address, port, is_master=False, timeout=timeout, wait_for_workers=False)
        store = dist.PrefixStore(f"tlt-weights/{epoch}", store)
        if backend == "nccl":
            self.group = dist.ProcessGroupNCCL(store, rank, size, timeout)
        elif backend == "gloo":
            self.group = dist.ProcessGroupGloo(store, rank, size, timeout)
        else:
            raise ValueError(f"weight group backend must be gloo or nccl, got {backend!r}")
        self._store = store  # kept alive with the group
        self.barrier()  # everyone is in before anything is sent

    def barrier(self) -> None:
        token = torch.zeros(1, device=self.device)
        self.group.allreduce([token]).wait()

    def _broadcast(self, tensor: torch.Tensor) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self.group.broadcast([tensor], opts).wait()

    def send_layer(self, tensors: list[tuple[str, torch.Tensor]], dtype: torch.dtype) -> int:
        """Rank 0: one layer's tensors (whole, in manifest order) as one flat buffer; bytes sent."""
        flat = torch.cat([t.detach().reshape(-1).to(self.device, dtype) for _, t in tensors])
        self._broadcast(flat)
        if self.backend == "nccl":
            torch.cuda.synchronize(self.device)
        return flat.numel() * flat.element_size()

    def receive(self, plan: Manifest, dtype: torch.dtype) -> Iterator[dict[str, torch.Tensor]]:
        """Ranks 1..n: each layer's tensors as they arrive (name -> tensor on this group's device)."""
        for tensors in plan:
            sizes = [_numel(shape) for _, shape in tensors]
            flat = torch.empty(sum(sizes), dtype=dtype, device=self.device)
            self._broadcast(flat)
            parts = flat.split(sizes)
            yield {name: part.view(shape) for (name, shape), part in zip(tensors, parts)}

    def close(self) -> None:
        group, self.group = getattr(self, "group", None), None
        if group is not None and hasattr(group, "shutdown"):
            try:
                group.shutdown()
            except Exception:  # a group whose peer died may not shut down cleanly; it is dropped anyway
                pass


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def wire_dtype(dtypes: Iterable[str]) -> str:
    """The dtype weights travel in: the receivers' own when they agree, else float32 (each casts on load)."""
    kinds = set(dtypes)
    return kinds.pop() if len(kinds) == 1 else "float32"


@dataclass(frozen=True)
class ReceiverMetrics:
    updates: object  # Counter by `via`: broadcast (the weight group) or object (a Ray object)
    seconds: object  # Counter: time spent receiving and loading broadcast weights


_metrics: ReceiverMetrics | None = None
_metrics_lock = threading.Lock()


def receiver_metrics() -> ReceiverMetrics:
    """A rollout worker's policy-update metrics, in the engine's registry (the pod's /metrics)."""
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            from prometheus_client import Counter

            from tlt.engine.metrics import REGISTRY

            _metrics = ReceiverMetrics(
                Counter("tlt_policy_updates", "Policy weight updates received, by how they came", ["via"],
                        registry=REGISTRY),
                Counter("tlt_policy_receive_seconds", "Time receiving and loading policy weights from the weight group",
                        registry=REGISTRY))
        return _metrics
