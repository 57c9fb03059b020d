"""The rollout shard's engine interface on vLLM (`rollout.engine: vllm`, GPU pods only).

vLLM is not a dependency of the CPU install (extra `gpu`, in the worker-cuda image);
it is imported lazily. What tlt asks of the pinned vLLM and what it does where vLLM
falls short (findings and references in VLLM.md):

- Stepping: `LLM.llm_engine` (`add_request`, `step`, `abort_request`), so a shard
  decodes in its background thread, reports progress, and hands unfinished sequences
  to another shard (tail consolidation) exactly as with the torch engine.
- Speculation: EAGLE from the drafter folder tlt exports, a chain of the first
  strategy's depth, fixed at start-up (no per-batch-size bandit). `adaptive` mode
  switches it off above the batch threshold with vLLM's batch-size schedule
  (`num_speculative_tokens_per_batch_size`, K = 0 above the threshold).
- Weights: policy and drafter weights reach vLLM's workers through `collective_rpc`
  into `WorkerExtension` (vLLM's `worker_extension_cls`, the path veRL and OpenRLHF
  use), which calls the model's and the draft model's `load_weights`.
- Lending: `sleep(level=1)` (weights to CPU memory, KV cache dropped), `wake_up()`.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

import torch

from .types import Counters, Request, Result
from .vllm_config import llm_kwargs, speculative_config  # noqa: F401  (re-exported: the engine's configuration)

log = logging.getLogger("tlt.engine.vllm")


class EngineUnavailable(RuntimeError):
    """`rollout.engine: vllm` on a machine that cannot run it (a configuration error)."""


def unavailable_reason() -> str | None:
    """Why vLLM cannot run here (no CUDA device, no vllm module), or None."""
    if not torch.cuda.is_available():
        return "this machine has no CUDA device"
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'tlt[gpu]')"
    return None


def vllm_available() -> bool:
    return unavailable_reason() is None


def engine_problem(spec) -> str | None:
    """One line naming the field and the fix when the job's rollout engine cannot run on this machine."""
    if spec.rollout.engine != "vllm":
        return None
    reason = unavailable_reason()
    if reason is None:
        return None
    return (f"spec.rollout.engine is vllm, but {reason}: run the job on GPU nodes (image worker-cuda, "
            "`kubectl apply`), or set rollout.engine: torch")


def sampling_kwargs(req: Request) -> dict:
    """SamplingParams keyword arguments equivalent to a tlt Request (a continuation decodes what is left)."""
    return {
        "max_tokens": int(req.max_tokens) - len(req.prefix),
        "temperature": float(req.temperature),
        "top_p": float(req.top_p),
        "seed": int(req.seed),
        "stop_token_ids": [int(t) for t in req.stop_ids],
        "logprobs": 0,  # the sampled token's log-prob
        "detokenize": False,
        "ignore_eos": not req.stop_ids,  # stops come only from the request, as in the torch engine
    }


