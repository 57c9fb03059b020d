"""GRPO and DAPO as pure tensor functions.

Nothing here touches a model, an optimizer or a device: every function maps
tensors to tensors (or plain data), so each can be checked against values worked
out by hand. Shapes: `B` sequences, `T` response tokens per sequence (padded);
`mask` is 1.0 on real response tokens and 0.0 on padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

LossAggregation = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"]
AGGREGATIONS: tuple[str, ...] = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum")


# ---------------------------------------------------------------------------------
# Rewards -> advantages


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's group-normalized advantage of each response.

    `rewards` is 1-D of length `G * group_size`, the responses of a prompt group
    contiguous. For response i of group g:

        A_i = (r_i - mean_g) / (std_g + eps)

    where mean_g and std_g are the mean and the sample standard deviation
    (Bessel-corrected, divisor group_size - 1) of the group's rewards. A group
    whose rewards are all equal gets A = 0 for every response (0 / eps): it
    carries no preference, so it contributes no policy gradient.
    Returns a tensor shaped like `rewards` (float).
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 to normalize within a group, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} entries, "
                         f"got shape {tuple(rewards.shape)}")
    grouped = rewards.float().view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True, unbiased=True)
    return ((grouped - mean) / (std + eps)).view(-1)


def overlong_penalty(lengths: torch.Tensor, max_response_tokens: int, buffer_tokens: int,
                     penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment, the term added to each response's reward.

    With L = max_response_tokens, C = buffer_tokens and n = response length:

        0                          if n <= L - C
        -penalty * (n - (L - C)) / C   if L - C < n <= L   (linear ramp)
        -penalty                   if n > L

    so the penalty is 0 up to the start of the buffer and reaches -penalty at the
    limit. Returns a float tensor shaped like `lengths` (values <= 0).
    """
    if not 0 < buffer_tokens <= max_response_tokens:
        raise ValueError(f"need 0 < buffer_tokens <= max_response_tokens, got {buffer_tokens}, {max_response_tokens}")
    start = max_response_tokens - buffer_tokens
    over = (lengths.float() - start).clamp(min=0.0, max=float(buffer_tokens))
    return -penalty * over / buffer_tokens


@dataclass(frozen=True)
class SamplingDecision:
    """What DAPO's dynamic sampling says after a sampling round.

    keep: indices of the groups to train on, in sampling order (at most the target).
    sample_more: whether to run another sampling round.
    missing: how many more mixed groups the target still needs (0 when met).
    """

    keep: list[int]
    sample_more: bool
    missing: int


def is_mixed(group_rewards: Sequence[float] | torch.Tensor) -> bool:
    """A group is informative when its rewards are not all equal (exact comparison)."""
    r = torch.as_tensor(group_rewards, dtype=torch.float64)
    return r.numel() > 1 and bool(r.max() > r.min())


def dynamic_sampling(groups: Sequence[Sequence[float] | torch.Tensor], target_groups: int,
                     extra_rounds_done: int, max_rounds: int) -> SamplingDecision:
    """DAPO's dynamic sampling filter.

    `groups` are the reward lists of every group sampled so far in this step, in
    sampling order (first round first); `extra_rounds_done` counts the sampling
    rounds run after the first (0 right after the first round); `max_rounds` is
    the most extra rounds allowed.

    Keeps the groups with mixed rewards (all-equal groups have zero advantage and
    would only dilute the batch), the earliest first, up to `target_groups`.
    Asks for more while fewer than `target_groups` are kept and
    `extra_rounds_done < max_rounds`. When the rounds are used up, the step trains
    on the mixed groups it has, possibly fewer than the target (possibly none:
    then the caller skips the update).
    """
    if target_groups < 1:
        raise ValueError(f"target_groups must be >= 1, got {target_groups}")
    mixed = [i for i, g in enumerate(groups) if is_mixed(g)]
    keep = mixed[:target_groups]
    missing = target_groups - len(keep)
    return SamplingDecision(keep=keep, sample_more=missing > 0 and extra_rounds_done < max_rounds,
                            missing=missing)


# ---------------------------------------------------------------------------------
# Token losses


def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  clip_low: float, clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped PPO surrogate with an asymmetric clip range.

    With ratio = exp(logprobs - old_logprobs) and A the advantage (broadcast to
    tokens when it is per sequence, shape [B] or [B, 1]):

        loss_t = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))

    i.e. minus PPO's pessimistic objective. The clipped branch wins exactly when
    the ratio has left the range in the direction the advantage pushes it
    (ratio > 1 + clip_high with A > 0, ratio < 1 - clip_low with A < 0); there the
    loss is constant in the parameters and the token's gradient is zero.

    Returns (loss [B, T], clipped [B, T] bool: tokens whose clipped branch is
    strictly larger, i.e. tokens without gradient).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(policy || reference) (Schulman's "approximating KL").

        kl_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1

    Non-negative, zero where the two log-probabilities agree, unbiased for the KL
    on tokens sampled from the policy.
    """
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: LossAggregation) -> torch.Tensor:
    """Reduces per-token losses [B, T] to a scalar over the tokens where mask is 1.

    - "token-mean":          sum_{b,t} m*l / sum_{b,t} m  (every token weighs the
                             same; long responses weigh more; DAPO)
    - "seq-mean-token-mean": (1/B) sum_b [ sum_t m*l / sum_t m ]  (every sequence
                             weighs the same; GRPO as published)
    - "seq-mean-token-sum":  (1/B) sum_b sum_t m*l  (sum over a sequence's tokens;
                             Dr. GRPO-style, no length normalization)

    A sequence without response tokens counts in B and contributes 0; a batch
    without any tokens gives 0.
    """
    mask = mask.to(loss.dtype)
    masked = loss * mask
    if mode == "token-mean":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if mode == "seq-mean-token-mean":
        return (masked.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)).mean()
    if mode == "seq-mean-token-sum":
        return masked.sum(dim=-1).mean()
    raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {AGGREGATIONS}")


def aggregation_weight(mask: torch.Tensor, mode: LossAggregation, total_sequences: int,
                       total_tokens: float) -> float:
    """Share of one micro-batch in its mini-batch's aggregate.

    Splitting a mini-batch into micro-batches and summing
    `aggregate(micro) * aggregation_weight(micro)` gives exactly
    `aggregate(mini-batch)`: token-mean weighs by tokens, the seq-mean modes by
    sequences.
    """
    if mode == "token-mean":
        return float(mask.sum()) / max(total_tokens, 1.0)
    return mask.shape[0] / total_sequences
