"""Draft trees: node 0 is the root (the pending token, already sampled from the
target); every other node is a drafted token whose parent has a smaller index."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DraftTree:
    tokens: torch.Tensor  # [B, N] long; column 0 = pending token
    parents: torch.Tensor  # [B, N] long; parent node index, root's parent = 0
    valid: torch.Tensor  # [B, N] bool; padding nodes are False (root always True)
    depth: torch.Tensor  # [B, N] long; root 0
    mask: torch.Tensor  # [B, N, N] bool; node i attends to node j (j ancestor-or-self of i)
    children: torch.Tensor  # [B, N, K] long; children of each node in index order, -1 padded

    @property
    def num_nodes(self) -> int:
        return self.tokens.shape[1]

    @property
    def max_depth(self) -> int:
        return int(self.depth.max().item()) if self.tokens.numel() else 0


def build_tree(tokens: torch.Tensor, parents: torch.Tensor, valid: torch.Tensor,
               max_depth: int | None = None, max_children: int | None = None) -> DraftTree:
    """Derive depth, ancestor mask and child tables from parent pointers. `max_depth` and
    `max_children`, when the caller knows bounds for them (a drafting strategy does),
    spare the host reads (the early exit and the child table's width)."""
    bsz, n = tokens.shape
    dev = tokens.device
    parents = torch.where(valid, parents, torch.zeros_like(parents))
    parents[:, 0] = 0
    idx = torch.arange(n, device=dev).expand(bsz, n)
    mask = torch.zeros(bsz, n, n, dtype=torch.bool, device=dev)
    depth = torch.zeros(bsz, n, dtype=torch.long, device=dev)
    cur = idx.clone()
    rows = torch.arange(bsz, device=dev)[:, None].expand(bsz, n)
    true = torch.ones((), dtype=torch.bool, device=dev)  # a device value: no host copy (CUDA graph capture)
    # pointer chasing: after depth + 1 rounds every node has marked all its ancestors
    for _ in range(n if max_depth is None else min(n, max_depth + 1)):
        mask.index_put_((rows, idx, cur), true)
        nxt = parents.gather(1, cur)
        depth += (cur != 0).long()
        if max_depth is None and bool((nxt == cur).all()):
            break
        cur = nxt
    # padding nodes see only themselves (and the committed prefix), never counted as children
    eye = torch.eye(n, dtype=torch.bool, device=dev).expand(bsz, n, n)
    mask = torch.where(valid[:, :, None], mask, eye)
    depth = torch.where(valid, depth, torch.zeros_like(depth))
    is_child = valid.clone()
    is_child[:, 0] = False
    onehot = (parents[:, :, None] == torch.arange(n, device=dev)) & is_child[:, :, None]
    rank = (onehot.long().cumsum(1) * onehot).sum(-1) - 1  # index among siblings
    k = max_children if max_children is not None else max(int(onehot.sum(1).max().item()), 1)
    children = torch.full((bsz, n * k + 1), -1, dtype=torch.long, device=dev)
    flat = torch.where(is_child, parents * k + rank, torch.full_like(parents, n * k))
    children.scatter_(1, flat, torch.where(is_child, idx, torch.full_like(idx, -1)))
    return DraftTree(tokens=tokens, parents=parents, valid=valid, depth=depth, mask=mask,
                     children=children[:, : n * k].view(bsz, n, k))


def chain_tree(root: torch.Tensor, drafts: torch.Tensor, lengths: torch.Tensor) -> DraftTree:
    """A chain root -> d_1 -> ... -> d_len per row (drafts [B, S], lengths [B])."""
    bsz, steps = drafts.shape
    dev = drafts.device
    tokens = torch.cat([root[:, None], drafts], dim=1)
    parents = torch.arange(-1, steps, device=dev).clamp_min(0).expand(bsz, steps + 1).clone()
    valid = torch.arange(steps + 1, device=dev)[None, :] <= lengths[:, None]
    return build_tree(tokens, parents, valid)
