"""Batched sampling with `transformers` models, behind the interface the rollout engine will offer.

`generate(model, prompt_ids, ...)` is the one place evaluation decodes; when
tlt's own engine lands it can replace this function without touching callers.
Rows that finish are dropped from the batch (and from the KV cache), so a
long-tailed batch costs what its running rows cost.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(model_dir: str | Path, dtype=None, device: str | None = None):
    """The causal LM (on `device`, default CUDA when present) and its tokenizer, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a Hugging Face model folder (no config.json): pass the folder "
            "that holds config.json, the safetensors weights and the tokenizer files")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return model.to(device or default_device()).eval(), tokenizer


def sample_next(logits, temperature: float, top_p: float, generators):
    """Next token per row: argmax at temperature 0, else nucleus sampling at `temperature`.

    Each row draws from its own generator, so a row's tokens do not depend on
    which other rows share the batch.
    """
    import torch

    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.cat([torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generators)])


def generate(model, prompt_ids: Sequence[Sequence[int]], max_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
             stop_ids: Sequence[int] = (), batch_size: int = 64, pad_id: int = 0,
             progress: bool = False) -> list[list[int]]:
    """Continue each prompt by up to `max_tokens` tokens; a row ends at its first stop token.

    `model` is a loaded causal LM or a model folder. Returns the generated ids per
    prompt (the stop token included when one was produced), in prompt order.
    Prompt i samples from its own generator seeded by (seed, i), so the same seed
    gives the same outputs whatever the batch size.
    """
    import torch
    from tqdm import tqdm

    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if isinstance(model, (str, Path)):
        model, _ = load_model(model)
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long)
    # Longest prompts first keeps padding low inside each micro-batch.
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    outputs: list[list[int]] = [[] for _ in prompt_ids]
    bar = tqdm(total=len(order), desc="generate", unit="seq", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        generators = [torch.Generator(device=model.device).manual_seed(seed * 1_000_003 + r)
                      for r in rows]
        for row, tokens in zip(rows, _generate_batch(
                model, [list(prompt_ids[r]) for r in rows], max_tokens, temperature, top_p,
                generators, stops, pad_id)):
            outputs[row] = tokens
        bar.update(len(rows))
    bar.close()
    return outputs


def _generate_batch(model, prompts, max_tokens, temperature, top_p, generators, stops, pad_id):
    import inspect

    import torch
    from transformers import DynamicCache

    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. the <bos> token)")
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    device = model.device
    input_ids, mask, stops = input_ids.to(device), mask.to(device), stops.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    results: list[list[int]] = [[] for _ in prompts]
    active = torch.arange(len(prompts), device=device)
    cache = DynamicCache(config=model.config)
    # transformers 5 renamed `past_key_values` to `cache`; accept both spellings.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                    use_cache=True, **{cache_arg: cache})
        logits = out.logits[:, -1, :]
        next_pos = positions[:, -1:] + 1
        for _ in range(max_tokens):
            rows = active.tolist()
            tokens = sample_next(logits, temperature, top_p, [generators[r] for r in rows])
            for row, token in zip(rows, tokens.tolist()):
                results[row].append(token)
            done = torch.isin(tokens, stops) if len(stops) else torch.zeros_like(tokens, dtype=torch.bool)
            # Rows of a batch start together, so every running row has the same length.
            if len(results[rows[0]]) >= max_tokens or bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(-1)
                active, tokens, mask, next_pos = active[keep], tokens[keep], mask[keep], next_pos[keep]
                cache.reorder_cache(keep)
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
            out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos,
                        use_cache=True, **{cache_arg: cache})
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
    return results
