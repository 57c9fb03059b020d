"""Measuring a drafter: speculative sampling with a KV cache over a list of prompts,
reporting the mean acceptance length (tokens emitted per verification round, the
bonus token included).

This is a compact measurement loop, not the rollout engine: static batches (rows
leave when done, none enter), no adaptive switching. It reuses the lossless
acceptance rule and draft trees of `tlt.speculative`, so what it measures is what
the engine gets with the same drafter and strategy. With no proposer it is plain
sampling from the target (used to generate the target's own data for warm-up).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tlt.speculative.adaptive import Strategy
from tlt.speculative.eagle import draft_tree
from tlt.speculative.sampling import sample_from, target_probs, uniforms
from tlt.speculative.tree import chain_tree
from tlt.speculative.verify import accept


@dataclass
class SpecResult:
    outputs: list[list[int]]  # response tokens per prompt (stop token included when produced)
    rounds: int = 0
    emitted: int = 0  # tokens emitted by verification rounds (acceptance numerator)
    per_round: list[int] = field(default_factory=list)

    @property
    def acceptance_length(self) -> float:
        return self.emitted / self.rounds if self.rounds else 0.0


class EagleProposer:
    def __init__(self, drafter, strategy: Strategy):
        self.drafter = drafter
        self.strategy = strategy


class NgramProposer:
    def __init__(self, ngram, steps: int):
        self.ngram = ngram
        self.steps = steps


@torch.no_grad()
def speculative_generate(target, prompts: Sequence[Sequence[int]], max_tokens: int, proposer=None,
                         temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                         stop_ids: Sequence[int] = (), batch_size: int = 16,
                         groups: Sequence | None = None, progress: bool = False) -> SpecResult:
    """Generate up to `max_tokens` per prompt; speculate with `proposer` when given."""
    from tqdm import tqdm

    result = SpecResult(outputs=[[] for _ in prompts])
    bar = tqdm(total=len(prompts), desc="generate", unit="seq", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        _run_batch(target, [list(prompts[i]) for i in rows], rows, max_tokens, proposer, temperature,
                   top_p, seed, set(int(s) for s in stop_ids), result,
                   [groups[i] for i in rows] if groups is not None else None)
        bar.update(len(rows))
    bar.close()
    return result


def _run_batch(target, prompts, ids, max_tokens, proposer, temperature, top_p, seed, stops, result, groups):
    dev = target.device
    bsz = len(prompts)
    eagle = isinstance(proposer, EagleProposer)
    depth = proposer.strategy.steps if eagle else (proposer.steps if proposer is not None else 0)
    lens = torch.tensor([len(p) for p in prompts], device=dev)
    width = int(lens.max())
    capacity = width + max_tokens + depth + 2
    cache = target.new_cache(bsz, capacity)
    slots = torch.arange(bsz, device=dev)
    ids_t = torch.zeros(bsz, width, dtype=torch.long, device=dev)
    for r, p in enumerate(prompts):
        ids_t[r, :len(p)] = torch.tensor(p, device=dev)
    hidden = target.hidden(ids_t, cache=cache, slots=slots)
    cache.advance(slots, lens)
    last_h = hidden[torch.arange(bsz, device=dev), lens - 1]
    temp = torch.full((bsz,), float(temperature), dtype=torch.float64, device=dev)
    topp = torch.full((bsz,), float(top_p), dtype=torch.float64, device=dev)
    seeds = torch.tensor([seed * 1_000_003 + i for i in ids], dtype=torch.long, device=dev)
    u0 = uniforms(seeds, torch.zeros(bsz, 1, dtype=torch.long, device=dev), 1)[:, 0, 0]
    pending = sample_from(target_probs(target.logits(last_h), temp, topp), u0)
    responses = [[int(t)] for t in pending.tolist()]
    done = [(int(t) in stops) or max_tokens <= 1 for t in pending.tolist()]

    dcache = root_feat = None
    ngram = proposer.ngram if isinstance(proposer, NgramProposer) else None
    if eagle:
        drafter = proposer.drafter
        dcache = drafter.new_cache(bsz, capacity)
        d_in = torch.zeros(bsz, width, dtype=torch.long, device=dev)
        for r, p in enumerate(prompts):
            d_in[r, :len(p) - 1] = ids_t[r, 1:len(p)]
            d_in[r, len(p) - 1] = pending[r]
        feat = drafter.features(d_in, hidden, cache=dcache, slots=slots)
        dcache.advance(slots, lens)
        root_feat = feat[torch.arange(bsz, device=dev), lens - 1]

    while not all(done):
        act = torch.tensor([r for r in range(bsz) if not done[r]], device=dev)
        n = act.shape[0]
        base_pos = cache.lengths[act]  # position of the pending token
        roots = pending[act]
        if eagle:
            tree = draft_tree(proposer.drafter, dcache, act, roots, root_feat[act], base_pos, proposer.strategy)
        elif ngram is not None:
            drafts = torch.zeros(n, depth, dtype=torch.long, device=dev)
            dl = torch.zeros(n, dtype=torch.long, device=dev)
            for i, r in enumerate(act.tolist()):
                seq = prompts[r] + responses[r]
                grp = groups[r] if groups is not None else None
                prop = ngram.propose(("m", ids[r]), seq, depth, group=grp)[:depth]
                if prop:
                    drafts[i, :len(prop)] = torch.tensor(prop, device=dev)
                    dl[i] = len(prop)
            tree = chain_tree(roots, drafts, dl)
        else:
            tree = chain_tree(roots, torch.zeros(n, 0, dtype=torch.long, device=dev),
                              torch.zeros(n, dtype=torch.long, device=dev))
        positions = base_pos[:, None] + tree.depth
        h = target.hidden(tree.tokens, positions=positions, cache=cache, slots=act, tail_mask=tree.mask)
        logits = target.logits(h)
        d = tree.max_depth
        resp_pos = torch.tensor([len(responses[r]) for r in act.tolist()], device=dev)
        u = uniforms(seeds[act], resp_pos[:, None] + torch.arange(d + 1, device=dev)[None, :], 1)[..., 0]
        acc = accept(tree, logits, temp[act], topp[act], u, max_depth=d)
        cache.keep(act, acc.path, acc.num_nodes)
        counts = acc.num_nodes
        if proposer is not None:
            result.rounds += n
            result.emitted += int(counts.sum())
            result.per_round.extend(counts.tolist())
        new_pending = acc.tokens.gather(1, (counts - 1)[:, None])[:, 0]
        if eagle:
            rows_t = torch.arange(n, device=dev)[:, None]
            path_h = h[rows_t, acc.path]  # target states at root..last accepted node (padded)
            feat = proposer.drafter.features(acc.tokens, path_h, positions=base_pos[:, None] + torch.arange(
                d + 1, device=dev)[None, :], cache=dcache, slots=act)
            dcache.advance(act, counts)
            root_feat[act] = feat[torch.arange(n, device=dev), counts - 1]
        pending[act] = new_pending
        for i, r in enumerate(act.tolist()):
            for t in acc.tokens[i, :int(counts[i])].tolist():
                responses[r].append(int(t))
                if int(t) in stops or len(responses[r]) >= max_tokens:
                    done[r] = True
                    break
    for r, i in enumerate(ids):
        # the first response token was sampled at prefill; the rest by rounds
        result.outputs[i] = responses[r][:max_tokens]
        if ngram is not None:
            ngram.finish(("m", i), prompts[r] + result.outputs[i],
                         group=groups[r] if groups is not None else None)


def plain_generate(target, prompts, max_tokens, **kw) -> list[list[int]]:
    return speculative_generate(target, prompts, max_tokens, proposer=None, **kw).outputs


def chain_strategy(steps: int = 4) -> Strategy:
    return Strategy(steps, 1, steps)


def mean_acceptance(target, drafter_or_ngram, prompts, max_tokens, steps: int = 4, **kw) -> SpecResult:
    if hasattr(drafter_or_ngram, "features"):
        proposer = EagleProposer(drafter_or_ngram, chain_strategy(steps))
    else:
        proposer = NgramProposer(drafter_or_ngram, steps)
    return speculative_generate(target, prompts, max_tokens, proposer=proposer, **kw)
