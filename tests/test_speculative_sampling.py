"""The plain sampler draws from the target distribution (statistical test against exact
enumeration, with a control that must fail), coupled speculative verification emits
exactly the plain sampler's tokens, and the sampling helpers behave."""

import itertools

import pytest
import torch

from tlt.speculative.sampling import Ties, draws, sample_from, target_probs, uniforms
from tlt.speculative.tree import build_tree, chain_tree
from tlt.speculative.verify import accept, accept_chain

V = 4  # tiny vocabulary: whole blocks can be enumerated
BLOCK = 3  # tokens per compared block
ALPHA = 1e-3  # significance of the chi-square goodness-of-fit test


def _tables(seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(V, V, V, generator=g, dtype=torch.float64) * 1.5  # logits given (prev2, prev1)
    draft = torch.randn(V, V, V, generator=g, dtype=torch.float64) * 1.5  # a different, imperfect drafter
    return target, draft


def _draft_tree(ctx, draft, topk, steps):
    """Full top-k tree of `steps` levels from the drafter table, for contexts [B, 2]."""
    bsz = ctx.shape[0]
    tokens, parents, hist = [ctx[:, 1]], [torch.zeros(bsz, dtype=torch.long)], [ctx]
    frontier = [(0, ctx)]  # (node index, its (prev2, prev1))
    for _ in range(steps):
        nxt = []
        for node, c in frontier:
            top = draft[c[:, 0], c[:, 1]].topk(topk, dim=-1).indices
            for j in range(topk):
                tokens.append(top[:, j])
                parents.append(torch.full((bsz,), node, dtype=torch.long))
                nxt.append((len(tokens) - 1, torch.stack([c[:, 1], top[:, j]], 1)))
        frontier = nxt
    tok = torch.stack(tokens, 1)
    par = torch.stack(parents, 1)
    return build_tree(tok, par, torch.ones_like(tok, dtype=torch.bool))


def _node_contexts(tree, ctx):
    """(prev2, prev1) of every node: the context its target logits condition on."""
    bsz, n = tree.tokens.shape
    prev1 = tree.tokens
    par_tok = tree.tokens.gather(1, tree.parents)
    prev2 = torch.where(torch.arange(n)[None] == 0, ctx[:, :1].expand(bsz, n), par_tok)
    return prev2, prev1


def _plain_blocks(n, temperature, top_p, seed, sampler=None):
    """`n` continuations of BLOCK tokens after (1, 2), drawn the way plain decoding draws
    (inverse CDF with the uniform keyed by seed and response position)."""
    sampler = sampler or (lambda logits, t, tp, u: sample_from(target_probs(logits, t, tp), u))
    target, _ = _tables()
    ctx = torch.tensor([[1, 2]]).expand(n, 2).clone()
    seeds = torch.arange(n, dtype=torch.int64) + seed * 1_000_003
    temp = torch.full((n,), temperature, dtype=torch.float64)
    tp = torch.full((n,), top_p, dtype=torch.float64)
    out = torch.zeros(n, 0, dtype=torch.long)
    for pos in range(BLOCK):
        u = uniforms(seeds, torch.full((n, 1), pos, dtype=torch.long), 1)[:, 0, 0]
        tok = sampler(target[ctx[:, 0], ctx[:, 1]], temp, tp, u)
        out = torch.cat([out, tok[:, None]], 1)
        ctx = torch.stack([ctx[:, 1], tok], 1)
    return out, target


def _speculative_blocks(n, temperature, top_p, topk, steps, seed, draft):
    """The same continuations through draft trees and coupled verification; also the
    mean number of tokens emitted per round."""
    target, _ = _tables()
    ctx = torch.tensor([[1, 2]]).expand(n, 2).clone()
    seeds = torch.arange(n, dtype=torch.int64) + seed * 1_000_003
    temp = torch.full((n,), temperature, dtype=torch.float64)
    tp = torch.full((n,), top_p, dtype=torch.float64)
    # The root is the pending token; the first one is sampled plainly, as the engine does at prefill.
    u0 = uniforms(seeds, torch.zeros(n, 1, dtype=torch.long), 1)[:, 0, 0]
    first = sample_from(target_probs(target[ctx[:, 0], ctx[:, 1]], temp, tp), u0)
    out = [[t] for t in first.tolist()]
    ctx = torch.stack([ctx[:, 1], first], 1)
    rounds, emitted = 0, 0
    while min(len(o) for o in out) < BLOCK:
        tree = _draft_tree(ctx, draft, topk, steps)
        p2, p1 = _node_contexts(tree, ctx)
        pos = torch.tensor([len(o) for o in out])[:, None] + torch.arange(tree.max_depth + 1)[None]
        u = uniforms(seeds, pos, 1)[..., 0]
        acc = accept(tree, target[p2, p1], temp, tp, u)
        rounds += n
        emitted += int(acc.num_nodes.sum())
        for b in range(n):
            out[b] += acc.tokens[b, : int(acc.num_nodes[b])].tolist()
        ctx = torch.tensor([o[-2:] for o in out])
    return torch.tensor([o[:BLOCK] for o in out]), emitted / rounds


def _exact_block_probs(target, temperature, top_p):
    probs = {}
    temp = torch.tensor([temperature], dtype=torch.float64)
    tp = torch.tensor([top_p], dtype=torch.float64)
    for block in itertools.product(range(V), repeat=BLOCK):
        ctx, p = (1, 2), 1.0
        for tok in block:
            p *= float(target_probs(target[ctx][None], temp, tp)[0, tok])
            ctx = (ctx[1], tok)
        probs[block] = p
    return probs


def _chi_square_pvalue(samples, exact):
    n = samples.shape[0]
    counts = {}
    for row in samples.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    if any(exact.get(k, 0.0) == 0.0 for k in counts):
        return 0.0  # a block the target can never produce
    cells = [k for k, p in exact.items() if p > 0]
    # pool rare cells so every expected count is >= 5 (chi-square validity)
    stat, pooled_obs, pooled_exp = 0.0, 0, 0.0
    used = 0
    for k in sorted(cells, key=lambda k: exact[k]):
        e, o = exact[k] * n, counts.get(k, 0)
        if e < 5:
            pooled_obs += o
            pooled_exp += e
            continue
        stat += (o - e) ** 2 / e
        used += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        used += 1
    df = used - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0), torch.tensor(stat / 2.0)))


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_plain_sampler_continuations_follow_the_target_distribution(temperature, top_p):
    samples, target = _plain_blocks(20_000, temperature, top_p, seed=1)
    p = _chi_square_pvalue(samples, _exact_block_probs(target, temperature, top_p))
    assert p > ALPHA, f"chi-square p-value {p:.2e} rejects the target distribution"


