"""Held-out accuracy and response-length statistics of a model on a task or a JSONL dataset.

One scoring path for `tlt eval` (`evaluate`) and the evaluation inside a run
(`tlt.coordinator.loop`, which decodes on its rollout shards and calls `score`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tlt.eval.generate import generate, load_policy


@dataclass(frozen=True)
class EvalItem:
    prompt: str
    answer: str
    meta: dict


@dataclass
class EvalResult:
    num_prompts: int
    accuracy: float  # share of responses the reward scores correct (> 0.5)
    mean_length: float
    p50_length: float
    p90_length: float
    max_length: int
    truncated: int  # responses that hit max_tokens without a stop token
    temperature: float
    max_tokens: int
    solved: list[bool] = field(default_factory=list, repr=False)  # per prompt, in item order

    def as_dict(self) -> dict:
        out = asdict(self)
        del out["solved"]
        return out


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of an empty sequence")
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(rewards: Sequence[float], lengths: Sequence[int], truncated: int,
              temperature: float, max_tokens: int) -> EvalResult:
    return EvalResult(
        num_prompts=len(rewards),
        accuracy=sum(1 for r in rewards if r > 0.5) / len(rewards),
        mean_length=sum(lengths) / len(lengths),
        p50_length=percentile(lengths, 50),
        p90_length=percentile(lengths, 90),
        max_length=max(lengths),
        truncated=truncated,
        temperature=temperature,
        max_tokens=max_tokens,
        solved=[r > 0.5 for r in rewards],
    )


def pack_solved(solved: Sequence[bool]) -> str:
    """Per-prompt correctness as hex, one bit a prompt (prompt 0 is the lowest bit): 128
    characters for 512 prompts in a run's eval record."""
    bits = sum(1 << i for i, ok in enumerate(solved) if ok)
    return f"{bits:0{max(1, (len(solved) + 3) // 4)}x}"


def unpack_solved(packed: str, count: int) -> list[bool]:
    bits = int(packed, 16)
    return [bool(bits >> i & 1) for i in range(count)]


def paired_change(before: Sequence[bool], after: Sequence[bool]) -> dict:
    """How the same prompts' correctness moved between two evaluations: prompts gained and lost,
    and the exact two-sided sign test (McNemar's) on those that changed. A net change of a few
    prompts among many that flipped either way is what chance alone gives (p near 1)."""
    if len(before) != len(after):
        raise ValueError(f"paired_change needs the same prompts: {len(before)} vs {len(after)} results")
    gained = sum(1 for b, a in zip(before, after) if a and not b)
    lost = sum(1 for b, a in zip(before, after) if b and not a)
    flipped, fewer = gained + lost, min(gained, lost)
    tail = sum(math.comb(flipped, k) for k in range(fewer + 1)) / 2 ** flipped if flipped else 1.0
    return {"gained": gained, "lost": lost, "p_value": min(1.0, 2 * tail)}


def task_items(task_name: str, num_prompts: int, seed: int = 0, **task_options) -> list[EvalItem]:
    from tlt.tasks import get_task

    task = get_task(task_name, **task_options)
    return [EvalItem(p.prompt, p.answer, {"task": task_name})
            for p in task.problems("heldout", num_prompts, seed=seed)]


def load_jsonl(path: str | Path, prompt_field: str = "prompt", answer_field: str = "answer",
               limit: int | None = None) -> list[EvalItem]:
    """Items from a JSONL file whose lines hold `prompt_field` and `answer_field`."""
    items = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: each line must be a JSON object")
            for name in (prompt_field, answer_field):
                if name not in row:
                    raise ValueError(
                        f"{path}:{number}: missing field {name!r} (fields present: "
                        f"{', '.join(sorted(row)) or 'none'}); rename it or pass the field name")
            items.append(EvalItem(str(row[prompt_field]), str(row[answer_field]),
                                  {k: v for k, v in row.items() if k not in (prompt_field, answer_field)}))
            if limit is not None and len(items) >= limit:
                break
    if not items:
        raise ValueError(f"{path}: no rows")
    return items


def encode_prompts(tokenizer, prompts: Sequence[str], chat_template: bool | str) -> list[list[int]]:
    """Token ids per prompt: through the chat template when asked and the tokenizer has one
    (`chat_template` as a string: that Jinja template instead of the tokenizer's)."""
    template = chat_template if isinstance(chat_template, str) else None
    if template or (chat_template and getattr(tokenizer, "chat_template", None)):
        encoded = []
        for prompt in prompts:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, chat_template=template)
            if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in newer versions
                ids = ids["input_ids"]
            encoded.append(list(ids))
        return encoded
    return [list(tokenizer(p)["input_ids"]) for p in prompts]


def score(items: Sequence, responses: Sequence[str], outputs: Sequence[Sequence[int]], reward: Callable,
          stop_ids: Sequence[int], temperature: float, max_tokens: int) -> EvalResult:
    """Score each item's decoded response with `reward` and summarize; `outputs` are the
    generated token ids (a response without a stop token at its end was truncated)."""
    rewards = [reward(i.prompt, r, i.answer, **i.meta) for i, r in zip(items, responses)]
    truncated = sum(1 for o in outputs if not (o and o[-1] in stop_ids))
    return summarize(rewards, [len(o) for o in outputs], truncated, temperature, max_tokens)


def evaluate(model_dir: str | Path, items: Sequence[EvalItem], reward: Callable,
             max_tokens: int = 512, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
             chat_template: bool = True, batch_size: int = 64, progress: bool = True,
             generate_fn: Callable = generate, dtype=None, device: str | None = None,
             ) -> tuple[EvalResult, list[str]]:
    """Generate one response per item, score it with `reward`, and summarize.

    Returns the summary and the decoded responses (in item order).
    """
    model, tokenizer = load_policy(model_dir, dtype=dtype, device=device)
    prompt_ids = encode_prompts(tokenizer, [i.prompt for i in items], chat_template)
    stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    outputs = generate_fn(model, prompt_ids, max_tokens, temperature=temperature, top_p=top_p,
                          seed=seed, stop_ids=stop_ids, batch_size=batch_size, progress=progress)
    responses = [tokenizer.decode(o, skip_special_tokens=True) for o in outputs]
    return score(items, responses, outputs, reward, stop_ids, temperature, max_tokens), responses
