"""Rollouts as the trainer receives them, and their padding into model inputs.

A rollout is one sampled response to one prompt. Prompt and response are stored
separately and unpadded; `collate` lays a chosen subset out for one forward pass:

    input_ids      [b, L]  prompt_i + response_i, right-padded with pad_id
    attention_mask [b, L]  1 on real tokens
    predict_at     [b, T]  index of the position whose logits predict response token j
                           (= len(prompt_i) + j - 1), 0 on padding
    response_ids   [b, T]  response tokens, right-padded
    mask           [b, T]  1.0 on response tokens that are trained on

Right padding keeps HF's default positions (0, 1, ...) correct for every real
token, and the causal mask keeps padding from influencing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

IntSeq = Sequence[int] | torch.Tensor
FloatSeq = Sequence[float] | torch.Tensor


def _long(seq: IntSeq) -> torch.Tensor:
    return torch.as_tensor(seq, dtype=torch.long).reshape(-1)


def _float(seq: FloatSeq) -> torch.Tensor:
    return torch.as_tensor(seq, dtype=torch.float32).reshape(-1)


class Rollouts:
    """A step's batch of rollouts.

    prompts, responses: token ids per rollout (1-D, unpadded; a prompt has at
        least one token, so the first response token has a position predicting it).
    advantages: one value per rollout (e.g. `group_advantages`), shape [B].
    old_logprobs: optional, per response token: log pi_old(token) as the rollout
        engine sampled it, i.e. of the temperature-scaled distribution. None: the
        trainer recomputes them with the current policy before its first update.
    response_masks: optional, per response token, 1 = train on it (default: all).
    """

    def __init__(self, prompts: Sequence[IntSeq], responses: Sequence[IntSeq], advantages: FloatSeq,
                 old_logprobs: Sequence[FloatSeq] | None = None,
                 response_masks: Sequence[FloatSeq] | None = None):
        self.prompts = [_long(p) for p in prompts]
        self.responses = [_long(r) for r in responses]
        self.advantages = _float(advantages)
        self.old_logprobs = None if old_logprobs is None else [_float(x) for x in old_logprobs]
        self.response_masks = None if response_masks is None else [_float(x) for x in response_masks]
        n = len(self.prompts)
        if len(self.responses) != n or self.advantages.numel() != n:
            raise ValueError(f"prompts ({n}), responses ({len(self.responses)}) and advantages "
                             f"({self.advantages.numel()}) must have one entry per rollout")
        for i, (p, r) in enumerate(zip(self.prompts, self.responses)):
            if p.numel() == 0:
                raise ValueError(f"rollout {i}: empty prompt (a response token needs a position predicting it)")
            for name, per_token in (("old_logprobs", self.old_logprobs), ("response_masks", self.response_masks)):
                if per_token is not None and per_token[i].numel() != r.numel():
                    raise ValueError(f"rollout {i}: {name} has {per_token[i].numel()} entries, "
                                     f"response has {r.numel()} tokens")

    def __len__(self) -> int:
        return len(self.prompts)

    def num_tokens(self, indices: Sequence[int] | None = None) -> int:
        """Response tokens trained on (mask 1) among `indices` (default: all)."""
        indices = range(len(self)) if indices is None else indices
        if self.response_masks is None:
            return sum(self.responses[i].numel() for i in indices)
        return int(sum(float(self.response_masks[i].sum()) for i in indices))


@dataclass
class Collated:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    predict_at: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor
    old_logprobs: torch.Tensor | None

    def to(self, device: torch.device | str) -> "Collated":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Collated(*(move(getattr(self, f)) for f in self.__dataclass_fields__))


def collate(rollouts: Rollouts, indices: Sequence[int], pad_id: int = 0,
            old_logprobs: list[torch.Tensor] | None = None) -> Collated:
    """Pads the rollouts at `indices` into one forward pass (layout in the module doc).

    `old_logprobs` overrides the batch's own (used when the trainer recomputed them).
    """
    indices = list(indices)
    b = len(indices)
    prompts = [rollouts.prompts[i] for i in indices]
    responses = [rollouts.responses[i] for i in indices]
    lengths = [p.numel() + r.numel() for p, r in zip(prompts, responses)]
    width, t_max = max(lengths), max(1, max(r.numel() for r in responses))
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(b, width, dtype=torch.long)
    predict_at = torch.zeros(b, t_max, dtype=torch.long)
    response_ids = torch.full((b, t_max), pad_id, dtype=torch.long)
    mask = torch.zeros(b, t_max)
    source = old_logprobs if old_logprobs is not None else rollouts.old_logprobs
    for row, (i, p, r) in enumerate(zip(indices, prompts, responses)):
        n_p, n_r = p.numel(), r.numel()
        input_ids[row, :n_p] = p
        input_ids[row, n_p:n_p + n_r] = r
        attention_mask[row, :n_p + n_r] = 1
        predict_at[row, :n_r] = torch.arange(n_p - 1, n_p + n_r - 1)
        response_ids[row, :n_r] = r
        mask[row, :n_r] = 1.0 if rollouts.response_masks is None else rollouts.response_masks[i]
    old = None if source is None else pad_per_token(source, indices, t_max)
    return Collated(input_ids, attention_mask, predict_at, response_ids, mask,
                    rollouts.advantages[indices].clone(), old)


def pad_per_token(values: list[torch.Tensor], indices: Sequence[int], width: int) -> torch.Tensor:
    """Per-token values of the rollouts at `indices`, right-padded with 0 to [len(indices), width]."""
    out = torch.zeros(len(indices), width)
    for row, i in enumerate(indices):
        out[row, :values[i].numel()] = values[i]
    return out


def plan_micro_batches(lengths: Sequence[int], max_sequences: int | None = None, max_tokens: int | None = None,
                       count: int | None = None) -> list[list[int]]:
    """Splits sequences (given by their lengths) into micro-batches; returns positions into `lengths`.

    Sequences are ordered longest first, so each micro-batch pads to a width close
    to its own sequences' lengths (with long-tailed response lengths, padding to the
    batch's longest would multiply the work). Then, in that order:

    - `max_tokens`: greedy: a micro-batch grows while (sequences x its longest
      length) stays within the budget (a longer single sequence gets its own);
    - else `max_sequences`: consecutive chunks of that many;
    - else one micro-batch.

    `count` forces the number of micro-batches (data-parallel ranks must run the
    same number of forward/backward passes): the ordered sequences are cut into
    `count` consecutive chunks whose sizes differ by at most one.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if count is not None:
        if not 1 <= count <= max(len(order), 1):
            raise ValueError(f"cannot cut {len(order)} sequences into {count} micro-batches")
        base, extra = divmod(len(order), count)
        out, start = [], 0
        for k in range(count):
            size = base + (k < extra)
            out.append(order[start:start + size])
            start += size
        return out
    if max_tokens is not None:
        out: list[list[int]] = []
        for i in order:
            # longest first: the chunk's first sequence fixes its padded width
            if out and (len(out[-1]) + 1) * lengths[out[-1][0]] <= max_tokens:
                out[-1].append(i)
            else:
                out.append([i])
        return out
    size = max_sequences or max(len(order), 1)
    return [order[k:k + size] for k in range(0, len(order), size)]
