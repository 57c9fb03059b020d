"""Sequence packing: a micro-batch is one row of training windows back to back, no padding.

    tokens     [1, N]     window_1 + window_2 + ...
    hidden     [1, N, H]  the target's states at those tokens
    loss_mask  [1, N]     True where token t is a target (its state h_t is predicted)
    positions  [1, N]     each window's own absolute positions
    varlen                where each window's pairs are, for attention (`tlt.models.varlen`)

The drafter's loss pairs position t with t+1 (pair t reads x_{t+1} and h_t). At the seam
between two windows that pair would mix samples, so the first token of every window is
never a loss target; the seam pair is the last of the earlier window's block, so under
causal attention no other pair of either window sees it. Attention runs per window: it
costs the sum of the windows' squared lengths, not N^2 as a block-diagonal mask over
the row did (`bench/drafter_packing.py`: 1.8x the training steps per second on the
quickstart's rollouts).

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

from tlt.models.varlen import VarlenPlan, plan as varlen_plan

from .buffer import Window


@dataclass
class Batch:
    tokens: torch.Tensor  # [1, N] long
    hidden: torch.Tensor  # [1, N, H]
    loss_mask: torch.Tensor  # [1, N] bool, True where token t is a target (its state h_t is predicted)
    positions: torch.Tensor  # [1, N] long
    varlen: VarlenPlan  # attention per window over the N - 1 pairs
    num_windows: int

    @property
    def num_targets(self) -> int:
        return int(self.loss_mask[:, 1:].sum())

    def to(self, device) -> "Batch":
        return Batch(self.tokens.to(device), self.hidden.to(device), self.loss_mask.to(device),
                     self.positions.to(device), self.varlen.to(device), self.num_windows)


def plan_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """First-fit decreasing: indices of windows per micro-batch, each at most `batch_tokens`
    tokens (a longer window gets a micro-batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for g, free in enumerate(room):
            if n <= free:
                groups[g].append(i)
                room[g] -= n
                break
        else:
            groups.append([i])
            room.append(max(batch_tokens - n, 0))
    return groups


def pack(windows: Sequence[Window]) -> Batch:
    """`windows` back to back in one row (layout in the module doc)."""
    lengths = [len(w) for w in windows]
    loss_mask = torch.cat([w.loss_mask for w in windows]).clone()
    starts = torch.tensor([0] + lengths[:-1]).cumsum(0)
    loss_mask[starts] = False  # a window's first token: its predecessor belongs to another window
    pairs = lengths[:-1] + [lengths[-1] - 1]  # the row's last token starts no pair
    return Batch(torch.cat([w.tokens for w in windows])[None], torch.cat([w.hidden for w in windows])[None],
                 loss_mask[None], torch.cat([w.positions for w in windows])[None],
                 varlen_plan([n for n in pairs if n > 0]), len(windows))


def micro_batches(windows: Sequence[Window], batch_tokens: int = 1024) -> list[Batch]:
    """All `windows`, packed into as few micro-batches of at most `batch_tokens` tokens as first-fit gives."""
    windows = list(windows)
    return [pack([windows[i] for i in group]) for group in plan_batches([len(w) for w in windows], batch_tokens)]


def loss_terms(drafter, batch: Batch, ce_weight: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of per-token losses, number of target tokens) of `batch`.

    Pair t reads (x_{t+1}, h_t) and predicts h_{t+1}; it counts when token t+1 is a target.
    """
    pred = drafter.features(batch.tokens[:, 1:], batch.hidden[:, :-1], positions=batch.positions[:, :-1],
                            attn_mask=batch.varlen)
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
                                attn_mask=batch.varlen)
        same = drafter.logits(pred).argmax(-1) == drafter.logits(batch.hidden[:, 1:].to(pred.dtype)).argmax(-1)
        m = batch.loss_mask[:, 1:].to(same.device)
        return int((same & m).sum()), int(m.sum())


def training_batches(target, samples, max_response_tokens: int = 512, batch_tokens: int = 1024,
                     context: int = 0, max_prefill_tokens: int = 16384) -> list[Batch]:
    """Rollout samples -> packed micro-batches: prefill the whole sequences on the
    target's device (hidden states stay there), cut windows, pack them."""
    from .buffer import make_windows, prefill_hidden

    hidden = prefill_hidden(target, samples, max_prefill_tokens)
    return micro_batches(make_windows(samples, hidden, max_response_tokens, context), batch_tokens)
