"""EAGLE-2-style dynamic draft trees from the EAGLE drafter (vectorised over the batch).

Level 1 holds the top-k tokens of the root feature; each further level expands the
k best nodes of the previous level (by cumulative draft log-probability) with their
top-k children. The `verify_tokens` best candidates overall form the verified tree;
since a child never scores above its parent and ties keep generation order, the
selection always contains every selected node's ancestors.
"""

from __future__ import annotations

import torch

from tlt.models.drafter import EagleDrafter
from tlt.models.kv_cache import KVCache

from .adaptive import Strategy
from .tree import DraftTree, build_tree


def draft_chain(drafter: EagleDrafter, cache: KVCache, slots: torch.Tensor, root_feature: torch.Tensor,
                base_pos: torch.Tensor, steps: int, window: int | None = None,
                read_slots: slice | None = None) -> torch.Tensor:
    """Top-1 drafting, the chain fast path of `draft_tree` (no tree bookkeeping):
    `steps` tokens per row [B, steps], each the argmax of the drafter's LM head on the
    previous level's feature. Arguments as in `draft_tree`."""
    tok = drafter.logits(root_feature).argmax(-1)  # [B]
    out = [tok]
    feat = root_feature[:, None]
    pos = base_pos[:, None] + torch.arange(steps, device=base_pos.device)[None, :]  # [B, steps]
    for level in range(1, steps):
        feat = drafter.features(tok[:, None], feat, pos[:, level - 1:level], cache=cache, slots=slots,
                                write_offset=level - 1, window=window, read_slots=read_slots)
        tok = drafter.logits(feat[:, 0]).argmax(-1)
        out.append(tok)
    return torch.stack(out, 1)


def draft_tree(drafter: EagleDrafter, cache: KVCache, slots: torch.Tensor, root_tokens: torch.Tensor,
               root_feature: torch.Tensor, base_pos: torch.Tensor, strategy: Strategy,
               window: int | None = None, read_slots: slice | None = None) -> DraftTree:
    """Draft for each row. `root_feature` [B, H] is the drafter's output at the last
    committed position (its LM head gives the distribution of the token after the
    pending `root_tokens`); `base_pos` [B] is the position of that pending token.
    Uncommitted drafter cache entries are written past the committed length and
    dropped by simply not advancing it. `window`/`read_slots` as in `CausalLM.hidden`
    (with a window, drafting reads nothing back from the device)."""
    bsz, hidden = root_feature.shape
    k = strategy.topk
    dev = root_feature.device
    logp = torch.log_softmax(drafter.logits(root_feature).float(), dim=-1).clamp_max(0.0)
    score, tok = logp.topk(k, dim=-1)  # [B, k]
    cand_tokens, cand_scores, cand_parents = [tok], [score], [torch.full((bsz, k), -1, device=dev)]
    num_cand = k
    exp_tok, exp_score = tok, score
    exp_cand = torch.arange(k, device=dev).expand(bsz, k)
    exp_feat = root_feature[:, None, :].expand(bsz, k, hidden)
    exp_anc = torch.zeros(bsz, k, 0, dtype=torch.bool, device=dev)
    eye = torch.eye(k, dtype=torch.bool, device=dev).expand(bsz, k, k)
    for level in range(1, strategy.steps):
        offset = (level - 1) * k
        tail = torch.cat([exp_anc, eye], dim=2)
        pos = (base_pos + level - 1)[:, None].expand(bsz, k)
        feat = drafter.features(exp_tok, exp_feat, pos, cache=cache, slots=slots,
                                write_offset=offset, tail_mask=tail, window=window, read_slots=read_slots)
        logp = torch.log_softmax(drafter.logits(feat).float(), dim=-1).clamp_max(0.0)
        child_score, child_tok = logp.topk(k, dim=-1)  # [B, k, k]
        child_score = (exp_score[:, :, None] + child_score).reshape(bsz, k * k)
        child_tok = child_tok.reshape(bsz, k * k)
        parent_of = torch.arange(k * k, device=dev) // k
        cand_tokens.append(child_tok)
        cand_scores.append(child_score)
        cand_parents.append(exp_cand.gather(1, parent_of.expand(bsz, k * k)))
        if level + 1 < strategy.steps:
            sel = child_score.topk(k, dim=-1).indices  # [B, k] best children to expand next
            par = sel // k
            exp_tok = child_tok.gather(1, sel)
            exp_score = child_score.gather(1, sel)
            exp_feat = feat.gather(1, par[:, :, None].expand(bsz, k, hidden))
            prev = exp_anc.gather(1, par[:, :, None].expand(bsz, k, exp_anc.shape[2]))
            exp_anc = torch.cat([prev, par[:, :, None] == torch.arange(k, device=dev)], dim=2)
            exp_cand = num_cand + sel
        num_cand += k * k
    tokens = torch.cat(cand_tokens, 1)
    scores = torch.cat(cand_scores, 1)
    parents = torch.cat(cand_parents, 1)
    keep = min(strategy.verify_tokens, tokens.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :keep]
    node_of_cand = torch.zeros(bsz, tokens.shape[1] + 1, dtype=torch.long, device=dev)  # slot 0: root
    node_of_cand.scatter_(1, order + 1, torch.arange(1, keep + 1, device=dev).expand(bsz, keep))
    node_parents = node_of_cand.gather(1, parents.gather(1, order) + 1)
    all_tokens = torch.cat([root_tokens[:, None], tokens.gather(1, order)], 1)
    all_parents = torch.cat([torch.zeros(bsz, 1, dtype=torch.long, device=dev), node_parents], 1)
    return build_tree(all_tokens, all_parents, torch.ones_like(all_tokens, dtype=torch.bool),
                      max_depth=strategy.steps, max_children=k)
