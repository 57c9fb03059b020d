"""Attention over packed sequences without padding (CPU and GPU, no special kernel).

A packed row holds sequence after sequence, positions restarting for each. Every
linear layer, norm and MLP runs on exactly the real tokens; only attention must not
cross sequence boundaries. It runs here per group of sequences of similar length (a
"bucket"), padded inside attention only to the bucket's longest, causal. Padding
sits after each sequence's last token, so causal attention never lets a real query
see it; the padded queries' outputs are dropped. Work is the sum over sequences of
length^2 (times at most RATIO^2), not width^2 as with a block-diagonal mask: on a
1K-token row of ~50-token windows that is ~20x less attention.

Used by the policy trainer (through Hugging Face's attention interface,
`tlt.trainer.varlen`) and by the drafter's training (`tlt.models.llama.Attention`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

# Sequences join a bucket while they are at least 1/RATIO of its longest: at most
# that much padding inside attention, and few attention calls per layer.
RATIO = 1.25


@dataclass
class VarlenPlan:
    """Where each bucket's tokens are in the packed row, and back.

    gathers: per bucket, [b, w] positions in the row (a padded slot repeats the
        sequence's first position; it is never attended to by a real query);
    inverse: [N] for each token of the row, its place in the buckets' outputs
        concatenated ([sum b*w] rows, bucket after bucket, row-major).
    """

    gathers: list[torch.Tensor]
    inverse: torch.Tensor

    def to(self, device) -> "VarlenPlan":
        return VarlenPlan([g.to(device) for g in self.gathers], self.inverse.to(device))


def plan(lengths: Sequence[int]) -> VarlenPlan:
    """The plan of a row holding sequences of `lengths` (each >= 1) back to back."""
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    inverse = torch.empty(sum(lengths), dtype=torch.long)
    gathers, offset, k = [], 0, 0
    while k < len(order):
        width = lengths[order[k]]
        members = []
        while k < len(order) and lengths[order[k]] * RATIO >= width:
            members.append(order[k])
            k += 1
        index = torch.empty(len(members), width, dtype=torch.long)
        for row, i in enumerate(members):
            s, n = starts[i], lengths[i]
            index[row, :n] = torch.arange(s, s + n)
            index[row, n:] = s
            inverse[s:s + n] = torch.arange(offset + row * width, offset + row * width + n)
        gathers.append(index)
        offset += len(members) * width
    return VarlenPlan(gathers, inverse)


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, varlen: VarlenPlan,
                     scale: float | None = None, dropout: float = 0.0) -> torch.Tensor:
    """Causal attention of each sequence of a packed row with itself:
    q [heads, N, D], k/v [kv_heads, N, D] -> [N, heads, D]."""
    gqa = q.shape[0] != k.shape[0]
    outs = []
    for index in varlen.gathers:
        b, w = index.shape
        flat = index.reshape(-1)
        # [heads, b*w, D] -> [b, heads, w, D]
        qb, kb, vb = (t.index_select(1, flat).view(t.shape[0], b, w, t.shape[2]).transpose(0, 1) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, scale=scale, dropout_p=dropout,
                                           enable_gqa=gqa)
        outs.append(o.transpose(1, 2).reshape(b * w, o.shape[1], o.shape[3]))  # [b*w, heads, D]
    return torch.cat(outs).index_select(0, varlen.inverse)
