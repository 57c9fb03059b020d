"""A CPU STAND-IN for the parts of vLLM's API that tlt calls. Tests only; it is not vLLM.

Tests install it as the module `vllm` (`install(monkeypatch)`) so that tlt's vLLM shard
path runs on a machine without CUDA. Behind vLLM's names it runs tlt's own torch engine
on the CPU, so its outputs are the torch engine's: a test can compare a vLLM shard with
a torch shard token for token, and a wiring bug (a request field not passed, a weight
update that does not land, lending that frees nothing) shows as a difference.

It is as strict as vLLM where tlt could get the wiring wrong: unknown `LLM` or
`SamplingParams` arguments raise TypeError, `collective_rpc` calls a method of the
worker extension class named by `worker_extension_cls`, `load_weights` rejects names the
model does not have, the speculative config is checked as vLLM checks it, and a sleeping
engine cannot generate. It records what tlt asked for (`LLM.instances`, `.kwargs`,
`.rpc_calls`, `.sleeps`) for tests to look at.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from tlt.engine.torch_engine import TorchEngine
from tlt.engine.types import Request
from tlt.models.drafter import EagleDrafter
from tlt.models.loading import load_model, load_weights
from tlt.speculative.adaptive import Strategy
from tlt.speculative.ngram import NgramDrafter

__version__ = "0.0.0+tlt-test-standin"

LLM_ARGS = {
    "model", "dtype", "seed", "max_model_len", "max_num_seqs", "gpu_memory_utilization", "tensor_parallel_size",
    "enable_sleep_mode", "worker_extension_cls", "skip_tokenizer_init", "disable_log_stats", "logprobs_mode",
    "speculative_config", "distributed_executor_backend", "enforce_eager",
}
SPECULATIVE_KEYS = {"method", "model", "num_speculative_tokens", "num_speculative_tokens_per_batch_size",
                    "prompt_lookup_max", "prompt_lookup_min"}


def install(monkeypatch) -> None:
    """Make `import vllm` give this stand-in (for the test's duration)."""
    monkeypatch.setitem(sys.modules, "vllm", sys.modules[__name__])
    LLM.instances.clear()


class SamplingParams:
    DEFAULTS = {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "seed": None, "stop_token_ids": None,
                "logprobs": None, "detokenize": True, "ignore_eos": False}

    def __init__(self, **kwargs):
        unknown = set(kwargs) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"SamplingParams got unexpected arguments {sorted(unknown)}")
        for name, default in self.DEFAULTS.items():
            setattr(self, name, kwargs.get(name, default))
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")


def TokensPrompt(*, prompt_token_ids):  # a TypedDict in vLLM
    return {"prompt_token_ids": list(prompt_token_ids)}


@dataclass
class Logprob:
    logprob: float


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None


@dataclass
class RequestOutput:
    request_id: str
    outputs: list[CompletionOutput]
    finished: bool


@dataclass
class Metric:
    name: str
    value: int


class _Schedule:
    """vLLM's speculation as the torch engine sees it: a chain of K(batch) tokens, K from the schedule."""

    def __init__(self, k: int, schedule):
        self.k, self.schedule = k, schedule

    def tokens(self, batch: int) -> int:
        if not self.schedule:
            return self.k
        k = 0
        for lo, hi, value in self.schedule:
            if batch >= lo:
                k = min(self.k, value)
        return k

    def decide(self, batch: int):
        k = self.tokens(batch)
        return Strategy(k, 1, k) if batch > 0 and k > 0 else None

    def record(self, *args) -> None:
        pass

    def record_plain(self, *args) -> None:
        pass


def _check_schedule(schedule) -> None:
    """The rules vLLM applies to `num_speculative_tokens_per_batch_size`."""
    previous_end = 0
    for entry in schedule:
        lo, hi, k = (int(x) for x in entry)
        if lo <= 0 or hi < lo or k < 0 or lo <= previous_end:
            raise ValueError(f"bad speculative schedule entry {entry}")
        previous_end = hi
    if int(schedule[0][0]) != 1:
        raise ValueError("the first batch-size range must start at 1")


