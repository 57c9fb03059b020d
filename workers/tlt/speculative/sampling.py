"""Sampling math shared by plain decoding and speculative verification (pure functions).

Randomness is counter-based: the uniform number for a decision is a hash of
(request seed, response position, stream), so a request's samples do not depend on
which other requests share its batch, and every decision draws fresh numbers without
a per-request generator object (which would force a Python loop over the batch).
Plain decoding and speculative verification both draw a position's token from stream 0
(`tlt.speculative.verify`), which makes their outputs token-identical; other streams
are free for other uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class BatchSampling:
    """What the host knows about a batch's sampling parameters: passing it spares the
    device reads that would otherwise pick the code path (and keeps CUDA graphs static)."""

    all_greedy: bool
    any_greedy: bool
    nucleus: bool  # some row has top_p < 1

    @classmethod
    def of(cls, temperatures, top_ps) -> "BatchSampling":
        greedy = [t <= 0 for t in temperatures]
        return cls(all(greedy), any(greedy), any(p < 1.0 for p in top_ps))


@dataclass(frozen=True)
class Ties:
    """How close to a decision boundary a draw counts as a near tie (`draws`): `mass`, a fraction of
    the probability mass between the uniform and its token's CDF interval edge (or a nucleus cut);
    `logits`, the gap between a greedy row's top two logits. The defaults are for float32: on the
    quickstart's model its forwards differed from float64 by at most 2.1e-5 in CDF (99.9% of
    positions within 1.4e-6) and 1.5e-4 in logits; about one draw in 3,000 falls inside them."""

    mass: float = 2e-5
    logits: float = 1e-3


FLOAT32_TIES = Ties()


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # Constants below 2**31 keep every product inside int64 (no overflow).
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _M32
    x = x ^ (x >> 16)
    x = (x * 0x297A2D39) & _M32
    return x ^ (x >> 15)


def seed_keys(seeds: torch.Tensor) -> torch.Tensor:
    """The per-request part of `uniforms` [B] (an engine computes it once per request)."""
    seeds = seeds.to(torch.int64)
    h = _mix32((seeds & _M32) ^ 0x5BD1E995)
    return _mix32(h ^ ((seeds >> 32) & _M32))


def uniforms(seeds: torch.Tensor, positions: torch.Tensor, num_streams: int,
             keys: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform(0, 1) float64 numbers [B, D, S] for seeds [B] and positions [B, D]
    (`keys`: `seed_keys(seeds)`, when the caller keeps them)."""
    h = (seed_keys(seeds) if keys is None else keys)[:, None]
    h = _mix32(h ^ (positions.to(torch.int64) & _M32))[..., None]
    streams = torch.arange(num_streams, device=h.device, dtype=torch.int64)
    h = _mix32(h ^ (streams * 0x3C6EF372 & _M32))
    h2 = _mix32(h ^ 0x1B873593)
    # 53 random bits from two 32-bit words, centred in their cell so 0 and 1 never occur
    bits = (h << 21) | (h2 >> 11)
    return (bits.to(torch.float64) + 0.5) / float(1 << 53)


def target_probs(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                 nucleus: bool | None = None, any_greedy: bool | None = None,
                 ties: Ties | None = None):
    """The distribution a token is drawn from: float64 [..., V]; with `ties`, also a mask [...] of
    the rows whose nucleus is within `ties.mass` of taking a token more or fewer.

    Rows with temperature 0 are greedy: a point mass on the argmax, which makes the
    speculative acceptance rule below reduce exactly to greedy verification.
    `nucleus` (some row has top_p < 1) and `any_greedy` (some row has temperature 0),
    when the caller knows them, spare two host reads.
    """
    logits = logits.to(torch.float64)
    temperature = temperature.to(torch.float64)
    greedy = temperature <= 0
    safe_t = torch.where(greedy, torch.ones_like(temperature), temperature)
    probs = torch.softmax(logits / safe_t[..., None], dim=-1)
    near = None
    if nucleus if nucleus is not None else bool((top_p < 1.0).any()):
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass strictly before each token
        cut = top_p.to(torch.float64)[..., None]
        keep_sorted = before < cut
        if ties is not None:
            near = ((before - cut).abs() < ties.mass).any(-1) & (cut[..., 0] < 1.0)
        keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        probs = probs / probs.sum(-1, keepdim=True)
    if any_greedy if any_greedy is not None else bool(greedy.any()):
        onehot = torch.zeros_like(probs).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        probs = torch.where(greedy[..., None], onehot, probs)
    if ties is None:
        return probs
    return probs, near if near is not None else torch.zeros(probs.shape[:-1], dtype=torch.bool, device=probs.device)


