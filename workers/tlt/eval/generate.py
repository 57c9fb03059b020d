"""Decoding for evaluation: the rollout engine (`tlt.engine.TorchEngine`) over a list of prompts.

`tlt eval` decodes as a job's rollout shards do (the in-loop evaluation runs on them):
continuous batching, and each prompt's sampling keyed by its own seed, so a prompt's
tokens do not depend on the batch it runs in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_policy(model, dtype=None, device: str | None = None):
    """(CausalLM on `device`, default CUDA when present; its tokenizer) of a model folder or built-in name."""
    from transformers import AutoTokenizer

    from tlt.models.resolve import load_named

    folder, model = load_named(model, dtype=dtype or "float32", device=device or default_device())
    return model, AutoTokenizer.from_pretrained(str(folder))


def prompt_seed(seed: int, index: int) -> int:
    """Prompt `index`'s sampling seed: the same seed gives the same outputs whatever the batch."""
    return seed * 1_000_003 + index


def generate(model, prompt_ids: Sequence[Sequence[int]], max_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
             stop_ids: Sequence[int] = (), batch_size: int = 64, progress: bool = False) -> list[list[int]]:
    """Continue each prompt by up to `max_tokens` tokens; a row ends at its first stop token.

    `model` is a loaded CausalLM, a model folder or a built-in name. Returns the generated ids
    per prompt (the stop token included when one was produced), in prompt order; `batch_size`
    sequences decode together.
    """
    from tlt.engine import Request, TorchEngine

    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if isinstance(model, (str, Path)):
        model, _ = load_policy(model)
    if not prompt_ids:
        return []
    longest = max(len(p) for p in prompt_ids)
    engine = TorchEngine(model, num_slots=max(1, min(batch_size, len(prompt_ids))), max_model_len=longest + max_tokens)
    requests = [Request(prompt=list(p), max_tokens=max_tokens, stop_ids=list(stop_ids), temperature=temperature,
                        top_p=top_p, seed=prompt_seed(seed, i), id=i) for i, p in enumerate(prompt_ids)]
    return [list(r.tokens) for r in engine.generate(requests, progress=progress)]