class _Weights:
    """`model_runner.model` / the draft model: what `load_weights` sees."""

    def __init__(self, names: set[str], load):
        self.names, self._load = names, load
        self.loads = 0

    def load_weights(self, weights):
        state = dict(weights)
        unknown = sorted(set(state) - self.names)
        if unknown:
            raise KeyError(f"no such parameters: {unknown[:4]}")
        self._load(state)
        self.loads += 1


class _Runner:
    def __init__(self, model):
        self.model = model


class _WorkerBase:
    def __init__(self, model: _Weights, draft: _Weights | None):
        self.model_runner = _Runner(model)
        self._draft = draft

    def get_draft_model(self):
        return self._draft


class _Engine:
    """`LLM.llm_engine`: requests by id over the torch engine; step() returns cumulative outputs."""

    def __init__(self, llm: "LLM"):
        self.llm = llm
        self.requests: dict[str, tuple[Request, SamplingParams]] = {}

    def add_request(self, request_id, prompt, params):
        if request_id in self.requests:
            raise ValueError(f"request id {request_id} is in use")
        ids = prompt["prompt_token_ids"]
        stops = [] if params.ignore_eos and not params.stop_token_ids else list(params.stop_token_ids or [])
        req = Request(prompt=list(ids), max_tokens=params.max_tokens, stop_ids=stops, temperature=params.temperature,
                      top_p=params.top_p, seed=params.seed or 0, id=request_id)
        self.llm._torch.submit(req)
        self.requests[request_id] = (req, params)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    def abort_request(self, request_ids) -> None:
        gone = set(request_ids)
        engine = self.llm._torch
        moved = engine.preempt(len(self.requests))  # every unfinished sequence, as continuations...
        engine.submit([r for r in moved if r.id not in gone])  # ...and the ones kept go back (same tokens)
        for rid in gone:
            self.requests.pop(rid, None)

    def step(self) -> list[RequestOutput]:
        self.llm._check_awake()
        engine = self.llm._torch
        if not engine.has_work():
            return []
        outputs = []
        for res in engine.step():
            _, params = self.requests.pop(res.id)
            outputs.append(self._output(res.id, res.tokens, res.logprobs, params, res.finish_reason))
        for slot, req in enumerate(engine._slot_req):  # partial outputs of the running ones, as vLLM's
            if req is not None and req.id in self.requests:
                plen, gen = int(engine.prompt_len[slot]), int(engine.gen[slot])
                tokens = engine.seq[slot, plen:plen + gen].tolist()
                outputs.append(self._output(req.id, tokens, engine.out_lp[slot, :gen].tolist(), self.requests[req.id][1], None))
        return outputs

    @staticmethod
    def _output(rid, tokens, logprobs, params, reason) -> RequestOutput:
        lps = [{t: Logprob(lp)} for t, lp in zip(tokens, logprobs)] if params.logprobs is not None else None
        return RequestOutput(rid, [CompletionOutput(0, list(tokens), lps, reason)], finished=reason is not None)


