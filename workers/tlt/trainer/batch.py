"""Rollouts as the trainer receives them, and their layout into model inputs.

A rollout is one sampled response to one prompt. Prompt and response are stored
separately and unpadded; `pack` (the trainer's default) or `collate` lays a chosen
subset out for one forward pass.

`pack`: one row, no padding (veRL's remove-padding):

    input_ids      [1, N]  prompt_1 + response_1 + prompt_2 + response_2 + ...
    position_ids   [1, N]  0, 1, ... restarting at every sequence
    varlen                 where each sequence is, for attention (`tlt.models.varlen`)

`collate`: one row per sequence, right-padded with pad_id to the longest:

    input_ids      [b, L]
    attention_mask [b, L]  1 on real tokens

Both then give, per sequence (the loss side, small next to the forward):

    predict_at     [b, T]  index in the sequence's row of the position whose logits
                           predict response token j, 0 on padding
    response_ids   [b, T]  response tokens, right-padded
    mask           [b, T]  1.0 on response tokens that are trained on
    valid          [b, T]  True on response tokens

Right padding keeps HF's default positions (0, 1, ...) correct for every real
token, and the causal mask keeps padding from influencing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tlt.models.varlen import VarlenPlan, plan as varlen_plan

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
    attention_mask: torch.Tensor | None
    predict_at: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor
    valid: torch.Tensor  # [b, T] bool: True on response tokens (trained on or not)
    advantages: torch.Tensor
    old_logprobs: torch.Tensor | None
    position_ids: torch.Tensor | None = None  # packed only
    varlen: VarlenPlan | None = None  # packed only

    @property
    def packed(self) -> bool:
        return self.varlen is not None

    def to(self, device: torch.device | str) -> "Collated":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Collated(*(move(getattr(self, f)) for f in self.__dataclass_fields__))


def _response_side(rollouts: Rollouts, indices: list[int], pad_id: int, old_logprobs, starts: list[int]):
    """predict_at (from each sequence's first position `starts[row]` in its row), response_ids, mask, valid, old."""
    responses = [rollouts.responses[i] for i in indices]
    t_max = max(1, max(r.numel() for r in responses))
    predict_at = torch.zeros(len(indices), t_max, dtype=torch.long)
    response_ids = torch.full((len(indices), t_max), pad_id, dtype=torch.long)
    mask = torch.zeros(len(indices), t_max)
    valid = torch.zeros(len(indices), t_max, dtype=torch.bool)
    for row, (i, r) in enumerate(zip(indices, responses)):
        n_p, n_r = rollouts.prompts[i].numel(), r.numel()
        begin = starts[row] + n_p - 1
        predict_at[row, :n_r] = torch.arange(begin, begin + n_r)
        response_ids[row, :n_r] = r
        valid[row, :n_r] = True
        mask[row, :n_r] = 1.0 if rollouts.response_masks is None else rollouts.response_masks[i]
    source = old_logprobs if old_logprobs is not None else rollouts.old_logprobs
    old = None if source is None else pad_per_token(source, indices, t_max)
    return predict_at, response_ids, mask, valid, old


def pack(rollouts: Rollouts, indices: Sequence[int], pad_id: int = 0,
         old_logprobs: list[torch.Tensor] | None = None) -> Collated:
    """The rollouts at `indices` back to back in one row, no padding (layout in the module doc).

    `old_logprobs` overrides the batch's own (used when the trainer recomputed them).
    """
    indices = list(indices)
    seqs = [torch.cat([rollouts.prompts[i], rollouts.responses[i]]) for i in indices]
    lengths = [s.numel() for s in seqs]
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    input_ids = torch.cat(seqs).unsqueeze(0)
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    predict_at, response_ids, mask, valid, old = _response_side(rollouts, indices, pad_id, old_logprobs, starts)
    return Collated(input_ids, None, predict_at, response_ids, mask, valid, rollouts.advantages[indices].clone(), old,
                    position_ids, varlen_plan(lengths))


def collate(rollouts: Rollouts, indices: Sequence[int], pad_id: int = 0,
            old_logprobs: list[torch.Tensor] | None = None) -> Collated:
    """Pads the rollouts at `indices` into one row each (layout in the module doc).

    `old_logprobs` overrides the batch's own (used when the trainer recomputed them).
    """
    indices = list(indices)
    b = len(indices)
    lengths = [rollouts.prompts[i].numel() + rollouts.responses[i].numel() for i in indices]
    width = max(lengths)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(b, width, dtype=torch.long)
    for row, i in enumerate(indices):
        input_ids[row, :lengths[row]] = torch.cat([rollouts.prompts[i], rollouts.responses[i]])
        attention_mask[row, :lengths[row]] = 1
    predict_at, response_ids, mask, valid, old = _response_side(rollouts, indices, pad_id, old_logprobs, [0] * b)
    return Collated(input_ids, attention_mask, predict_at, response_ids, mask, valid,
                    rollouts.advantages[indices].clone(), old)


def pad_per_token(values: list[torch.Tensor], indices: Sequence[int], width: int) -> torch.Tensor:
    """Per-token values of the rollouts at `indices`, right-padded with 0 to [len(indices), width]."""
    out = torch.zeros(len(indices), width)
    for row, i in enumerate(indices):
        out[row, :values[i].numel()] = values[i]
    return out


def plan_micro_batches(lengths: Sequence[int], max_sequences: int | None = None, max_tokens: int | None = None,
                       count: int | None = None, packed: bool = False) -> list[list[int]]:
    """Splits sequences (given by their lengths) into micro-batches; returns positions into `lengths`.

    Sequences are ordered longest first (padded, each micro-batch then pads to a
    width close to its own sequences' lengths). Then, in that order:

    - `max_tokens`: greedy: a micro-batch grows while its tokens stay within the
      budget: the sum of lengths when `packed`, else sequences x its longest length
      (a longer single sequence gets its own);
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
        used = 0
        for i in order:
            # padded: longest first, the chunk's first sequence fixes its width
            grown = used + lengths[i] if packed else (len(out[-1]) + 1) * lengths[out[-1][0]] if out else 0
            if out and grown <= max_tokens:
                out[-1].append(i)
                used = grown
            else:
                out.append([i])
                used = lengths[i]
        return out
    size = max_sequences or max(len(order), 1)
    return [order[k:k + size] for k in range(0, len(order), size)]