def token_logprobs(logits: torch.Tensor, temperature: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under the temperature-scaled target distribution, before top-p
    (temperature 0 counts as 1): what the RL trainer recomputes. float32 [...]."""
    t = temperature.to(torch.float64)
    scale = torch.where(t <= 0, torch.ones_like(t), t)
    lp = torch.log_softmax(logits.to(torch.float64) / scale[..., None], dim=-1)
    return lp.gather(-1, tokens[..., None].long())[..., 0].float()


def sample_from(probs: torch.Tensor, u: torch.Tensor, ties: Ties | None = None):
    """Inverse-CDF draw from (unnormalised) probs [..., V] with uniforms u [...]; with `ties`, also
    a mask [...] of the draws within `ties.mass` of their token's interval edge, where a forward
    that rounds differently may draw the neighbour (`draws`)."""
    cdf = probs.cumsum(-1)
    x = (u * cdf[..., -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, x, right=True)[..., 0].clamp_max(probs.shape[-1] - 1)
    if ties is None:
        return idx
    hi = cdf.gather(-1, idx[..., None])[..., 0]
    lo = torch.where(idx > 0, cdf.gather(-1, (idx - 1).clamp_min(0)[..., None])[..., 0], torch.zeros_like(hi))
    x = x[..., 0]
    return idx, torch.minimum(x - lo, hi - x) < ties.mass * cdf[..., -1]


def draws(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, u: torch.Tensor | None,
          sampling: BatchSampling | None = None, ties: Ties | None = None,
          forced: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The plain sampler's token for logits [B, N, V] (temperature and top_p [B]) with uniforms
    u [B, N]: tokens [B, N], and with `ties` a mask [B, N] of near-tie draws (else None).

    A near tie is a draw that a forward rounding its logits differently could flip (`Ties`): the
    uniform that close to its token's CDF interval edge, a nucleus that close to its cut, or a
    greedy row's top two logits that close. The engine does not emit such a draw: it recomputes
    that position in float64 and passes the token back as `forced` [B] (-1: none), which replaces
    the draw at node 0 (the round's first emitted token) and is never a near tie.

    Greedy rows take the argmax directly (no float64 softmax when the whole batch is
    greedy; then `u` may be None). `sampling`, when the caller knows it, spares host reads.
    """
    n = logits.shape[1]
    if sampling.all_greedy if sampling is not None else bool((temperature <= 0).all()):
        tokens, near = logits.argmax(-1), None
    else:
        out = target_probs(logits, temperature[:, None].expand(-1, n), top_p[:, None].expand(-1, n),
                           nucleus=sampling and sampling.nucleus, any_greedy=sampling and sampling.any_greedy, ties=ties)
        probs, near = out if ties is not None else (out, None)
        out = sample_from(probs, u, ties)
        tokens, near = (out[0], near | out[1]) if ties is not None else (out, None)
    if ties is not None:
        greedy = (temperature <= 0)[:, None]
        if sampling is None or sampling.any_greedy:
            top2 = logits.topk(2, dim=-1).values.to(torch.float64)
            near_greedy = greedy & (top2[..., 0] - top2[..., 1] < ties.logits)
            near = near_greedy if near is None else torch.where(greedy, near_greedy, near)
    if forced is not None:
        given = forced >= 0
        tokens = tokens.clone()
        tokens[:, 0] = torch.where(given, forced, tokens[:, 0])
        if near is not None:
            near = near.clone()
            near[:, 0] &= ~given
    return tokens, near