class LLM:
    instances: list["LLM"] = []

    def __init__(self, **kwargs):
        unknown = set(kwargs) - LLM_ARGS
        if unknown:
            raise TypeError(f"EngineArgs got unexpected arguments {sorted(unknown)}")
        self.kwargs = kwargs
        self.rpc_calls: list[str] = []
        self.sleeps: list[int] = []
        self.prefix_cache_resets = 0
        self.weights_discarded = False
        target = load_model(kwargs["model"], dtype=kwargs.get("dtype", "float32"))
        self.target = target
        drafter, speculation, draft = None, None, None
        spec = kwargs.get("speculative_config")
        if spec:
            unknown = set(spec) - SPECULATIVE_KEYS
            if unknown:
                raise TypeError(f"SpeculativeConfig got unexpected fields {sorted(unknown)}")
            if spec.get("num_speculative_tokens_per_batch_size"):
                _check_schedule(spec["num_speculative_tokens_per_batch_size"])
            if spec["method"] == "eagle":
                drafter = EagleDrafter.load(spec["model"], target)
                draft = _Weights({n for n, _ in drafter.named_parameters()} | {"fc.bias"}, drafter.load_state)
            elif spec["method"] == "ngram":
                drafter = NgramDrafter()
            else:
                raise ValueError(f"the stand-in speaks eagle and ngram, not {spec['method']}")
            speculation = _Schedule(int(spec["num_speculative_tokens"]), spec.get("num_speculative_tokens_per_batch_size"))
        self.speculation = speculation
        self._torch = TorchEngine(target, num_slots=kwargs.get("max_num_seqs", 256),
                                  max_model_len=kwargs["max_model_len"], drafter=drafter, speculation=speculation)
        names = {n for n, _ in target.named_parameters()} | {"lm_head.weight"}
        model = _Weights(names, self._load_policy)
        extension = kwargs.get("worker_extension_cls")
        bases = (_WorkerBase,)
        if extension:
            module, _, cls = extension.rpartition(".")
            bases = (getattr(importlib.import_module(module), cls), _WorkerBase)
        self.worker = type("StandinWorker", bases, {})(model, draft)
        self.llm_engine = _Engine(self)
        LLM.instances.append(self)

    def _load_policy(self, state) -> None:
        load_weights(self.target, state, strict=False)
        self.weights_discarded = False

    def _check_awake(self) -> None:
        if self._torch.cache is None:
            raise RuntimeError("the engine is asleep: wake_up() first")
        if self.weights_discarded:
            raise RuntimeError("weights were discarded by sleep(level=2): load them again first")

    def generate(self, prompts, sampling_params, use_tqdm: bool = True):
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        ids = [f"gen-{i}" for i in range(len(prompts))]
        for rid, prompt, p in zip(ids, prompts, params):
            self.llm_engine.add_request(rid, prompt, p)
        done = {}
        while len(done) < len(ids):
            for out in self.llm_engine.step():
                if out.finished:
                    done[out.request_id] = out
        return [done[rid] for rid in ids]

    def collective_rpc(self, method, args=(), kwargs=None):
        self.rpc_calls.append(method if isinstance(method, str) else method.__name__)
        fn = getattr(self.worker, method) if isinstance(method, str) else (lambda *a, **k: method(self.worker, *a, **k))
        return [fn(*args, **(kwargs or {}))]

    def reset_prefix_cache(self) -> bool:
        self.prefix_cache_resets += 1
        return True

    def sleep(self, level: int = 1) -> None:
        if not self.kwargs.get("enable_sleep_mode"):
            raise ValueError("sleep mode is not enabled (LLM(enable_sleep_mode=True))")
        if self.llm_engine.requests:
            raise RuntimeError("cannot sleep with unfinished requests")
        self.sleeps.append(level)
        self._torch.sleep()  # the KV cache is freed
        if level == 2:
            self.weights_discarded = True

    def wake_up(self, tags=None) -> None:
        self._torch.wake()

    @property
    def kv_cache_allocated(self) -> bool:
        return self._torch.cache is not None

    def get_metrics(self) -> list[Metric]:
        if self.kwargs.get("disable_log_stats", True):
            raise AssertionError("stat logging is disabled (LLM(disable_log_stats=False))")
        c = self._torch.counters()
        return [Metric("vllm:spec_decode_num_drafts", c.verify_rounds),
                Metric("vllm:spec_decode_num_accepted_tokens", c.accepted_tokens - c.verify_rounds)]


def draft_tokens(llm: LLM, batch: int) -> int:
    """Draft tokens per step at `batch` running sequences (0: speculation off)."""
    return llm.speculation.tokens(batch) if llm.speculation else 0


def model_folder(llm: LLM) -> Path:
    return Path(llm.kwargs["model"])


__all__ = ["LLM", "SamplingParams", "TokensPrompt", "install", "draft_tokens", "torch"]
