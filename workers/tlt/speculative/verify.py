"""Lossless acceptance of a draft tree (pure function, vectorised over the batch).

Multi-draft rule for deterministic candidates: at the current node with target
distribution p, try its children c_1, c_2, ... in order. Each candidate is a point
mass, so it is accepted with probability p(c_i) / sum(p) of the current residual; on
rejection c_i's mass is zeroed (the residual max(p - q, 0) of a point mass q) and the
rest renormalised. If a candidate is accepted we move to it and repeat; if all are
rejected (or the node has no children), the token is drawn from the residual. Every
emitted token is then distributed exactly as the target's p: P(c_1) = p(c_1),
P(c_2) = (1 - p(c_1)) * p(c_2) / (1 - p(c_1)), and so on. Greedy rows use a point-mass
p on the argmax, which turns the same rule into "longest path matching the argmax".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import sample_from, target_probs, token_logprobs
from .tree import DraftTree


@dataclass
class Acceptance:
    path: torch.Tensor  # [B, D+1] node indices root..last accepted node, padded with 0
    num_nodes: torch.Tensor  # [B] nodes on the path incl. root = tokens emitted this round
    tokens: torch.Tensor  # [B, D+1] emitted tokens (accepted drafts then the final sample), padded
    logprobs: torch.Tensor  # [B, D+1] target log-probs of the emitted tokens


def accept(tree: DraftTree, logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
           u: torch.Tensor, *, renormalize_on_reject: bool = True) -> Acceptance:
    """Accept a prefix of `tree` given the target's logits at every node [B, N, V].

    `u[b, d, s]` are uniforms for decision d (the d-th emitted token of the round):
    stream 0 for the final sample, stream 1 + j for the j-th candidate test.
    `renormalize_on_reject=False` is a deliberately wrong rule kept for the tests that
    must detect it (it samples the fallback from p, not from the residual).
    """
    bsz, n, _ = logits.shape
    dev = logits.device
    max_depth = tree.max_depth
    num_cand = tree.children.shape[2]
    rows = torch.arange(bsz, device=dev)
    cur = torch.zeros(bsz, dtype=torch.long, device=dev)
    active = torch.ones(bsz, dtype=torch.bool, device=dev)
    path = torch.zeros(bsz, max_depth + 1, dtype=torch.long, device=dev)
    out_tokens = torch.zeros(bsz, max_depth + 1, dtype=torch.long, device=dev)
    out_lp = torch.zeros(bsz, max_depth + 1, dtype=torch.float32, device=dev)
    num_nodes = torch.zeros(bsz, dtype=torch.long, device=dev)
    for d in range(max_depth + 1):
        node_logits = logits[rows, cur]
        p = target_probs(node_logits, temperature, top_p)
        p_original = p
        chosen = torch.full((bsz,), -1, dtype=torch.long, device=dev)
        if d < max_depth:
            for j in range(num_cand):
                child = tree.children[rows, cur, j]
                trying = active & (chosen < 0) & (child >= 0)
                if not bool(trying.any()):
                    break
                tok = tree.tokens[rows, child.clamp_min(0)]
                p_tok = p.gather(1, tok[:, None])[:, 0]
                ok = trying & (u[:, d, 1 + j] * p.sum(-1) < p_tok)
                chosen = torch.where(ok, child, chosen)
                rejected = trying & ~ok
                if renormalize_on_reject:
                    p = p.scatter(1, tok[:, None], torch.where(rejected[:, None], 0.0, p_tok[:, None]))
        accepted = active & (chosen >= 0)
        finishing = active & ~accepted
        fallback = sample_from(p if renormalize_on_reject else p_original, u[:, d, 0])
        tok_acc = tree.tokens[rows, chosen.clamp_min(0)]
        emitted = torch.where(accepted, tok_acc, fallback)
        lp = token_logprobs(node_logits, temperature, emitted)
        out_tokens[:, d] = torch.where(active, emitted, out_tokens[:, d])
        out_lp[:, d] = torch.where(active, lp, out_lp[:, d])
        path[:, d] = torch.where(active, cur, path[:, d])
        num_nodes += active.long()
        cur = torch.where(accepted, chosen, cur)
        active = accepted
        if not bool(active.any()):
            break
    return Acceptance(path=path, num_nodes=num_nodes, tokens=out_tokens, logprobs=out_lp)