def _sampler_without_top_p_renormalisation(logits, temperature, top_p, u):
    """A wrong sampler for the control: draws from the temperature distribution, ignoring
    the nucleus (or, at top-p 1, with the temperature applied twice)."""
    probs = target_probs(logits, temperature, torch.ones_like(top_p))
    if bool((top_p >= 1).all()):
        probs = target_probs(logits, temperature * temperature * 0.8, top_p)
    return sample_from(probs, u)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_the_same_test_rejects_a_wrong_sampler(temperature, top_p):
    samples, target = _plain_blocks(20_000, temperature, top_p, seed=2, sampler=_sampler_without_top_p_renormalisation)
    p = _chi_square_pvalue(samples, _exact_block_probs(target, temperature, top_p))
    assert p < ALPHA


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
@pytest.mark.parametrize("topk,steps", [(1, 4), (2, 2), (3, 3)])
def test_speculative_continuations_are_token_identical_to_plain_sampling(temperature, top_p, topk, steps):
    target, _ = _tables()
    # A good but imperfect drafter (the target's logits, perturbed), so rounds accept several tokens.
    g = torch.Generator().manual_seed(5)
    draft = target + 0.5 * torch.randn(target.shape, generator=g, dtype=torch.float64)
    plain, _ = _plain_blocks(2_000, temperature, top_p, seed=3)
    spec, per_round = _speculative_blocks(2_000, temperature, top_p, topk, steps, seed=3, draft=draft)
    assert torch.equal(spec, plain), f"{int((spec != plain).any(1).sum())} continuations differ"
    assert per_round > 1.5, f"acceptance {per_round:.2f}: the drafter must make speculation really run"


