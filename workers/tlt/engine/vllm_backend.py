"""The rollout engine interface on vLLM (GPU clusters).

vLLM is not a dependency of the CPU install (extra `gpu`); this module imports it
lazily and everything here is untested on machines without CUDA. What the pinned vLLM
(0.33-ish, torch 2.14) offers and what tlt does where it falls short, as far as the
vLLM sources and PRs we read show (details and references in VLLM.md):

- EAGLE drafts: `speculative_config={"method": "eagle", "model": <drafter folder>,
  "num_speculative_tokens": k}`. The folder is what `EagleDrafter.save` writes.
- Strategy per batch size: NOT available. The speculative config (method, k, tree)
  is fixed when the engine starts; the per-bucket bandit of the torch engine does not
  apply. tlt picks one strategy per engine start (from the cost table and the bandit's
  history) and leaves speculation on; where the running batch is large the tail
  consolidation of the elastic policy keeps vLLM shards small instead.
- Hidden states: `generate` does not return the target's hidden states. tlt computes
  them for drafter training by a prefill of the finished sequences with the torch
  decoder on the lent worker (`TorchEngine.compute_hidden_states`), which is what the
  TLT design does anyway (no shipping of hidden states).
- Policy weights: `collective_rpc` into the workers and the model's `load_weights`
  (the path RL frameworks use); newer versions add `start_weight_update` /
  `update_weights` / `finish_weight_update` brackets.
- Drafter weights: vLLM PR #46725 (merged mid-2026) adds a runtime draft update;
  before it, the draft module's parameters could only be loaded at start-up. We call
  the draft model's `load_weights` through `collective_rpc` and fall back to an error
  that names the fix (restart the engine with the new drafter folder).
- Sleep/wake: `LLM(enable_sleep_mode=True)`, `llm.sleep(level=1|2)`,
  `llm.wake_up(tags=["weights"|"kv_cache"])`. Level 2 drops the weights, including
  the drafter's: tlt re-pushes both after waking.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from .types import Counters, Request, Result


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def speculative_config(drafter_dir: str | Path | None, num_speculative_tokens: int,
                       method: str = "eagle") -> dict | None:
    """The `speculative_config` argument for `vllm.LLM` (None = no speculation)."""
    if drafter_dir is None:
        return None
    if num_speculative_tokens < 1:
        raise ValueError("num_speculative_tokens must be >= 1")
    path = Path(drafter_dir)
    if method == "eagle" and not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a drafter folder (config.json missing); export one with EagleDrafter.save")
    return {"method": method, "model": str(path), "num_speculative_tokens": int(num_speculative_tokens)}


def sampling_kwargs(req: Request) -> dict:
    """SamplingParams keyword arguments equivalent to a tlt Request."""
    return {
        "max_tokens": int(req.max_tokens),
        "temperature": float(req.temperature),
        "top_p": float(req.top_p),
        "seed": int(req.seed),
        "stop_token_ids": [int(t) for t in req.stop_ids],
        "logprobs": 0,  # the sampled token's log-prob
        "detokenize": False,
        "ignore_eos": not req.stop_ids,  # stops come only from the request, as in the torch engine
    }


class VLLMEngine:
    """Same surface as TorchEngine where vLLM allows: generate, counters, weight updates, sleep/wake."""

    def __init__(self, model_dir: str | Path, *, drafter_dir: str | Path | None = None,
                 num_speculative_tokens: int = 3, max_model_len: int = 4096,
                 gpu_memory_utilization: float = 0.85, dtype: str = "bfloat16", **llm_kwargs):
        if not vllm_available():
            raise RuntimeError("the vLLM backend needs CUDA and `pip install tlt[gpu]`; use TorchEngine on CPU")
        from vllm import LLM

        self._llm = LLM(model=str(model_dir), dtype=dtype, max_model_len=max_model_len,
                        gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=True,
                        speculative_config=speculative_config(drafter_dir, num_speculative_tokens),
                        **llm_kwargs)
        self._counters = Counters()

    def counters(self) -> Counters:
        return self._counters

    def generate(self, requests: Sequence[Request], progress: bool = False) -> list[Result]:
        from vllm import SamplingParams, TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt)) for r in requests]
        params = [SamplingParams(**sampling_kwargs(r)) for r in requests]
        outs = self._llm.generate(prompts, params, use_tqdm=progress)
        results = []
        for req, out in zip(requests, outs):
            comp = out.outputs[0]
            lps = [next(iter(d.values())).logprob if d else float("nan") for d in (comp.logprobs or [])]
            reason = "stop" if comp.finish_reason == "stop" else "length"
            results.append(Result(id=req.id, prompt=list(req.prompt), tokens=list(comp.token_ids),
                                  logprobs=lps, finish_reason=reason, group=req.group))
        generated = sum(len(r.tokens) for r in results)
        c = self._counters
        self._counters = Counters(finished=c.finished + len(results),
                                  generated_tokens=c.generated_tokens + generated)
        return results

    def update_policy_weights(self, weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> None:
        items = list(weights.items() if isinstance(weights, Mapping) else weights)
        self._llm.collective_rpc(_load_target_weights, args=(items,))
        self._llm.reset_prefix_cache()

    def update_drafter_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        items = list(weights.items())
        self._llm.collective_rpc(_load_draft_weights, args=(items,))

    def sleep(self, level: int = 1) -> None:
        self._llm.sleep(level=level)

    def wake(self, tags: list[str] | None = None) -> None:
        self._llm.wake_up(tags=tags)


# Functions run inside vLLM's GPU workers via collective_rpc (first argument: the worker).
def _load_target_weights(worker, items):
    worker.model_runner.model.load_weights(weights=iter(items))


def _load_draft_weights(worker, items):
    draft = None
    if hasattr(worker, "get_draft_model"):
        draft = worker.get_draft_model()
    if draft is None:
        proposer = getattr(worker.model_runner, "drafter", None) or getattr(worker.model_runner, "speculator", None)
        draft = getattr(proposer, "model", None)
    if draft is None:
        raise RuntimeError("this vLLM version exposes no draft model to update; restart the engine "
                           "with the new drafter folder (speculative_config.model)")
    draft.load_weights(iter(items))
