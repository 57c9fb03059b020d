"""Preallocated per-slot KV cache.

Layout `[layers, slots, capacity, kv_heads, head_dim]` with one committed length per
slot. A forward writes its new entries right after the slot's committed length (plus
an optional offset, so tree levels can stack uncommitted entries) and attends to the
committed prefix plus the new entries through an arbitrary mask; nothing becomes part
of the sequence until `advance` (keep all new entries) or `keep` (keep a chosen subset,
gathered into place) moves the length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionPlan:
    """What every layer of one forward needs: where to write, what to read, the mask."""

    rows: torch.Tensor  # [B, T] slot index per new token
    write_pos: torch.Tensor  # [B, T] cache position per new token
    read_slots: torch.Tensor | slice  # slots to read, a slice when contiguous (no copy)
    read_len: int  # number of cache positions read (max over the batch)
    mask: torch.Tensor  # [B, 1, T, read_len] True = may attend


class KVCache:
    def __init__(self, num_layers: int, num_slots: int, capacity: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        shape = (num_layers, num_slots, capacity, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.k_layers, self.v_layers = self.k.unbind(0), self.v.unbind(0)  # per-layer views
        self.lengths = torch.zeros(num_slots, dtype=torch.long, device=device)
        self.capacity = capacity

    @property
    def num_slots(self) -> int:
        return self.k.shape[1]

    @property
    def device(self) -> torch.device:
        return self.k.device

    def reset(self, slots: torch.Tensor) -> None:
        self.lengths[slots] = 0

    def plan(self, slots: torch.Tensor, num_new: int, write_offset: int = 0,
             tail_mask: torch.Tensor | None = None, window: int | None = None,
             read_slots: slice | None = None) -> AttentionPlan:
        """Plan a forward of `num_new` tokens per slot.

        `tail_mask[b, t, j]` says whether new token t of row b attends to uncommitted
        entry j (j < write_offset + num_new; entries before write_offset were written by
        earlier forwards, e.g. earlier tree levels). Default: causal over all of them.

        `window`: read that many cache positions (the caller knows it covers every row's
        committed length + write_offset + num_new), so shapes are static and nothing is
        read back from the device; the mask hides the rest. Without it the read length is
        the batch's longest (one host read). `read_slots`: `slots` as a slice, read as a
        view; without it (and a window) the slots are gathered.
        """
        dev = self.lengths.device
        bsz = slots.shape[0]
        base = self.lengths[slots]  # [B]
        width = write_offset + num_new
        if window is None:
            read_len = int(base.max().item()) + width
            if read_len > self.capacity:
                raise RuntimeError(
                    f"KV cache capacity {self.capacity} exceeded (needs {read_len}); "
                    "raise the engine's max_model_len"
                )
            if read_slots is None:
                read_slots = _as_slice(slots)
        else:
            read_len = window
        positions = torch.arange(read_len, device=dev).view(1, 1, read_len)
        write_pos = base.view(bsz, 1) + torch.arange(write_offset, width, device=dev)  # [B, T]
        if tail_mask is None:  # causal: token t sees every position up to its own
            mask = positions <= write_pos.view(bsz, num_new, 1)
        else:
            mask = positions < base.view(bsz, 1, 1)  # committed prefix
            mask = mask.expand(bsz, num_new, read_len).clone()
            tail_idx = (base[:, None] + torch.arange(width, device=dev)[None, :])  # [B, W]
            mask.scatter_(2, tail_idx[:, None, :].expand(bsz, num_new, width), tail_mask)
        rows = slots.view(bsz, 1).expand(bsz, num_new)
        return AttentionPlan(rows=rows, write_pos=write_pos, read_slots=slots if read_slots is None else read_slots,
                             read_len=read_len, mask=mask.view(bsz, 1, num_new, read_len))

    def write_and_read(self, layer: int, plan: AttentionPlan, k_new: torch.Tensor,
                       v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values ([B, T, Hkv, D]); return all readable ones ([B, Hkv, K, D])."""
        kc, vc = self.k_layers[layer], self.v_layers[layer]
        kc[plan.rows, plan.write_pos] = k_new
        vc[plan.rows, plan.write_pos] = v_new
        keys = kc[plan.read_slots, : plan.read_len]  # a view for a slice, a gather for a tensor
        values = vc[plan.read_slots, : plan.read_len]
        return keys.transpose(1, 2), values.transpose(1, 2)

    def copy_entries(self, src: torch.Tensor, dst: torch.Tensor, length: int) -> None:
        """Copy the first `length` entries of every layer from slots `src` into slots `dst`
        (a shared prompt's KV, or a sequence moved to another slot; lengths are set by the caller)."""
        self.k[:, dst, :length] = self.k[:, src, :length]
        self.v[:, dst, :length] = self.v[:, src, :length]

    def advance(self, slots: torch.Tensor, counts: torch.Tensor | int) -> None:
        """Commit the first `counts` new entries of each slot (written at offset 0)."""
        self.lengths[slots] += counts

    def keep(self, slots: torch.Tensor, offsets: torch.Tensor, counts: torch.Tensor) -> None:
        """Commit a subset of the uncommitted entries: for row b, entries at offsets
        `offsets[b, :counts[b]]` (relative to the committed length) are gathered into
        consecutive positions; the rest is dropped. Padding entries of `offsets` beyond
        `counts[b]` must still be valid offsets (they are copied but not committed)."""
        base = self.lengths[slots]
        width = offsets.shape[1]
        src = base[:, None] + offsets
        dst = base[:, None] + torch.arange(width, device=base.device)[None, :]
        rows = slots[:, None].expand(-1, width)
        self.k[:, rows, dst] = self.k[:, rows, src]
        self.v[:, rows, dst] = self.v[:, rows, src]
        self.lengths[slots] = base + counts


def _as_slice(slots: torch.Tensor) -> torch.Tensor | slice:
    """Contiguous ascending slot ranges read as a view instead of a gather copy."""
    n = slots.shape[0]
    if n == 0:
        return slots
    first = int(slots[0])
    if n == 1 or bool((slots == torch.arange(first, first + n, device=slots.device)).all()):
        return slice(first, first + n)
    return slots