def test_a_drafter_that_is_always_wrong_still_gives_plain_outputs():
    target, _ = _tables()
    draft = -target  # proposes the least likely tokens
    plain, _ = _plain_blocks(500, 1.0, 1.0, seed=4)
    spec, per_round = _speculative_blocks(500, 1.0, 1.0, topk=1, steps=3, seed=4, draft=draft)
    assert torch.equal(spec, plain)
    assert per_round < 1.3


def test_greedy_rows_accept_exactly_the_argmax_path():
    target, draft = _tables()
    ctx = torch.tensor([[0, 1], [2, 3], [3, 3]])
    tree = _draft_tree(ctx, draft, topk=2, steps=3)
    p2, p1 = _node_contexts(tree, ctx)
    zero = torch.zeros(3, dtype=torch.float64)
    u = uniforms(torch.arange(3), torch.zeros(3, tree.max_depth + 1, dtype=torch.long), 1)[..., 0]
    acc = accept(tree, target[p2, p1], zero, torch.ones(3, dtype=torch.float64), u)
    for b in range(3):
        c = tuple(ctx[b].tolist())
        expected = []
        for _ in range(int(acc.num_nodes[b])):
            tok = int(target[c].argmax())
            expected.append(tok)
            c = (c[1], tok)
        assert acc.tokens[b, : len(expected)].tolist() == expected
        # stopping was forced: the argmax after the last accepted node is not among its children
        last = int(acc.path[b, acc.num_nodes[b] - 1])
        kids = [int(k) for k in tree.children[b, last] if k >= 0]
        assert all(int(tree.tokens[b, k]) != expected[-1] for k in kids)


def test_chain_tree_marks_padding_invalid_and_masks_ancestors():
    tree = chain_tree(torch.tensor([5, 6]), torch.tensor([[1, 2, 3], [4, 0, 0]]), torch.tensor([3, 1]))
    assert tree.valid.tolist() == [[True] * 4, [True, True, False, False]]
    assert tree.depth.tolist() == [[0, 1, 2, 3], [0, 1, 0, 0]]
    assert tree.mask[0].tolist() == torch.ones(4, 4, dtype=torch.bool).tril().tolist()
    assert tree.children[1, 1].tolist() == [-1]


def test_uniforms_depend_only_on_seed_position_and_stream():
    seeds = torch.tensor([7, 8, 7])
    pos = torch.tensor([[3, 4], [3, 4], [3, 9]])
    u = uniforms(seeds, pos, 2)
    assert u[0, 0, 0] == u[2, 0, 0] and u[0, 0, 0] != u[1, 0, 0] and u[0, 0, 0] != u[0, 0, 1]
    big = uniforms(torch.arange(200_000), torch.zeros(200_000, 1, dtype=torch.long), 1).flatten()
    assert 0.0 < float(big.min()) and float(big.max()) < 1.0
    hist = torch.histc(big.float(), bins=10, min=0, max=1) / big.numel()
    assert (hist - 0.1).abs().max() < 0.005


def test_top_p_keeps_the_smallest_nucleus_and_temperature_zero_is_argmax():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64))
    p = target_probs(logits, torch.tensor([1.0]), torch.tensor([0.7]))
    assert torch.allclose(p, torch.tensor([[0.625, 0.375, 0.0, 0.0]], dtype=torch.float64))
    g = target_probs(logits, torch.tensor([0.0]), torch.tensor([1.0]))
    assert g.tolist() == [[1.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (1.0, 1.0), (0.7, 0.9)])
def test_the_chain_fast_path_accepts_what_the_tree_rule_accepts(temperature, top_p):
    """accept_chain (no tree: prefix match against the plain sampler's draws) equals
    accept on the same chain as a tree, padding drafts included."""
    g = torch.Generator().manual_seed(9)
    bsz, steps = 64, 4
    logits = torch.randn(bsz, steps + 1, V, generator=g, dtype=torch.float64) * 2
    drafts = logits[:, :-1].argmax(-1)  # often right ...
    wrong = torch.rand(bsz, steps, generator=g) < 0.3
    drafts = torch.where(wrong, torch.randint(0, V, (bsz, steps), generator=g), drafts)  # ... sometimes not
    lengths = torch.randint(0, steps + 1, (bsz,), generator=g)
    temp = torch.full((bsz,), temperature, dtype=torch.float64)
    tp = torch.full((bsz,), top_p, dtype=torch.float64)
    u = uniforms(torch.arange(bsz), torch.arange(steps + 1).expand(bsz, -1), 1)[..., 0]
    tree = chain_tree(drafts[:, 0] * 0, drafts, lengths)  # the root's token is not checked
    ref = accept(tree, logits, temp, tp, u, max_depth=steps)
    got = accept_chain(drafts, logits, temp, tp, u, draft_len=lengths)
    assert torch.equal(got.num_nodes, ref.num_nodes)
    assert torch.equal(got.tokens, ref.tokens)
    assert torch.equal(got.path, ref.path)
    assert torch.allclose(got.logprobs, ref.logprobs)
    assert 1.5 < float(ref.num_nodes.float().mean()) < steps + 1  # both accepting and rejecting happened


