"""Requests, results and counters shared by the torch engine and the vLLM backend."""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

_ids = itertools.count()


class RequestError(ValueError):
    """A request the engine cannot serve; the message names the field and the fix."""


@dataclass
class Request:
    prompt: Sequence[int]
    max_tokens: int
    stop_ids: Sequence[int] = ()
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    group: Hashable | None = None  # prompt group (GRPO): the n-gram drafter shares text within it
    return_hidden_states: bool = False
    id: Hashable = field(default_factory=lambda: next(_ids))
    # A continuation (a sequence moved from another engine): response tokens already
    # generated, with their log-probs. They are re-prefilled, and sampling continues at
    # the same response positions, so the result is what the first engine would give.
    prefix: Sequence[int] = ()
    prefix_logprobs: Sequence[float] = ()

    def validate(self, vocab_size: int, max_model_len: int) -> None:
        if len(self.prompt) == 0:
            raise RequestError(f"request {self.id}: prompt is empty; give at least one token id")
        if self.max_tokens < 1:
            raise RequestError(f"request {self.id}: max_tokens must be >= 1")
        if len(self.prompt) + self.max_tokens > max_model_len:
            raise RequestError(
                f"request {self.id}: prompt ({len(self.prompt)}) + max_tokens ({self.max_tokens}) "
                f"exceeds max_model_len {max_model_len}; shorten it or raise max_model_len"
            )
        if len(self.prefix) != len(self.prefix_logprobs):
            raise RequestError(f"request {self.id}: prefix and prefix_logprobs must have the same length")
        if len(self.prefix) >= self.max_tokens:
            raise RequestError(f"request {self.id}: prefix ({len(self.prefix)}) leaves no room under max_tokens ({self.max_tokens})")
        if self.temperature < 0:
            raise RequestError(f"request {self.id}: temperature must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise RequestError(f"request {self.id}: top_p must be in (0, 1]")
        bad = [t for t in [*self.prompt, *self.prefix, *self.stop_ids] if not 0 <= int(t) < vocab_size]
        if bad:
            raise RequestError(f"request {self.id}: token ids {bad[:5]} outside the vocabulary [0, {vocab_size})")


FinishReason = Literal["stop", "length"]


@dataclass
class Result:
    id: Hashable
    prompt: list[int]
    tokens: list[int]  # generated tokens, the stop token included when finish_reason == "stop"
    logprobs: list[float]  # target log-prob of each generated token (see sampling.token_logprobs)
    finish_reason: FinishReason
    group: Hashable | None = None
    # target post-norm last hidden states of prompt + tokens[:-1] (the last token is never fed)
    hidden_states: torch.Tensor | None = None


@dataclass(frozen=True)
class Counters:
    running: int = 0
    waiting: int = 0
    finished: int = 0
    generated_tokens: int = 0
    speculating: bool = False
    verify_rounds: int = 0  # sequence-rounds verified speculatively
    accepted_tokens: int = 0  # tokens emitted by those rounds
    near_ties: int = 0  # draws recomputed in float64 because they fell within `Ties` of a boundary

    @property
    def mean_acceptance_length(self) -> float:
        return self.accepted_tokens / self.verify_rounds if self.verify_rounds else 0.0

    def acceptance_since(self, start: "Counters") -> float:
        """Mean accepted tokens per sequence-round verified since `start` (0.0: none verified)."""
        rounds = self.verify_rounds - start.verify_rounds
        return (self.accepted_tokens - start.accepted_tokens) / rounds if rounds > 0 else 0.0
