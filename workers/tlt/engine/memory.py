"""How many sequences a rollout engine's KV cache can hold in a device's memory.

The torch engine reserves, per slot, a target KV cache of `max_model_len` (plus room for
a verified tree), the drafter's cache, the hidden-state history the drafter reads, and
the token and log-prob buffers. On a GPU the budget is the fraction
`spec.rollout.gpuMemoryUtilization` of the device's memory (vLLM's meaning: weights, KV
cache and activations of this engine together), minus the weights and an activation
reserve for the largest step. On a CPU the engine keeps its plain sizing (no budget).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tlt.models.config import ConfigError

GIB = 1 << 30


class KVMemoryError(ConfigError):
    """The KV cache the job asks for does not fit; the message names the fields to change."""


@dataclass(frozen=True)
class MemoryPlan:
    device_bytes: int  # the device's memory
    budget_bytes: int  # device_bytes x utilization
    weight_bytes: int  # target + drafter parameters
    activation_bytes: int  # reserve for the largest step's temporaries
    bytes_per_slot: int  # KV caches + history + buffers of one sequence slot
    slots_fit: int  # sequence slots of max_model_len tokens that fit the budget
    tokens_per_slot: int  # cache positions per slot (max_model_len + tree room)

    @property
    def tokens_fit(self) -> int:
        return self.slots_fit * self.tokens_per_slot

    def to_json(self) -> dict:
        return {"device_gib": round(self.device_bytes / GIB, 2), "budget_gib": round(self.budget_bytes / GIB, 2),
                "weights_gib": round(self.weight_bytes / GIB, 2),
                "activations_gib": round(self.activation_bytes / GIB, 2),
                "slot_mib": round(self.bytes_per_slot / (1 << 20), 2), "slots_fit": self.slots_fit,
                "tokens_fit": self.tokens_fit}


def slot_bytes(model, max_model_len: int, drafter=None, keep_hidden: bool = False,
               max_tree_nodes: int = 64) -> tuple[int, int]:
    """(bytes per slot, cache positions per slot) of `TorchEngine`'s buffers."""
    c = model.config
    elt = model.dtype.itemsize
    cap = max_model_len + max_tree_nodes + 2
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * elt * cap
    per = kv + cap * (8 + 4)  # tokens (int64) and log-probs (float32)
    if drafter is not None and hasattr(drafter, "new_cache"):
        d = drafter.config
        per += 2 * d.num_key_value_heads * d.head_dim * elt * (cap + max_tree_nodes)
        keep_hidden = True
    if keep_hidden:
        per += cap * c.hidden_size * elt
    return per, cap


def activation_bytes(model, rows: int) -> int:
    """Temporaries of one step over `rows` token rows: logits in float32 and the float64
    sampling distribution with its sort and cumulative sum, plus the MLP's widest
    activations; doubled for the allocator's slack."""
    c = model.config
    elt = model.dtype.itemsize
    per_row = c.vocab_size * (4 + 3 * 8) + 4 * c.intermediate_size * elt + 8 * c.hidden_size * elt
    return 2 * rows * per_row


def plan_kv_memory(model, num_slots: int, max_model_len: int, utilization: float, drafter=None,
                   keep_hidden: bool = False, max_tree_nodes: int = 64, activation_rows: int | None = None,
                   device_bytes: int | None = None) -> MemoryPlan:
    """How many slots of `max_model_len` fit `utilization` of the device's memory
    (`device_bytes`, default: the CUDA device's total), after the weights and the
    activation reserve of `activation_rows` token rows (default: one per slot)."""
    if not 0 < utilization <= 1:
        raise ValueError(f"spec.rollout.gpuMemoryUtilization must be in (0, 1], got {utilization}")
    if device_bytes is None:
        device_bytes = torch.cuda.mem_get_info(model.device)[1]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if drafter is not None and hasattr(drafter, "parameters"):
        shared = {id(p) for p in model.parameters()}
        weights += sum(p.numel() * p.element_size() for p in drafter.parameters() if id(p) not in shared)
    per, cap = slot_bytes(model, max_model_len, drafter, keep_hidden, max_tree_nodes)
    act = activation_bytes(model, max(activation_rows or num_slots, 1))
    budget = int(device_bytes * utilization)
    fit = max(0, (budget - weights - act) // per)
    return MemoryPlan(device_bytes=device_bytes, budget_bytes=budget, weight_bytes=weights, activation_bytes=act,
                      bytes_per_slot=per, slots_fit=int(fit), tokens_per_slot=cap)


def fit_kv_memory(model, num_slots: int, max_model_len: int, utilization: float, drafter=None,
                  device_bytes: int | None = None, **kw) -> MemoryPlan:
    """`plan_kv_memory`, raising a clear error (naming the spec fields to change) when
    `num_slots` sequences of `max_model_len` tokens do not fit."""
    plan = plan_kv_memory(model, num_slots, max_model_len, utilization, drafter=drafter,
                          device_bytes=device_bytes, **kw)
    if plan.slots_fit >= num_slots:
        return plan
    need = plan.weight_bytes + plan.activation_bytes + num_slots * plan.bytes_per_slot
    raise KVMemoryError(
        f"the rollout engine needs {need / GIB:.1f} GiB for rollout.maxBatchSize={num_slots} sequences of "
        f"{max_model_len} tokens (weights {plan.weight_bytes / GIB:.1f} GiB, KV cache and buffers "
        f"{num_slots * plan.bytes_per_slot / GIB:.1f} GiB, activations {plan.activation_bytes / GIB:.1f} GiB), "
        f"but spec.rollout.gpuMemoryUtilization={utilization} of the device's {plan.device_bytes / GIB:.1f} GiB "
        f"allows {plan.budget_bytes / GIB:.1f} GiB (room for {plan.slots_fit} sequences); raise "
        f"spec.rollout.gpuMemoryUtilization, lower rollout.maxBatchSize, or lower algorithm.maxResponseTokens")