def test_draws_flag_the_near_ties_a_differently_rounded_forward_could_flip():
    """A uniform within `Ties.mass` of its token's CDF edge, a nucleus within it of its cut, and a
    greedy row's top two logits within `Ties.logits` are near ties; other draws are not."""
    ties = Ties(mass=1e-4, logits=1e-3)
    half = torch.log(torch.tensor([[[0.5, 0.5, 1e-9, 1e-9]]], dtype=torch.float64))  # [1, 1, V]
    t1, p1 = torch.tensor([1.0]), torch.tensor([1.0])
    for u, near_expected in ((0.5 + 1e-6, True), (0.5 - 1e-6, True), (0.25, False), (0.75, False)):
        tokens, near = draws(half, t1, p1, torch.tensor([[u]], dtype=torch.float64), ties=ties)
        assert bool(near[0, 0]) is near_expected, u
        nudged, _ = draws(half + torch.tensor([1e-5, 0, 0, 0]), t1, p1, torch.tensor([[u]], dtype=torch.float64), ties=ties)
        if not near_expected:
            assert nudged[0, 0] == tokens[0, 0], "a draw away from the edges survives a rounding difference"
    # the nucleus: top_p 0.5 sits on the first token's mass exactly
    _, near = draws(half, t1, torch.tensor([0.5]), torch.tensor([[0.25]], dtype=torch.float64), ties=ties)
    assert bool(near[0, 0])
    # greedy: the top two logits 5e-4 apart are a near tie, 1e-2 apart are not
    for gap, near_expected in ((5e-4, True), (1e-2, False)):
        logits = torch.tensor([[[1.0 + gap, 1.0, 0.0, 0.0]]], dtype=torch.float64)
        _, near = draws(logits, torch.tensor([0.0]), p1, None, ties=ties)
        assert bool(near[0, 0]) is near_expected
    # a forced (recomputed) token replaces the round's first draw and is never a near tie
    tokens, near = draws(half, t1, p1, torch.tensor([[0.5 + 1e-6]], dtype=torch.float64), ties=ties,
                         forced=torch.tensor([3]))
    assert int(tokens[0, 0]) == 3 and not bool(near[0, 0])


def test_a_chain_round_stops_before_its_first_near_tie_draw():
    """Drafts all accepted up to a near-tie draw: the round emits only the draws before it and says
    it was cut, so the engine can recompute that position; with no near tie it is not cut."""
    peaked = torch.full((1, 4, V), -20.0, dtype=torch.float64)
    peaked[0, :, 1] = 0.0  # the target emits token 1 with probability ~1 at every node
    drafts = torch.tensor([[1, 1, 1]])
    u = torch.full((1, 4), 0.5, dtype=torch.float64)
    t1, p1 = torch.tensor([1.0]), torch.tensor([1.0])
    whole = accept_chain(drafts, peaked, t1, p1, u, ties=Ties())
    assert int(whole.num_nodes[0]) == 4 and not bool(whole.cut[0])
    u[0, 2] = 1 - 1e-12  # the third draw lands on the last edge of the CDF
    cut = accept_chain(drafts, peaked, t1, p1, u, ties=Ties())
    assert int(cut.num_nodes[0]) == 2 and bool(cut.cut[0])
    assert cut.tokens[0, :2].tolist() == [1, 1]
    tree = accept(chain_tree(torch.tensor([0]), drafts, torch.tensor([3])), peaked, t1, p1, u, ties=Ties())
    assert int(tree.num_nodes[0]) == 2 and bool(tree.cut[0])
