"""Drafter training data from rollouts: a bounded buffer of generated sequences, the
target's hidden states by a prefill on the worker's own device, and training windows.

A rollout worker records the token ids of every sequence it generated (prompt and
response, with the response mask) for the current and the previous RL step. Only
token ids are kept and moved around: hidden states are recomputed by a prefill of
the whole sequences on the device that trains, when the worker is lent to drafter
training, and they never leave it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Sample:
    """One generated sequence: `tokens` = prompt + response, `prompt_len` tokens of prompt."""

    tokens: tuple[int, ...]
    prompt_len: int
    policy_version: int = 0

    def __post_init__(self):
        if not 0 <= self.prompt_len <= len(self.tokens):
            raise ValueError(f"prompt_len {self.prompt_len} outside a sequence of {len(self.tokens)} tokens")

    @classmethod
    def of(cls, prompt: Sequence[int], response: Sequence[int], policy_version: int = 0) -> "Sample":
        return cls(tuple(int(t) for t in prompt) + tuple(int(t) for t in response), len(prompt), policy_version)

    @property
    def response_len(self) -> int:
        return len(self.tokens) - self.prompt_len

    def response_mask(self) -> torch.Tensor:
        m = torch.zeros(len(self.tokens), dtype=torch.bool)
        m[self.prompt_len:] = True
        return m


class RolloutBuffer:
    """Sequences of the last `keep_steps` RL steps, at most `capacity` in all.

    Oldest first out: when full, the oldest sequence of the oldest step is dropped;
    starting a new step drops every step older than the last `keep_steps`.
    """

    def __init__(self, capacity: int = 4096, keep_steps: int = 2):
        if capacity < 1 or keep_steps < 1:
            raise ValueError("buffer capacity and keep_steps must be >= 1")
        self.capacity = capacity
        self.keep_steps = keep_steps
        self._steps: OrderedDict[int, list[Sample]] = OrderedDict()
        self.dropped = 0

    def __len__(self) -> int:
        return sum(len(v) for v in self._steps.values())

    @property
    def steps(self) -> list[int]:
        return list(self._steps)

    def start_step(self, step: int) -> None:
        if self._steps and step < next(reversed(self._steps)):
            raise ValueError(f"step {step} is older than the buffer's latest step {next(reversed(self._steps))}")
        self._steps.setdefault(step, [])
        while len(self._steps) > self.keep_steps:
            _, old = self._steps.popitem(last=False)
            self.dropped += len(old)

    def add(self, sample: Sample, step: int | None = None) -> None:
        if step is None:
            if not self._steps:
                self.start_step(0)
            step = next(reversed(self._steps))
        elif step not in self._steps:
            self.start_step(step)
        self._steps[step].append(sample)
        while len(self) > self.capacity:
            oldest = next(iter(self._steps))
            self._steps[oldest].pop(0)
            self.dropped += 1
            if not self._steps[oldest] and len(self._steps) > 1:
                del self._steps[oldest]

    def extend(self, samples: Iterable[Sample], step: int | None = None) -> None:
        for s in samples:
            self.add(s, step)

    def samples(self) -> list[Sample]:
        """All kept sequences, oldest first."""
        return [s for v in self._steps.values() for s in v]

    def state(self) -> dict:
        return {"capacity": self.capacity, "keep_steps": self.keep_steps, "dropped": self.dropped,
                "steps": {k: [(list(s.tokens), s.prompt_len, s.policy_version) for s in v]
                          for k, v in self._steps.items()}}

    @classmethod
    def from_state(cls, state: dict) -> "RolloutBuffer":
        buf = cls(state["capacity"], state["keep_steps"])
        buf.dropped = state["dropped"]
        for step, rows in state["steps"].items():
            buf._steps[int(step)] = [Sample(tuple(t), p, v) for t, p, v in rows]
        return buf


@torch.no_grad()
def prefill_hidden(target, samples: Sequence[Sample], max_batch_tokens: int = 16384) -> list[torch.Tensor]:
    """The target's last hidden states [len, H] of each whole sequence, on the target's device.

    Sequences are right-padded in length-sorted batches; with causal attention the
    padding never influences real positions, so no mask is needed.
    """
    out: list[torch.Tensor | None] = [None] * len(samples)
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i].tokens))
    dev = target.device
    i = 0
    while i < len(order):
        width = len(samples[order[i]].tokens)
        rows = max(1, max_batch_tokens // max(width, 1))
        chunk = order[i:i + rows]
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, j in enumerate(chunk):
            toks = samples[j].tokens
            ids[r, :len(toks)] = torch.tensor(toks, dtype=torch.long)
        hidden = target.hidden(ids.to(dev))
        for r, j in enumerate(chunk):
            out[j] = hidden[r, :len(samples[j].tokens)].clone()
        i += len(chunk)
    return out  # type: ignore[return-value]


@dataclass
class Window:
    """A training window: positions [start, end) of one sequence (its hidden states sliced)."""

    tokens: torch.Tensor  # [L] long
    hidden: torch.Tensor  # [L, H]
    loss_mask: torch.Tensor  # [L] bool: response tokens whose hidden state is predicted
    positions: torch.Tensor  # [L] long, absolute positions in the sequence
    source: int = 0  # index of the sample it came from
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_targets(self) -> int:
        """Predicted states: pairs (t, t+1) inside the window with t+1 a response token."""
        return int(self.loss_mask[1:].sum())


def make_windows(samples: Sequence[Sample], hidden: Sequence[torch.Tensor],
                 max_response_tokens: int = 512, context: int = 0) -> list[Window]:
    """Split each sequence into windows of at most `max_response_tokens` response tokens.

    The first window of a sequence starts at position 0 (the prompt is context,
    never a loss target); later windows start `context` tokens before their first
    response token (those overlap tokens are context only). Hidden states come from
    the whole-sequence prefill, so every window sees the target's full context.
    """
    if max_response_tokens < 1:
        raise ValueError("max_response_tokens must be >= 1")
    out: list[Window] = []
    for idx, (s, h) in enumerate(zip(samples, hidden)):
        toks = torch.tensor(s.tokens, dtype=torch.long)
        mask = s.response_mask()
        n = len(s.tokens)
        if s.response_len == 0 or n < 2:
            continue
        first = s.prompt_len
        while first < n:
            last = min(n, first + max_response_tokens)
            start = 0 if first == s.prompt_len else max(0, first - max(context, 1))
            # at least one token before `first` so its state can be predicted from the previous one
            start = min(start, max(0, first - 1))
            lm = mask[start:last].clone()
            lm[: first - start] = False
            out.append(Window(tokens=toks[start:last], hidden=h[start:last], loss_mask=lm,
                              positions=torch.arange(start, last), source=idx,
                              meta={"policy_version": s.policy_version}))
            first = last
    return out
