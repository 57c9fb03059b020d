"""Sequence packing: several training windows in one row, no attention across them.

Each packed row carries the windows' tokens, target hidden states, loss mask and
their own position ids, and a block-diagonal causal mask [T, T] (True = may attend).
The drafter's loss pairs position t with t+1; at the seam between two windows that
pair would mix samples, so the first token of every window is never a loss target.
The pair at the seam belongs to the earlier window's block and comes last in it
(causal), so no other pair of either window attends to it.

`EAGLE`-style loss lives here too, as (sum, count) so micro-batches accumulate with
exact per-token weighting: SmoothL1(pred_h, h_next) averaged over the hidden size,
plus `ce_weight` x cross-entropy between the LM-head distributions of h_next and
pred_h, over the masked tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .buffer import Window


@dataclass
class Batch:
    tokens: torch.Tensor  # [R, T] long
    hidden: torch.Tensor  # [R, T, H]
    loss_mask: torch.Tensor  # [R, T] bool, True where token t is a target (its state h_t is predicted)
    positions: torch.Tensor  # [R, T] long
    attn_mask: torch.Tensor  # [R, T, T] bool
    num_windows: int

    @property
    def num_targets(self) -> int:
        return int(self.loss_mask[:, 1:].sum())

    def to(self, device) -> "Batch":
        return Batch(self.tokens.to(device), self.hidden.to(device), self.loss_mask.to(device),
                     self.positions.to(device), self.attn_mask.to(device), self.num_windows)


def plan_rows(lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """First-fit decreasing: indices of windows per row, each row at most `row_tokens`
    long (a longer window gets a row of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max(row_tokens - n, 0))
    return rows


def collate(rows: Sequence[Sequence[Window]]) -> Batch:
    """Rows of windows -> padded batch; padding attends only to itself and is never a target."""
    width = max(sum(len(w) for w in row) for row in rows)
    r = len(rows)
    first = rows[0][0]
    hsize = first.hidden.shape[-1]
    tokens = torch.zeros(r, width, dtype=torch.long)
    hidden = torch.zeros(r, width, hsize, dtype=first.hidden.dtype, device=first.hidden.device)
    loss_mask = torch.zeros(r, width, dtype=torch.bool)
    positions = torch.zeros(r, width, dtype=torch.long)
    block = torch.full((r, width), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        at = 0
        for j, w in enumerate(row):
            n = len(w)
            tokens[i, at:at + n] = w.tokens
            hidden[i, at:at + n] = w.hidden
            loss_mask[i, at:at + n] = w.loss_mask
            loss_mask[i, at] = False  # its predecessor belongs to another window
            positions[i, at:at + n] = w.positions
            block[i, at:at + n] = j
            at += n
    idx = torch.arange(width)
    causal = idx[None, :, None] >= idx[None, None, :]
    same = (block[:, :, None] == block[:, None, :]) & (block[:, :, None] >= 0)
    pad_self = (block[:, :, None] < 0) & (idx[None, :, None] == idx[None, None, :])
    attn = (same & causal) | pad_self
    return Batch(tokens, hidden, loss_mask, positions, attn, sum(len(row) for row in rows))


def pack(windows: Sequence[Window], row_tokens: int) -> Batch:
    """All `windows` packed into as few rows of at most `row_tokens` tokens as first-fit gives."""
    rows = plan_rows([len(w) for w in windows], row_tokens)
    return collate([[windows[i] for i in row] for row in rows])


def unpacked(windows: Sequence[Window]) -> Batch:
    """One window per row (the reference that packing must reproduce)."""
    return collate([[w] for w in windows])


def micro_batches(windows: Sequence[Window], row_tokens: int, rows_per_batch: int) -> list[Batch]:
    """Pack all windows, then group the rows into micro-batches of `rows_per_batch` rows."""
    plan = plan_rows([len(w) for w in windows], row_tokens)
    return [collate([[windows[i] for i in row] for row in plan[k:k + rows_per_batch]])
            for k in range(0, len(plan), rows_per_batch)]


def loss_terms(drafter, batch: Batch, ce_weight: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of per-token losses, number of target tokens) of `batch`.

    Pair t reads (x_{t+1}, h_t) and predicts h_{t+1}; it counts when token t+1 is a target.
    """
    pred = drafter.features(batch.tokens[:, 1:], batch.hidden[:, :-1], positions=batch.positions[:, :-1],
                            attn_mask=batch.attn_mask[:, :-1, :-1])
    nxt = batch.hidden[:, 1:].to(pred.dtype)
    compute = torch.promote_types(pred.dtype, torch.float32)
    reg = F.smooth_l1_loss(pred, nxt, reduction="none").mean(-1)
    with torch.no_grad():
        target_p = F.softmax(drafter.logits(nxt).to(compute), dim=-1)
    ce = -(target_p * F.log_softmax(drafter.logits(pred).to(compute), dim=-1)).sum(-1)
    per_token = reg.to(compute) + ce_weight * ce
    m = batch.loss_mask[:, 1:].to(per_token.device)
    return (per_token * m).sum(), m.sum()


def top1_agreement(drafter, batch: Batch) -> tuple[int, int]:
    """How often the drafter's top-1 token (from pred_h) equals the target's (from h_next)."""
    with torch.no_grad():
        pred = drafter.features(batch.tokens[:, 1:], batch.hidden[:, :-1], positions=batch.positions[:, :-1],
                                attn_mask=batch.attn_mask[:, :-1, :-1])
        same = drafter.logits(pred).argmax(-1) == drafter.logits(batch.hidden[:, 1:].to(pred.dtype)).argmax(-1)
        m = batch.loss_mask[:, 1:].to(same.device)
        return int((same & m).sum()), int(m.sum())


def training_batches(target, samples, max_response_tokens: int = 512, row_tokens: int = 1024,
                     rows_per_batch: int = 4, context: int = 0, max_prefill_tokens: int = 16384) -> list[Batch]:
    """Rollout samples -> packed micro-batches: prefill the whole sequences on the
    target's device (hidden states stay there), cut windows, pack them."""
    from .buffer import make_windows, prefill_hidden

    hidden = prefill_hidden(target, samples, max_prefill_tokens)
    return pack_windows(make_windows(samples, hidden, max_response_tokens, context), row_tokens, rows_per_batch)


def pack_windows(windows: Sequence[Window], row_tokens: int = 1024, rows_per_batch: int = 4) -> list[Batch]:
    """Windows -> packed micro-batches (a row is at least as long as the longest window)."""
    if not windows:
        return []
    return micro_batches(list(windows), max(row_tokens, max(len(w) for w in windows)), rows_per_batch)
