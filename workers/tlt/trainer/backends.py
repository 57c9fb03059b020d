"""Where the optimizer step happens: plain torch (DDP across ranks), or DeepSpeed ZeRO.

Both backends expose the same small surface to `PolicyTrainer`:
`module` (the Hugging Face model), `forward` (what to call for a forward pass:
the module, its DDP wrapper, or the DeepSpeed engine, whose bookkeeping ZeRO-3's
gradient accumulation relies on), `begin_micro(is_last)` before each
micro-batch, `backward(loss)`, `step()` -> gradient norm before clipping,
`full_state_dict()` (HF names, gathered under ZeRO-3), `gathered(params)` (a
context in which ZeRO-3's partitioned parameters are whole), `save(dir)` /
`load(dir)` for policy and optimizer state.

Data parallel: several processes (ranks) each run a `PolicyTrainer`; the
rendezvous comes from the usual environment (MASTER_ADDR, MASTER_PORT, RANK,
WORLD_SIZE, LOCAL_RANK). Both backends average gradients over ranks.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.distributed as dist

from tlt.net import free_port


def world() -> tuple[int, int]:
    """(rank, world size) of the running process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _single_process_defaults() -> None:
    # A single process (embedded mode, tests) has no launcher to set the rendezvous
    # variables: world size 1 on localhost, on a free port so that concurrent jobs
    # on one machine do not collide.
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")


def ensure_process_group(device: torch.device, for_deepspeed: bool, join: bool = False) -> None:
    """Joins the process group once: gloo on CPU, NCCL on GPU.

    DeepSpeed always needs one (world size 1 included); plain torch when
    WORLD_SIZE > 1, or when `join` (a rank of a trainer group: its rendezvous store
    also serves the weight broadcast group, `tlt.trainer.sync`).
    """
    if dist.is_available() and dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not for_deepspeed:
        if join or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            _single_process_defaults()
            dist.init_process_group(backend)
        return
    import deepspeed

    if device.type == "cpu":
        # DeepSpeed compiles a shared-memory collective op for CPU process groups
        # (minutes on a fresh machine); it only speeds up multi-process all-reduce,
        # and gloo does the same work without it.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    _single_process_defaults()
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


class TorchBackend:
    """AdamW on the model's own parameters; bf16 by autocast over fp32 weights; DDP across ranks."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float],
                 max_grad_norm: float, precision: str, device: torch.device, join: bool = False):
        ensure_process_group(device, for_deepspeed=False, join=join)
        self.module = self.forward = model.to(device)
        self.ddp = None
        if world()[1] > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
            self.forward = self.ddp
        self.device = device
        self.max_grad_norm = max_grad_norm
        self.precision = precision
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def begin_micro(self, is_last: bool) -> None:
        if self.ddp is not None:
            # What DDP's no_sync() toggles: all-reduce gradients only in the last
            # micro-batch's backward; the earlier ones accumulate locally.
            self.ddp.require_backward_grad_sync = is_last

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def gathered(self, params: list[torch.nn.Parameter]):
        return contextlib.nullcontext()

    def save(self, folder: Path) -> None:
        if world()[0] != 0:
            return  # replicas are identical: rank 0 writes for all
        torch.save(self.module.state_dict(), folder / "policy.pt")
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")

    def load(self, folder: Path) -> None:
        self.module.load_state_dict(torch.load(folder / "policy.pt", map_location=self.device, weights_only=True))
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=self.device,
                                                  weights_only=True))


def deepspeed_config(zero_stage: int, offload: str, precision: str, max_grad_norm: float) -> dict:
    zero: dict = {"stage": zero_stage}
    if offload in ("optimizer", "all") and zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu"}
    if offload == "all" and zero_stage == 3:
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        # A torch optimizer on offloaded state is slower than DeepSpeedCPUAdam but needs no compiled ops.
        "zero_force_ds_cpu_optimizer": False,
        # bf16 compute; the optimizer keeps fp32 master weights in ZeRO's partitions.
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


class DeepSpeedBackend:
    """DeepSpeed ZeRO (stage 0-3) driving a torch AdamW passed in.

    A torch optimizer keeps start-up at about a second on CPU: DeepSpeed's own
    Adam variants compile C++ ops on first use. Gradient accumulation over
    micro-batches is ours (the loss is already weighted per micro-batch), so
    DeepSpeed is told where the accumulation boundary is and scales nothing.
    """

    name = "deepspeed"

    def __init__(self, model: torch.nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float],
                 max_grad_norm: float, precision: str, device: torch.device, zero_stage: int, offload: str,
                 join: bool = False):
        import deepspeed

        ensure_process_group(device, for_deepspeed=True)
        self.device = device
        self.zero_stage = zero_stage
        model = model.to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)
        config = deepspeed_config(zero_stage, offload, precision, max_grad_norm)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        self.module = self.engine.module
        self.forward = self.engine

    def autocast(self):
        return contextlib.nullcontext()

    def begin_micro(self, is_last: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(is_last)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        norm = None
        if self.zero_stage == 0:
            # Stage 0 clips fp32 gradients without recording the norm; it is measured here instead.
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        self.engine.step()
        if norm is None:
            norm = self.engine.get_global_grad_norm()
        self.engine.zero_grad()
        return float(norm) if norm is not None else float("nan")

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        if self.zero_stage < 3:
            return self.module.state_dict()
        import deepspeed

        # ZeRO-3 keeps only this rank's partition in each parameter; gather to copy them out.
        params = list(self.module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def gathered(self, params: list[torch.nn.Parameter]):
        """Collective over the ranks under ZeRO-3: every rank enters with the same parameters."""
        if self.zero_stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def save(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder), tag="ds")

    def load(self, folder: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(folder), tag="ds", load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {folder}")
