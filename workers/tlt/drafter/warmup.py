"""Warm-up: train a drafter from scratch on the target's own generations.

Steps, each resumable from the output folder:
1. prompts: from a task (`train` split) or a JSONL file (`prompt` text or `prompt_ids`);
2. the target samples responses (torch engine, continuous batching), saved as
   `DIR/warmup_data.pt` (token ids only);
3. hidden states by a prefill on this device, windows, packing;
4. the spot trainer runs to `steps`, checkpointing asynchronously to `DIR/checkpoint/`;
   an interrupted warm-up continues from the last checkpoint;
5. the drafter is exported into DIR as an EAGLE folder (config.json + model.safetensors)
   that `EagleDrafter.load`, vLLM and SGLang read.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tlt.models.drafter import EagleDrafter

from .buffer import Sample
from .packing import training_batches
from .trainer import SpotTrainer, TrainConfig

DATA_FILE = "warmup_data.pt"
INFO_FILE = "warmup.json"


@dataclass
class WarmupConfig:
    prompts: int = 512
    max_tokens: int = 512
    temperature: float = 1.0
    steps: int = 600
    lr: float = 2e-3
    warmup_steps: int = 30
    grad_clip: float = 1.0
    batch_tokens: int = 4096  # per micro-batch (one packed row)
    max_response_tokens: int = 512
    checkpoint_every: int = 50
    seed: int = 0
    num_slots: int = 64


def tokenizer_for(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def task_prompts(task_name: str, count: int, seed: int, tokenizer, split: str = "train",
                 task_options: dict | None = None) -> list[list[int]]:
    from tlt.tasks import get_task

    task = get_task(task_name, **(task_options or {}))
    return [list(tokenizer(p.prompt)["input_ids"]) for p in task.problems(split, count, seed=seed)]


def jsonl_prompts(path: str | Path, count: int, tokenizer) -> list[list[int]]:
    out = []
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "prompt_ids" in row:
                out.append([int(t) for t in row["prompt_ids"]])
            elif "prompt" in row:
                out.append(list(tokenizer(row["prompt"])["input_ids"]))
            else:
                raise ValueError(f"{path}:{n}: each line needs a 'prompt' (text) or 'prompt_ids' field")
            if len(out) >= count:
                break
    if not out:
        raise ValueError(f"{path} holds no prompts")
    return out


def generate_samples(target, prompts: Sequence[Sequence[int]], max_tokens: int, temperature: float,
                     stop_ids: Sequence[int], seed: int = 0, num_slots: int = 64,
                     progress: bool = True) -> list[Sample]:
    """The target's own responses (plain sampling on the torch engine)."""
    from tlt.engine import Request, TorchEngine

    longest = max(len(p) for p in prompts) + max_tokens
    engine = TorchEngine(target, num_slots=num_slots, max_model_len=longest)
    reqs = [Request(prompt=list(p), max_tokens=max_tokens, stop_ids=list(stop_ids), temperature=temperature,
                    seed=seed * 1_000_003 + i) for i, p in enumerate(prompts)]
    results = engine.generate(reqs, progress=progress)
    return [Sample.of(r.prompt, r.tokens) for r in results]


def save_samples(path: Path, samples: Sequence[Sample], meta: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"meta": meta, "samples": [(list(s.tokens), s.prompt_len) for s in samples]}, tmp)
    tmp.replace(path)


def load_samples(path: Path) -> tuple[list[Sample], dict]:
    blob = torch.load(path, weights_only=False)
    return [Sample(tuple(t), p) for t, p in blob["samples"]], blob["meta"]


def warmup(target, prompts_fn: Callable[[], list[list[int]]], out: str | Path, cfg: WarmupConfig,
           stop_ids: Sequence[int], progress: bool = True, metrics=None,
           log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict:
    """Run (or resume) a warm-up into `out`; returns the summary written to warmup.json."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_path = out / DATA_FILE
    if data_path.is_file():
        samples, meta = load_samples(data_path)
        log(f"reusing {len(samples)} generated sequences from {data_path}")
    else:
        prompts = prompts_fn()
        samples = generate_samples(target, prompts, cfg.max_tokens, cfg.temperature, stop_ids, cfg.seed,
                                   cfg.num_slots, progress)
        meta = {"prompts": len(prompts), "max_tokens": cfg.max_tokens, "temperature": cfg.temperature}
        save_samples(data_path, samples, meta)
    batches = training_batches(target, samples, cfg.max_response_tokens, cfg.batch_tokens)
    if not batches:
        raise ValueError("the generated sequences hold no response tokens to train on")
    drafter = EagleDrafter.for_target(target, seed=cfg.seed)
    tcfg = TrainConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps, grad_clip=cfg.grad_clip,
                       checkpoint_every=cfg.checkpoint_every, seed=cfg.seed)
    trainer = SpotTrainer.restore(out / "checkpoint", drafter, tcfg, metrics=metrics, worker="warmup")
    trainer.set_data(batches)
    if trainer.state.step:
        log(f"resuming drafter warm-up at step {trainer.state.step}")
    bar = tqdm(total=cfg.steps, initial=min(trainer.state.step, cfg.steps), desc="drafter warm-up",
               unit="step", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        while trainer.state.step < cfg.steps:
            chunk = min(10, cfg.steps - trainer.state.step)
            trainer.run(max_steps=chunk)
            bar.update(chunk)
            bar.set_postfix(loss=f"{trainer.mean_loss():.4f}", tokens=trainer.state.tokens)
    finally:
        bar.close()
        trainer.checkpoint()
        trainer.checkpointer.close()
    drafter.eval()
    drafter.save(out)
    summary = {"steps": trainer.state.step, "loss": trainer.mean_loss(), "tokens_trained": trainer.state.tokens,
               "sequences": len(samples), "response_tokens": sum(s.response_len for s in samples),
               "config": asdict(cfg), "data": meta}
    (out / INFO_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