def policy_items(weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """(Hugging Face name, CPU tensor) pairs: what the model's `load_weights` reads."""
    pairs = weights.items() if isinstance(weights, Mapping) else weights
    return [(name, t.detach().to("cpu")) for name, t in pairs]


def drafter_items(weights: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The drafter's own weights, named as in its exported folder; the embedding and LM head
    are the target's (vLLM shares them), so they are never sent."""
    return [(name, t.detach().to("cpu")) for name, t in weights.items()
            if not name.startswith(("embed_tokens.", "lm_head."))]


class WorkerExtension:
    """Mixed into vLLM's GPU worker (`worker_extension_cls`); `VLLMEngine` calls these by name
    through `LLM.collective_rpc`, once per worker (every tensor-parallel rank loads its shard)."""

    def tlt_load_policy(self, items: list[tuple[str, torch.Tensor]]) -> int:
        self.model_runner.model.load_weights(weights=iter(items))
        return len(items)

    def tlt_load_drafter(self, items: list[tuple[str, torch.Tensor]]) -> int:
        """Loads the drafter's weights; -1 when this vLLM exposes no draft model to update."""
        draft = self.get_draft_model() if hasattr(self, "get_draft_model") else None
        if draft is None:  # versions before the draft-model accessor: the proposer holds it
            proposer = getattr(self.model_runner, "drafter", None) or getattr(self.model_runner, "speculator", None)
            draft = getattr(proposer, "model", None)
        if draft is None:
            return -1
        draft.load_weights(iter(items))
        return len(items)


_request_ids = itertools.count()


class VLLMEngine:
    """A rollout shard's engine on vLLM, with the torch engine's interface: submit, step,
    has_work, counters, preempt, generate, weight updates, sleep and wake."""

    def __init__(self, llm_args: dict, *, vocab_size: int, threshold: int | None = None):
        reason = unavailable_reason()
        if reason is not None:
            raise EngineUnavailable(f"rollout.engine: vllm cannot run here: {reason}")
        from vllm import LLM

        self.llm_args = dict(llm_args)
        self.max_model_len = int(llm_args["max_model_len"])
        self.vocab_size = vocab_size
        spec = llm_args.get("speculative_config") or {}
        self._speculative = bool(spec)
        schedule = spec.get("num_speculative_tokens_per_batch_size")
        self._spec_up_to = schedule[0][1] if schedule else (None if spec else 0)  # None: every batch size
        self._llm = LLM(**llm_args)
        self._engine = self._llm.llm_engine
        self._lock = threading.Lock()
        self._live: dict[str, Request] = {}  # unfinished requests by vLLM request id
        self._sofar: dict[str, tuple[list[int], list[float]]] = {}  # their latest tokens and log-probs
        self._counters = Counters()
        self._spec_read, self._spec_last = 0.0, (0, 0)
        self._stale_drafter_logged = False
        self._asleep = False
        self._spec_seen = self._spec_counts()  # vLLM's counters are per process: report this engine's share

    # ---- the shard interface ----
    def submit(self, requests: Request | Iterable[Request]) -> None:
        from vllm import SamplingParams, TokensPrompt

        reqs = [requests] if isinstance(requests, Request) else list(requests)
        for r in reqs:
            r.validate(self.vocab_size, self.max_model_len)
        with self._lock:
            for r in reqs:
                rid = f"tlt-{next(_request_ids)}"
                prompt = TokensPrompt(prompt_token_ids=[int(t) for t in (*r.prompt, *r.prefix)])
                self._engine.add_request(rid, prompt, SamplingParams(**sampling_kwargs(r)))
                self._live[rid] = r
                self._sofar[rid] = (list(r.prefix), list(r.prefix_logprobs))
            self._count()

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._live)

    def step(self) -> list[Result]:
        """One vLLM engine step; returns the sequences that finished in it."""
        done: list[Result] = []
        with self._lock:
            if self._asleep:
                raise RuntimeError("engine is asleep; call wake() first")
            produced = 0
            for out in self._engine.step():
                req = self._live.get(out.request_id)
                if req is None:
                    continue  # aborted meanwhile
                comp = out.outputs[0]
                tokens = [*req.prefix, *comp.token_ids]
                logprobs = [*req.prefix_logprobs, *_sampled_logprobs(comp)]
                produced += len(tokens) - len(self._sofar[out.request_id][0])
                if out.finished:
                    del self._live[out.request_id], self._sofar[out.request_id]
                    reason = "stop" if comp.finish_reason == "stop" else "length"
                    done.append(Result(id=req.id, prompt=list(req.prompt), tokens=tokens, logprobs=logprobs,
                                       finish_reason=reason, group=req.group))
                else:
                    self._sofar[out.request_id] = (tokens, logprobs)
            self._count(finished=len(done), generated=produced)
        return done

    def counters(self) -> Counters:
        with self._lock:
            return self._counters

    def preempt(self, count: int) -> list[Request]:
        """Take up to `count` unfinished sequences out (the newest first) as continuation requests:
        another shard decodes the rest (vLLM's sampler is not keyed by position, so the rest is a
        new sample from the same distribution, not the same tokens)."""
        with self._lock:
            taken = list(self._live)[::-1][:max(0, count)]
            if not taken:
                return []
            self._engine.abort_request(taken)
            out = []
            for rid in taken:
                req = self._live.pop(rid)
                tokens, logprobs = self._sofar.pop(rid)
                if len(tokens) >= req.max_tokens:
                    tokens, logprobs = tokens[:req.max_tokens - 1], logprobs[:req.max_tokens - 1]
                out.append(replace(req, prefix=tokens, prefix_logprobs=logprobs))
            self._count()
            return out

    def generate(self, requests: Sequence[Request], progress: bool = False) -> list[Result]:
        """Run `requests` to completion; results in request order."""
        self.submit(requests)
        wanted = {r.id for r in requests}
        results: dict = {}
        while len(results) < len(wanted):
            for res in self.step():
                if res.id in wanted:
                    results[res.id] = res
        return [results[r.id] for r in requests]

    # ---- weights ----
    def update_policy_weights(self, weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> None:
        """New policy weights into every vLLM worker (between rollouts); cached prefixes are stale after it."""
        self._llm.collective_rpc("tlt_load_policy", args=(policy_items(weights),))
        self._llm.reset_prefix_cache()

    def update_drafter_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        if not self._speculative:
            raise RuntimeError("this engine has no drafter to update (speculation is off)")
        loaded = self._llm.collective_rpc("tlt_load_drafter", args=(drafter_items(weights),))
        if any(n < 0 for n in loaded) and not self._stale_drafter_logged:
            self._stale_drafter_logged = True
            log.warning("this vLLM exposes no draft model to update: it drafts with the drafter it started with "
                        "until the shard restarts")

    # ---- lending ----
    def sleep(self) -> None:
        """Free the GPU for drafter training: weights to CPU memory, KV cache dropped (level 1)."""
        with self._lock:
            if self._live:
                raise RuntimeError("cannot sleep with unfinished sequences; wait until the engine is idle")
            if not self._asleep:
                self._llm.sleep(level=1)
                self._asleep = True

    def wake(self) -> None:
        with self._lock:
            if self._asleep:
                self._llm.wake_up()
                self._asleep = False

    # ---- internals ----
    def _count(self, finished: int = 0, generated: int = 0) -> None:
        c = self._counters
        running = len(self._live)
        drafts, accepted = self._spec_totals(fresh=running == 0)  # exact once a rollout is over
        self._counters = Counters(
            running=running, waiting=0, finished=c.finished + finished, generated_tokens=c.generated_tokens + generated,
            speculating=self._speculative and running > 0 and (self._spec_up_to is None or running <= self._spec_up_to),
            verify_rounds=drafts, accepted_tokens=accepted + drafts,  # tlt counts the bonus token too
        )

    def _spec_totals(self, fresh: bool = False) -> tuple[int, int]:
        """(drafts, accepted draft tokens) of this engine, read from vLLM's metrics at most twice a second."""
        if not self._speculative:
            return 0, 0
        now = time.monotonic()
        if fresh or now - self._spec_read >= 0.5:
            self._spec_read = now
            drafts, accepted = self._spec_counts()
            self._spec_last = (drafts - self._spec_seen[0], accepted - self._spec_seen[1])
        return self._spec_last

    def _spec_counts(self) -> tuple[int, int]:
        if not self._speculative:
            return 0, 0
        values = {m.name: m.value for m in self._llm.get_metrics()
                  if m.name in ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_accepted_tokens")}
        return int(values.get("vllm:spec_decode_num_drafts", 0)), int(values.get("vllm:spec_decode_num_accepted_tokens", 0))


def _sampled_logprobs(comp) -> list[float]:
    """The sampled token's log-prob at each position (`SamplingParams(logprobs=0)` returns just that one)."""
    out = []
    for token, d in zip(comp.token_ids, comp.logprobs or []):
        entry = d.get(token) if d else None
        out.append(float(entry.logprob) if entry is not None else float("nan"))
    return out
