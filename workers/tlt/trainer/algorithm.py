"""The spec's algorithm applied to one step's rewards: the thin glue over `losses`."""

from __future__ import annotations

import torch

from tlt.trainer.losses import group_advantages, overlong_penalty


def shaped_rewards(rewards: torch.Tensor, response_lengths: torch.Tensor, algorithm) -> torch.Tensor:
    """Rewards plus DAPO's overlong penalty when `algorithm.overlong_penalty.enabled` (else unchanged).

    `algorithm` is the spec's `AlgorithmSpec`. These are the values advantages are
    computed from, so they are also what dynamic sampling should judge: a group
    whose shaped rewards differ has non-zero advantages.
    """
    rewards = rewards.float()
    op = algorithm.overlong_penalty
    if not op.enabled:
        return rewards
    return rewards + overlong_penalty(response_lengths, algorithm.max_response_tokens, op.buffer_tokens, op.penalty)


def step_advantages(rewards: torch.Tensor, response_lengths: torch.Tensor, algorithm) -> torch.Tensor:
    """Per-response advantages of a step: group-normalized shaped rewards (groups contiguous)."""
    return group_advantages(shaped_rewards(rewards, response_lengths, algorithm), algorithm.group_size)
