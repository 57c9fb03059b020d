"""Where a job's prompts come from: the built-in task or a JSONL dataset.

Prompts are drawn in a fixed shuffled order from a position that the checkpoint
keeps, so a resumed run continues with exactly the prompts it would have seen.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

from tlt.api.model import ReasoningRLJobSpec
from tlt.eval.evaluate import encode_prompts, load_jsonl


@dataclass(frozen=True)
class PromptItem:
    prompt: str
    answer: str
    ids: tuple[int, ...]
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def load_tokenizer(spec: ReasoningRLJobSpec, model_dir):
    """The job's tokenizer: `model.tokenizer` (a folder or hub id) when set, else the model folder's own."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.model.tokenizer or str(model_dir))


def reward_name(spec: ReasoningRLJobSpec) -> str:
    """The reward registry name the spec asks for (`auto` resolved)."""
    if spec.reward.plugin:
        return spec.reward.plugin
    verifier = spec.reward.verifier or "auto"
    if verifier == "auto":
        return "task" if spec.task is not None else "math"
    return verifier


class PromptSource:
    def __init__(self, spec: ReasoningRLJobSpec, tokenizer):
        self.spec = spec
        self.tokenizer = tokenizer
        if spec.task is not None:
            from tlt.tasks import get_task

            # Problems sized to the response budget, with the spec's spread of lengths.
            task = get_task(spec.task.name, max_response_tokens=spec.algorithm.max_response_tokens,
                            sigma=spec.task.length_sigma)
            pool = spec.algorithm.steps * spec.algorithm.prompts_per_step * (1 + spec.algorithm.dynamic_sampling.max_rounds)
            meta = {"task": spec.task.name}
            train = [(p.prompt, p.answer, meta) for p in task.problems("train", max(pool, 64), seed=spec.task.seed)]
            heldout = [(p.prompt, p.answer, meta) for p in task.problems("heldout", spec.eval.num_prompts, seed=spec.task.seed)]
            chat = False
        else:
            data = spec.data
            rows = [(i.prompt, i.answer, i.meta) for i in load_jsonl(data.path, data.prompt_field, data.answer_field)]
            if data.eval_path:
                heldout = [(i.prompt, i.answer, i.meta) for i in load_jsonl(data.eval_path, data.prompt_field, data.answer_field)]
                train = rows
            else:
                cut = max(1, int(len(rows) * data.eval_fraction)) if data.eval_fraction > 0 else 0
                heldout, train = rows[:cut], rows[cut:]
            # The tokenizer's own template by default, `none` for raw prompts, else the spec's Jinja template.
            template = spec.model.chat_template
            chat = True if template is None else (False if template == "none" else template)
        self._chat = chat
        self.train = self._encode(train)
        self.heldout = self._encode(heldout)[: spec.eval.num_prompts]
        if not self.train:
            raise ValueError("the dataset has no training prompts left after the held-out split and length filter")

    def _encode(self, rows) -> list[PromptItem]:
        if not rows:
            return []
        limit = self.spec.data.max_prompt_tokens if self.spec.data else None
        ids = encode_prompts(self.tokenizer, [r[0] for r in rows], self._chat)
        return [
            PromptItem(prompt, answer, tuple(i), meta)
            for (prompt, answer, meta), i in zip(rows, ids)
            if limit is None or len(i) <= limit
        ]

    def take(self, position: int, count: int) -> tuple[list[PromptItem], int]:
        """`count` training prompts starting at `position` (epochs reshuffled by seed)."""
        out = []
        for k in range(position, position + count):
            epoch, i = divmod(k, len(self.train))
            out.append(self.train[self._order(epoch)[i]])
        return out, position + count

    @functools.lru_cache(maxsize=4)
    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.train)))
        random.Random(self.spec.algorithm.seed * 7919 + epoch).shuffle(order)
        return order
