"""Lossless, coupled acceptance of a draft tree (pure function, vectorised over the batch).

Plain decoding emits, at response position t, the token `sample_from(p_t, u_t)`: the
inverse-CDF draw from the target's distribution p_t (temperature, top-p) with the
uniform u_t keyed by (seed, t). Verification computes exactly that draw at every tree
node, from the target's distribution there, and follows the child whose token equals
it; at the first node with no such child it emits the draw and ends the round. Every
emitted token is therefore the token plain decoding would have emitted at that
position: outputs are token-identical with speculation on or off, whatever the tree,
the batch or the engine. Forwards that round the logits differently (float32 verify and
decode forwards) could still flip a draw that falls on a CDF edge: with `ties`, a round
stops before its first near-tie draw, which the engine recomputes in float64.

For deterministic candidates the acceptance probability equals the multi-draft rule's
(the sum of the candidates' target probabilities), so nothing is lost in speed either.
Greedy rows (temperature 0) draw the argmax: the rule becomes "longest path matching
the argmax".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import BatchSampling, Ties, draws, token_logprobs
from .tree import DraftTree


@dataclass
class Acceptance:
    path: torch.Tensor  # [B, D+1] node indices root..last accepted node, padded with 0
    num_nodes: torch.Tensor  # [B] nodes on the path incl. root = tokens emitted this round
    tokens: torch.Tensor  # [B, D+1] emitted tokens (accepted drafts then the final draw), padded
    logprobs: torch.Tensor  # [B, D+1] target log-probs of the emitted tokens
    cut: torch.Tensor | None = None  # [B] the round stopped before a near-tie draw (with `ties`)


def accept(tree: DraftTree, logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
           u: torch.Tensor | None, max_depth: int | None = None,
           sampling: BatchSampling | None = None, ties: Ties | None = None,
           forced: torch.Tensor | None = None) -> Acceptance:
    """Accept a prefix of `tree` given the target's logits at every node [B, N, V].

    `u[b, d]` is the plain sampler's uniform for the d-th token emitted this round
    (response position of the pending token's successor + d). `max_depth` (the tree's
    deepest level, known to the caller) avoids a host read. With `ties`, the path stops before
    its first near-tie draw (`Acceptance.cut`; `forced`: `draws`).
    """
    bsz, n, _ = logits.shape
    dev = logits.device
    depth_max = tree.max_depth if max_depth is None else max_depth
    node_u = u.gather(1, tree.depth) if u is not None else None  # a node at depth d draws the d-th emitted token
    drawn, near = draws(logits, temperature, top_p, node_u, sampling, ties, forced)  # [B, N]: what plain decoding emits after node i
    # A node matches when its token is what its parent's draw emitted; it is accepted when
    # every node on its path from the root matches.
    parent_draw = drawn.gather(1, tree.parents)
    match = tree.valid & (tree.tokens == parent_draw)
    match[:, 0] = True
    accepted = ~(tree.mask & ~match[:, None, :]).any(-1)  # [B, N]
    # The deepest accepted node ends the path (sibling tokens are distinct, so accepted
    # nodes form one path; ties, if a drafter repeated a sibling, go to the lowest index).
    idx = torch.arange(n, device=dev)
    score = torch.where(accepted, tree.depth * (n + 1) + (n - idx), torch.full_like(tree.depth, -1))
    last = score.argmax(1)  # [B]
    rows = torch.arange(bsz, device=dev)
    num_nodes = tree.depth[rows, last] + 1
    on_path = tree.mask[rows, last]  # [B, N]: ancestors-or-self of the last node
    cut = None
    if near is not None:  # the first near tie on the path (depth = index of the token it emits) ends the round
        first_near = torch.where(on_path & near, tree.depth, torch.full_like(tree.depth, n)).amin(1)
        cut = first_near < num_nodes
        num_nodes = torch.minimum(num_nodes, first_near)
    width = depth_max + 1
    slot = torch.where(on_path, tree.depth, torch.full_like(tree.depth, width))
    path = torch.zeros(bsz, width + 1, dtype=torch.long, device=dev)
    path.scatter_(1, slot, idx.expand(bsz, n).clone())
    path = path[:, :width]
    live = torch.arange(width, device=dev)[None, :] < num_nodes[:, None]
    path = torch.where(live, path, torch.zeros_like(path))
    tokens = torch.where(live, drawn.gather(1, path), torch.zeros_like(path))
    path_logits = logits.gather(1, path[:, :, None].expand(-1, -1, logits.shape[-1]))
    logprobs = token_logprobs(path_logits, temperature[:, None].expand(-1, width), tokens)
    logprobs = torch.where(live, logprobs, torch.zeros_like(logprobs))
    return Acceptance(path=path, num_nodes=num_nodes, tokens=tokens, logprobs=logprobs, cut=cut)


def accept_chain(drafts: torch.Tensor, logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                 u: torch.Tensor | None, draft_len: torch.Tensor | None = None,
                 sampling: BatchSampling | None = None, ties: Ties | None = None,
                 forced: torch.Tensor | None = None) -> Acceptance:
    """`accept` for a chain root -> drafts[:, 0] -> drafts[:, 1] ... (top-1 drafting,
    n-gram drafts), without a tree: drafts [B, S], logits [B, S+1, V] at root..last
    draft, u [B, S+1], `draft_len` [B] valid drafts per row (default all). Node j sits at
    depth j, so the path is the identity and the KV entries are already in place."""
    bsz, steps = drafts.shape
    dev = logits.device
    drawn, near = draws(logits, temperature, top_p, u, sampling, ties, forced)  # [B, S+1]
    match = drafts == drawn[:, :-1]  # draft j+1 is what plain decoding emits after node j
    if draft_len is not None:
        match &= torch.arange(steps, device=dev)[None, :] < draft_len[:, None]
    num_nodes = match.long().cumprod(1).sum(1) + 1  # root + accepted prefix
    idx = torch.arange(steps + 1, device=dev)[None, :]
    cut = None
    if near is not None:  # draw j is emitted token j: the first near tie ends the round before it
        first_near = torch.where(near, idx, steps + 1).amin(1)
        cut = first_near < num_nodes
        num_nodes = torch.minimum(num_nodes, first_near)
    live = idx < num_nodes[:, None]
    tokens = torch.where(live, drawn, 0)
    logprobs = torch.where(live, token_logprobs(logits, temperature[:, None].expand(-1, steps + 1), drawn), 0.0)
    path = torch.where(live, idx, 0)
    return Acceptance(path=path, num_nodes=num_nodes, tokens=tokens, logprobs=logprobs, cut=cut)
