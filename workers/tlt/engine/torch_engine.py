"""Torch reference rollout engine: continuous batching over fixed slots, with lossless
adaptive speculative decoding (EAGLE drafter or n-gram fallback).

Per slot the engine keeps the whole sequence (prompt + generated), the target KV
cache of every token but the last (the *pending* token, sampled and emitted but not
yet fed), and, when an EAGLE drafter or hidden states are wanted, the target's last
hidden state per position. A step admits waiting requests into free slots (one padded
prefill of each distinct prompt: a group's samples share it), then either decodes one
token for every running sequence or runs one speculative round: the drafter catches
up on the committed tokens and drafts, the target verifies all sequences' drafts in
one forward, each row accepts the prefix plain sampling would have emitted, and only
the accepted KV entries are kept.

Token identity in float32: forwards that batch a sequence differently round its logits
differently, which flips a draw whose uniform falls on a CDF edge (about one draw in a few
hundred thousand). A step therefore never emits a near-tie draw (`tlt.speculative.sampling.Ties`):
the row stops before it, that one position is recomputed from the whole sequence in float64,
and the next step emits the recomputed token, so every path emits the same one.

The hot path (decode steps and rounds) keeps its bookkeeping on the device and reads
back one small tensor of results per step; what it needs to know on the host (lengths
for the attention window, greedy or sampled) it mirrors from those results. With
`static=True` (the default on CUDA) shapes are fixed per running-batch bucket and
attention window (`tlt.engine.static`), and with `cuda_graphs` each step is replayed
as a CUDA graph; otherwise the same functions run with exact shapes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from tqdm import tqdm

from tlt.models.drafter import EagleDrafter
from tlt.models.llama import CausalLM
from tlt.models.loading import load_weights
from tlt.speculative.adaptive import Strategy
from tlt.speculative.eagle import draft_chain, draft_tree
from tlt.speculative.ngram import NgramDrafter
from tlt.speculative.sampling import FLOAT32_TIES, BatchSampling, Ties, draws, seed_keys, token_logprobs, uniforms
from tlt.speculative.verify import accept, accept_chain

from .metrics import engine_metrics
from .static import StepGraphs, batch_buckets, bucket_of, window_of
from .types import Counters, Request, RequestError, Result

class SpeculationController(Protocol):
    def decide(self, batch: int) -> Strategy | None: ...
    def record(self, strategy: Strategy, batch: int, tokens: int, seconds: float) -> None: ...
    def record_plain(self, batch: int, tokens: int, seconds: float) -> None: ...
    def drafter_changed(self) -> None: ...


@dataclass
class _Batch:
    """The running batch as the hot path sees it (rebuilt only when the set changes)."""

    slots: list[int]  # running slots, ascending
    rows: torch.Tensor  # [bucket] device slot of each row; padding rows on the scratch slot
    idx: torch.Tensor  # [n] the running slots on the host (index of the host mirrors)
    read: slice | None  # rows as a slice when they are one contiguous run: cache reads are views
    sampling: BatchSampling
    bucket: int

    @property
    def padded(self) -> bool:
        return self.bucket > len(self.slots)


class TorchEngine:
    def __init__(self, model: CausalLM, *, num_slots: int = 64, max_model_len: int = 2048,
                 drafter: EagleDrafter | NgramDrafter | None = None,
                 speculation: SpeculationController | None = None,
                 store_hidden_states: bool = False, metrics_registry=None,
                 max_tree_nodes: int = 64, static: bool | None = None, cuda_graphs: bool | None = None,
                 ties: Ties | None | str = "auto"):
        """`static`: fixed shapes per running-batch bucket and attention window (default:
        on CUDA); `cuda_graphs`: replay those steps as CUDA graphs (default: static on CUDA);
        `ties`: near-tie draws recomputed in float64 (module docstring; `auto`: for float32 models;
        each recompute casts the weights to float64 for one forward)."""
        if num_slots < 1:
            raise ValueError("num_slots must be >= 1")
        if speculation is not None and drafter is None:
            raise ValueError("speculation needs a drafter: pass an EagleDrafter or NgramDrafter")
        self.model = model.eval()
        self.device = model.device
        cuda = self.device.type == "cuda"
        self.static = cuda if static is None else bool(static)
        self.cuda_graphs = (self.static and cuda) if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and not (self.static and cuda):
            raise ValueError("cuda_graphs needs static=True and a model on a CUDA device")
        self.num_slots = num_slots
        self.max_model_len = max_model_len
        self.drafter = drafter
        self.speculation = speculation
        self.max_tree_nodes = max_tree_nodes
        self.ties = (FLOAT32_TIES if model.dtype == torch.float32 else None) if ties == "auto" else ties
        self.metrics = engine_metrics(metrics_registry)
        self._eagle = isinstance(drafter, EagleDrafter)
        self._keep_hidden = store_hidden_states or self._eagle
        self._lock = threading.Lock()
        self._step_lock = threading.Lock()  # step() and preempt() never interleave
        self._waiting: deque[Request] = deque()
        self._finished: list[Result] = []
        self._counters = Counters()
        self._slot_req: list[Request | None] = [None] * num_slots
        self._pad = num_slots  # the scratch slot: padding rows of a bucket read and write there
        self._buckets = batch_buckets(num_slots) if self.static else None
        self._graphs = StepGraphs() if self.cuda_graphs else None
        self._batch: _Batch | None = None
        self._allocate()

    # ---------- buffers ----------
    def _allocate(self) -> None:
        S, dev = self.num_slots + 1, self.device
        cap = self.max_model_len + self.max_tree_nodes + 2
        self.cache = self.model.new_cache(S, cap)
        self.dcache = self.drafter.new_cache(S, cap + self.max_tree_nodes) if self._eagle else None
        self.seq = torch.zeros(S, cap, dtype=torch.long, device=dev)
        self.prompt_len = torch.zeros(S, dtype=torch.long, device=dev)
        self.gen = torch.zeros(S, dtype=torch.long, device=dev)  # emitted tokens incl. pending
        self.out_lp = torch.zeros(S, cap, dtype=torch.float32, device=dev)
        self.max_tokens = torch.zeros(S, dtype=torch.long, device=dev)  # 0 on the scratch slot: it never emits
        self.temperature = torch.zeros(S, dtype=torch.float64, device=dev)
        self.top_p = torch.ones(S, dtype=torch.float64, device=dev)
        self.seed_key = torch.zeros(S, dtype=torch.int64, device=dev)  # sampling.seed_keys of the request's seed
        # A near tie's recomputed token (-1: none) and the response position it is for.
        self.forced = torch.full((S,), -1, dtype=torch.long, device=dev)
        self.forced_pos = torch.full((S,), -1, dtype=torch.long, device=dev)
        self.stops = torch.full((S, 4), -1, dtype=torch.long, device=dev)
        h = self.model.config.hidden_size
        self.hist = torch.zeros(S, cap, h, dtype=self.model.dtype, device=dev) if self._keep_hidden else None
        # Host mirrors of the device lengths, kept from each step's results (no reads).
        self._hlen = torch.zeros(S, dtype=torch.long)  # target KV entries committed = position of the pending token
        self._hdlen = torch.zeros(S, dtype=torch.long)  # drafter KV entries committed
        self._hgen = torch.zeros(S, dtype=torch.long)  # emitted tokens
        self._rows_buf = {}  # bucket -> static device rows (CUDA graphs read them in place)
        self._batch = None
        if self._graphs is not None:
            self._graphs.clear()

    def sleep(self) -> None:
        """Free the KV caches and buffers (e.g. to lend the device); requires no running work."""
        if any(r is not None for r in self._slot_req):
            raise RuntimeError("cannot sleep with running sequences; wait until the engine is idle")
        self.cache = self.dcache = self.hist = None
        self.seq = self.out_lp = None
        self._rows_buf = {}
        if self._graphs is not None:
            self._graphs.clear()

    def wake(self) -> None:
        if self.cache is None:
            self._allocate()

    # ---------- public API ----------
    def submit(self, requests: Request | Iterable[Request]) -> None:
        reqs = [requests] if isinstance(requests, Request) else list(requests)
        vocab = self.model.config.vocab_size
        for r in reqs:
            r.validate(vocab, self.max_model_len)
            if r.return_hidden_states and not self._keep_hidden:
                raise RequestError(
                    f"request {r.id}: return_hidden_states needs TorchEngine(store_hidden_states=True)")
        with self._lock:
            self._waiting.extend(reqs)
            self._counters = _replace(self._counters, waiting=len(self._waiting))

    def counters(self) -> Counters:
        """Thread-safe snapshot of the live counters."""
        with self._lock:
            return self._counters

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._waiting) or any(r is not None for r in self._slot_req)

    def running_slots(self) -> torch.Tensor:
        return torch.tensor([i for i, r in enumerate(self._slot_req) if r is not None],
                            dtype=torch.long, device=self.device)

    def step(self) -> list[Result]:
        """Admit waiting requests, then one decode step or speculative round.
        Returns the sequences that finished in this step."""
        if self.cache is None:
            raise RuntimeError("engine is asleep; call wake() first")
        start = time.perf_counter()
        before = self._counters.generated_tokens
        # preempt() runs on the coordinator's thread while this one decodes: it must not empty a
        # slot whose tokens this step is producing
        with self._step_lock, torch.inference_mode():
            done = self._admit()
            batch = self._running()
            n = len(batch.slots) if batch is not None else 0
            strategy = None
            if n:
                strategy = self.speculation.decide(n) if self.speculation else None
                if strategy is None:
                    t0 = time.perf_counter()
                    emitted = self._counters.generated_tokens
                    done += self._decode(batch)
                    if self.speculation is not None:
                        self.speculation.record_plain(n, self._counters.generated_tokens - emitted,
                                                      time.perf_counter() - t0)
                else:
                    done += self._speculate(batch, strategy)
        elapsed = time.perf_counter() - start
        m = self.metrics
        produced = self._counters.generated_tokens - before
        m.generated_tokens.inc(produced)
        m.speculation_seconds.labels(state="on" if strategy else "off").inc(elapsed)
        if elapsed > 0:
            m.tokens_per_second.set(produced / elapsed)
        m.running_batch.set(n)
        with self._lock:
            self._counters = _replace(self._counters, speculating=strategy is not None)
        return done

    def generate(self, requests: Sequence[Request], progress: bool = False) -> list[Result]:
        """Run `requests` to completion; results in request order."""
        self.submit(requests)
        wanted = {r.id for r in requests}
        results: dict = {}
        bar = tqdm(total=len(requests), desc="rollout", unit="seq", disable=not progress, leave=False)
        try:
            while len(results) < len(wanted):
                for res in self.step():
                    if res.id in wanted:
                        results[res.id] = res
                        bar.update(1)
                if progress:
                    c = self.counters()
                    bar.set_postfix(running=c.running, tokens=c.generated_tokens,
                                    spec="on" if c.speculating else "off",
                                    acc=f"{c.mean_acceptance_length:.2f}")
                if not self.has_work() and len(results) < len(wanted):
                    raise RuntimeError("engine ran out of work before all requests finished")
        finally:
            bar.close()
        return [results[r.id] for r in requests]

    def preempt(self, count: int) -> list[Request]:
        """Take up to `count` unfinished sequences out of this engine (waiting ones first),
        as continuation requests another engine can run (tail consolidation). Sampling
        is keyed by response position, so the moved sequence ends as it would have here."""
        with self._step_lock:
            out: list[Request] = []
            with self._lock:
                while self._waiting and len(out) < count:
                    out.append(self._waiting.pop())
            running = [i for i, r in enumerate(self._slot_req) if r is not None]
            for slot in running[::-1][: max(0, count - len(out))]:
                req = self._slot_req[slot]
                plen, gen = len(req.prompt), int(self._hgen[slot])
                seq = self.seq[slot, : plen + gen].tolist()
                out.append(replace(req, prompt=seq[:plen], prefix=seq[plen:],
                                   prefix_logprobs=self.out_lp[slot, :gen].tolist()))
                if isinstance(self.drafter, NgramDrafter):
                    self.drafter.finish(req.id)  # forget the suffix index; it is rebuilt on the new engine
                with self._lock:
                    self._slot_req[slot] = None
                self._batch = None
            with self._lock:
                self._counters = _replace(self._counters, waiting=len(self._waiting),
                                          running=sum(r is not None for r in self._slot_req))
            return out

    def update_policy_weights(self, weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy new policy weights into the target in place (names as in `state_dict`).
        Call between rollouts: KV caches of running sequences would be stale."""
        state = dict(weights.items() if isinstance(weights, Mapping) else weights)
        with torch.inference_mode(False), torch.no_grad():
            load_weights(self.model, state, strict=False)

    def update_drafter_weights(self, weights: Mapping[str, torch.Tensor] | EagleDrafter) -> None:
        """Load a new drafter version in place; drafter caches are rebuilt lazily."""
        if not self._eagle:
            raise RuntimeError("this engine has no EAGLE drafter to update")
        state = weights.state_dict() if isinstance(weights, EagleDrafter) else dict(weights)
        with torch.inference_mode(False), torch.no_grad():
            self.drafter.load_state(state)
        self.dcache.lengths.zero_()
        self._hdlen.zero_()
        if self.speculation is not None:
            self.speculation.drafter_changed()

    def compute_hidden_states(self, sequences: Sequence[Sequence[int]], batch_size: int = 8) -> list[torch.Tensor]:
        """Target post-norm last hidden states [len, H] of whole sequences (one prefill each,
        batched): the drafter's training input."""
        out = []
        with torch.inference_mode():
            for i in range(0, len(sequences), batch_size):
                chunk = sequences[i:i + batch_size]
                width = max(len(s) for s in chunk)
                ids = torch.zeros(len(chunk), width, dtype=torch.long, device=self.device)
                for b, s in enumerate(chunk):
                    ids[b, :len(s)] = torch.as_tensor(list(s), device=self.device)
                h = self.model.hidden(ids)  # right padding never leaks left under a causal mask
                out.extend(h[b, :len(s)].clone() for b, s in enumerate(chunk))
        return out

    # ---------- admission (dynamic shapes: prefill is not on the hot path) ----------
    def _admit(self) -> list[Result]:
        with self._lock:
            free = [i for i, r in enumerate(self._slot_req) if r is None]
            take = [self._waiting.popleft() for _ in range(min(len(free), len(self._waiting)))]
            for i, r in zip(free, take):
                self._slot_req[i] = r
            self._counters = _replace(self._counters, waiting=len(self._waiting),
                                      running=sum(r is not None for r in self._slot_req))
        if not take:
            return []
        self._batch = None
        for r in take:
            self._reserve_stops(len(r.stop_ids))
        resumed = [(slot, r) for slot, r in zip(free, take) if r.prefix]
        for slot, r in resumed:
            self._resume(slot, r)
        fresh = [(slot, r) for slot, r in zip(free, take) if not r.prefix]
        if not fresh:
            return []
        free, take = [s for s, _ in fresh], [r for _, r in fresh]
        dev = self.device
        slots = torch.tensor(free, dtype=torch.long, device=dev)
        plens = [len(r.prompt) for r in take]
        lens = torch.tensor(plens, dtype=torch.long, device=dev)
        width = max(plens)
        ids = torch.zeros(len(take), width, dtype=torch.long)
        stops = torch.full((len(take), self.stops.shape[1]), -1, dtype=torch.long)
        for b, r in enumerate(take):
            ids[b, :len(r.prompt)] = torch.as_tensor(list(r.prompt))
            stops[b, :len(r.stop_ids)] = torch.as_tensor(list(r.stop_ids), dtype=torch.long)
        ids = ids.to(dev)
        self.stops[slots] = stops.to(dev)
        self.seq[slots, :width] = ids
        self.prompt_len[slots] = lens
        self.gen[slots] = 0
        self.max_tokens[slots] = torch.tensor([r.max_tokens for r in take], device=dev)
        self.temperature[slots] = torch.tensor([r.temperature for r in take], dtype=torch.float64, device=dev)
        self.top_p[slots] = torch.tensor([r.top_p for r in take], dtype=torch.float64, device=dev)
        self.seed_key[slots] = seed_keys(torch.tensor([int(r.seed) for r in take], dtype=torch.int64)).to(dev)
        self.forced_pos[slots] = -1
        self.cache.reset(slots)
        if self.dcache is not None:
            self.dcache.reset(slots)
        # GRPO samples every prompt groupSize times: each distinct prompt is prefilled once and
        # its KV entries and states go to the other slots (prefix caching for whole prompts).
        first: dict[tuple, int] = {}
        source = [first.setdefault(tuple(r.prompt), b) for b, r in enumerate(take)]  # [B] row prefilled for b
        if len(first) < len(take):
            once = list(first.values())  # ascending: each prompt's first row
            h = self.model.hidden(ids[once], cache=self.cache, slots=slots[once])
            place = {b: k for k, b in enumerate(once)}
            h = h[[place[b] for b in source]]
            copies = [b for b, s in enumerate(source) if s != b]
            self.cache.copy_entries(slots[[source[b] for b in copies]], slots[copies], width)
        else:
            h = self.model.hidden(ids, cache=self.cache, slots=slots)
        self.cache.advance(slots, lens)
        if self.hist is not None:
            self.hist[slots, :width] = h
        idx = torch.tensor(free, dtype=torch.long)
        self._hlen[idx] = torch.tensor(plens, dtype=torch.long)
        self._hdlen[idx] = 0
        self._hgen[idx] = 0
        rows = torch.arange(len(take), device=dev)
        logits = self.model.logits(h[rows, lens - 1])
        sampling = BatchSampling.of([r.temperature for r in take], [r.top_p for r in take])
        tokens, near = self._sample(logits, slots, sampling)
        if near is not None and bool(near.any()):  # not in a hot path: recompute now
            for b in near.nonzero()[:, 0].tolist():
                tokens[b] = self._recompute(free[b], plens[b], 0)
        lp = token_logprobs(logits, self.temperature[slots], tokens)
        res = self._emit(slots, tokens[:, None], lp[:, None], torch.ones_like(lens), padded=False)
        return self._collect(free, idx, res, fed=False)[0]

    def _reserve_stops(self, count: int) -> None:
        if count > self.stops.shape[1]:
            pad = torch.full((self.num_slots + 1, count - self.stops.shape[1]), -1, dtype=torch.long,
                             device=self.device)
            self.stops = torch.cat([self.stops, pad], 1)
            if self._graphs is not None:
                self._graphs.clear()  # the graphs read the old buffer

    def _resume(self, slot: int, r: Request) -> None:
        """Admit a continuation: prefill prompt + prefix but the last token, which is pending."""
        dev = self.device
        full = [*r.prompt, *r.prefix]
        s = torch.tensor([slot], dtype=torch.long, device=dev)
        self.stops[slot] = -1
        if r.stop_ids:
            self.stops[slot, :len(r.stop_ids)] = torch.as_tensor(list(r.stop_ids), device=dev)
        self.seq[slot, :len(full)] = torch.as_tensor(full, device=dev)
        self.prompt_len[slot] = len(r.prompt)
        self.gen[slot] = len(r.prefix)
        self.out_lp[slot, :len(r.prefix)] = torch.as_tensor(list(r.prefix_logprobs), dtype=self.out_lp.dtype, device=dev)
        self.max_tokens[slot] = r.max_tokens
        self.temperature[slot] = r.temperature
        self.top_p[slot] = r.top_p
        self.seed_key[slot] = int(seed_keys(torch.tensor([int(r.seed)]))[0])
        self.forced_pos[slot] = -1
        self.cache.reset(s)
        if self.dcache is not None:
            self.dcache.reset(s)
        ids = torch.as_tensor(full[:-1], device=dev)[None, :]
        h = self.model.hidden(ids, cache=self.cache, slots=s)
        self.cache.advance(s, torch.tensor([len(full) - 1], device=dev))
        if self.hist is not None:
            self.hist[slot, : len(full) - 1] = h[0]
        self._hlen[slot], self._hdlen[slot], self._hgen[slot] = len(full) - 1, 0, len(r.prefix)

    # ---------- the hot path ----------
    def _running(self) -> _Batch | None:
        """The running batch, rebuilt only after admissions, finishes and preemptions."""
        if self._batch is not None:
            return self._batch
        self._compact()
        slots = [i for i, r in enumerate(self._slot_req) if r is not None]
        if not slots:
            return None
        n = len(slots)
        bucket = bucket_of(n, self._buckets) if self.static else n
        host_rows = torch.tensor(slots + [self._pad] * (bucket - n), dtype=torch.long)
        if self.cuda_graphs:  # graphs read their rows from one static buffer per bucket
            buf = self._rows_buf.get(bucket)
            if buf is None:
                buf = self._rows_buf[bucket] = torch.empty(bucket, dtype=torch.long, device=self.device)
            buf.copy_(host_rows.pin_memory(), non_blocking=True)
            rows = buf
        else:
            rows = host_rows.to(self.device)
        contiguous = not self.cuda_graphs and slots[-1] - slots[0] == n - 1 and bucket == n
        reqs = [self._slot_req[s] for s in slots]
        self._batch = _Batch(slots=slots, rows=rows, idx=torch.tensor(slots, dtype=torch.long),
                             read=slice(slots[0], slots[0] + n) if contiguous else None,
                             sampling=BatchSampling.of([r.temperature for r in reqs], [r.top_p for r in reqs]),
                             bucket=bucket)
        return self._batch

    def _compact(self) -> None:
        """Move the running sequences into the lowest slots (one move per hole, usually the
        slot a sequence just finished in), so the batch is one run of slots and attention
        reads the caches as views. A gathered read copies every layer's keys and values per
        forward: on a CPU that made a B8 verify at window 512 1.4-1.5x slower, a drafter step 1.25-1.4x.
        Sampling is keyed by seed and response position, never by slot, so outputs stay the same."""
        n = sum(r is not None for r in self._slot_req)
        holes = [i for i in range(n) if self._slot_req[i] is None]
        if not holes:
            return
        movers = [i for i in range(n, self.num_slots) if self._slot_req[i] is not None]  # as many as holes
        src = torch.tensor(movers, dtype=torch.long)
        dst = torch.tensor(holes, dtype=torch.long)
        # Only committed entries are ever read (a forward reads past them only what it just wrote).
        committed = int(self._hlen[src].max())
        d_src, d_dst = src.to(self.device), dst.to(self.device)
        for cache, length in ((self.cache, committed), (self.dcache, int(self._hdlen[src].max()))):
            if cache is not None and length > 0:
                cache.copy_entries(d_src, d_dst, length)
        if self.dcache is not None:
            self.dcache.lengths[d_dst] = self.dcache.lengths[d_src]
        if self.hist is not None and committed > 0:
            self.hist[d_dst, :committed] = self.hist[d_src, :committed]
        for buf in (self.cache.lengths, self.seq, self.out_lp, self.prompt_len, self.gen, self.max_tokens,
                    self.temperature, self.top_p, self.seed_key, self.stops, self.forced, self.forced_pos):
            buf[d_dst] = buf[d_src]
        for host in (self._hlen, self._hdlen, self._hgen):
            host[dst] = host[src]
        with self._lock:
            for s, d in zip(movers, holes):
                self._slot_req[d], self._slot_req[s] = self._slot_req[s], None

    def _window(self, batch: _Batch, ahead: int, capacity: int) -> int:
        """Attention window of a forward writing `ahead` entries past the committed ones."""
        return window_of(int(self._hlen[batch.idx].max()) + ahead, capacity, self.static)

    def _run(self, key, fn):
        return self._graphs.run(key, fn) if self._graphs is not None else fn()

    def _sample(self, logits: torch.Tensor, slots: torch.Tensor, sampling: BatchSampling, forced=None):
        """The plain sampler's next token for logits [B, V]: tokens [B], and with `ties` the near-tie
        mask [B] (else None)."""
        u = None if sampling.all_greedy else self._uniforms(slots, self.gen[slots][:, None])
        tokens, near = draws(logits[:, None], self.temperature[slots], self.top_p[slots], u, sampling,
                             self.ties, forced)
        return tokens[:, 0], None if near is None else near[:, 0]

    def _forced(self, rows: torch.Tensor) -> torch.Tensor | None:
        """Per row, the recomputed token for its next response position, else -1 (None: no ties)."""
        if self.ties is None:
            return None
        return torch.where(self.forced_pos[rows] == self.gen[rows], self.forced[rows], -1)

    def _recompute(self, slot: int, length: int, position: int) -> int:
        """The plain sampler's token at response `position` of `slot`, from a float64 forward of its
        first `length` tokens (prompt and response so far): what a near-tie draw emits."""
        # The live weights, cast now: a copy kept from earlier would miss weights written in place
        # (a policy broadcast into the parameters).
        weights = {name: t.to(torch.float64) for named in (self.model.named_parameters(), self.model.named_buffers())
                   for name, t in named}  # tied weights once
        ids = self.seq[slot, :length][None]
        with torch.inference_mode():
            logits = torch.func.functional_call(self.model, weights, (ids,))[:, -1]
        s = torch.tensor([slot], device=self.device)
        u = self._uniforms(s, torch.tensor([[position]], device=self.device))
        temp, top_p = self.temperature[s], self.top_p[s]
        tokens, _ = draws(logits[:, None], temp, top_p, u, BatchSampling.of(temp.tolist(), top_p.tolist()))
        self.metrics.near_ties.inc()
        with self._lock:
            self._counters = _replace(self._counters, near_ties=self._counters.near_ties + 1)
        return int(tokens[0, 0])

    def _uniforms(self, slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The plain sampler's uniforms [B, D] at response positions [B, D] (stream 0)."""
        return uniforms(None, positions, 1, keys=self.seed_key[slots])[..., 0]

    def _decode(self, batch: _Batch) -> list[Result]:
        window = self._window(batch, 1, self.cache.capacity)
        res = self._run(("decode", batch.bucket, window, batch.sampling), lambda: self._decode_step(batch, window))
        return self._collect(batch.slots, batch.idx, res)[0]

    def _decode_step(self, batch: _Batch, window: int) -> torch.Tensor:
        rows = batch.rows
        base = self.cache.lengths[rows]  # position of the pending token
        pending = self.seq[rows, base]
        h = self.model.hidden(pending[:, None], base[:, None], cache=self.cache, slots=rows,
                              window=window, read_slots=batch.read)
        if self.hist is not None:
            self.hist[rows, base] = h[:, 0]
        logits = self.model.logits(h[:, 0])
        tokens, near = self._sample(logits, rows, batch.sampling, self._forced(rows))
        lp = token_logprobs(logits, self.temperature[rows], tokens)
        counts = torch.ones_like(base) if near is None else (~near).long()  # a near tie emits nothing yet
        self.cache.lengths[rows] = base + counts
        return self._emit(rows, tokens[:, None], lp[:, None], counts, batch.padded, near)

    def _speculate(self, batch: _Batch, strategy: Strategy) -> list[Result]:
        start = time.perf_counter()
        if strategy.verify_tokens + 1 > self.max_tree_nodes:
            raise ValueError(f"strategy {strategy.name} verifies more than max_tree_nodes={self.max_tree_nodes} "
                             "tokens; raise max_tree_nodes or lower verifyTokens")
        if self._eagle:
            reach = strategy.steps + 1  # the round's catch-up covers this many positions at most
            self._drafter_catch_up_long(batch, reach)
            verify = strategy.steps + 1 if strategy.topk == 1 else strategy.verify_tokens + 1
            window = self._window(batch, verify, self.cache.capacity)
            dwindow = self._window(batch, max(reach, (strategy.steps - 1) * strategy.topk), self.dcache.capacity)
            step = self._chain_round if strategy.topk == 1 else self._tree_round
            res = self._run(("round", strategy, batch.bucket, window, dwindow, batch.sampling),
                            lambda: step(batch, strategy, window, dwindow))
            self._hdlen[batch.idx] = self._hlen[batch.idx]  # the round caught the drafter up to the pending token
        else:
            res = self._ngram_round(batch, strategy)
        results, r = self._collect(batch.slots, batch.idx, res)
        counts = r[:, 0]
        emitted = int(counts.sum())
        self.speculation.record(strategy, len(batch.slots), emitted, time.perf_counter() - start)
        counts = counts[counts > 0]  # a row that stopped at a near tie before its first token verified nothing
        hist = self.metrics.acceptance_length.labels(strategy=strategy.name)
        for n in counts.tolist():
            hist.observe(n)
        with self._lock:
            c = self._counters
            self._counters = _replace(c, verify_rounds=c.verify_rounds + len(counts),
                                      accepted_tokens=c.accepted_tokens + emitted)
        return results

    def _drafter_catch_up(self, rows: torch.Tensor, base: torch.Tensor, width: int, window: int,
                          read: slice | None) -> torch.Tensor:
        """Feed the drafter the committed positions it has not seen (inputs: token at t+1
        and the target's true hidden state at t; at most `width` of them per row, padded
        by repeating the last); return its feature at the last committed position, whose
        LM head drafts the token after the pending one: the round's first draft level."""
        dlen = self.dcache.lengths[rows]
        count = base - dlen  # positions dlen .. base-1 (0 on padding rows)
        pos = torch.minimum(dlen[:, None] + torch.arange(width, device=rows.device)[None, :],
                            (base - 1).clamp_min(0)[:, None])
        tokens = self.seq[rows[:, None], pos + 1]
        hidden = self.hist[rows[:, None], pos]
        feat = self.drafter.features(tokens, hidden, pos, cache=self.dcache, slots=rows, window=window, read_slots=read)
        self.dcache.lengths[rows] = base
        return feat[torch.arange(rows.shape[0], device=rows.device), (count - 1).clamp_min(0)]

    def _drafter_catch_up_long(self, batch: _Batch, reach: int, chunk: int = 256) -> None:
        """Eagerly catch the drafter up where it lags more than a round covers (after
        admission, plain steps or a drafter update), leaving one position per row."""
        lag = self._hlen[batch.idx] - self._hdlen[batch.idx]
        if int(lag.max()) <= reach:
            return
        behind = batch.idx[lag > reach]
        rows = behind.to(self.device)
        read = None
        while True:
            dlen, base = self._hdlen[behind], self._hlen[behind]
            upto = torch.minimum(base - 1, dlen + chunk)  # catch up to positions < upto
            width = int((upto - dlen).max())
            if width <= 0:
                return
            j = torch.arange(width)
            pos = torch.minimum(dlen[:, None] + j, (upto - 1)[:, None]).to(self.device)
            tokens = self.seq[rows[:, None], pos + 1]
            hidden = self.hist[rows[:, None], pos]
            window = window_of(int(dlen.max()) + width, self.dcache.capacity, False)
            self.drafter.features(tokens, hidden, pos, cache=self.dcache, slots=rows, window=window, read_slots=read)
            self.dcache.lengths[rows] = upto.to(self.device)
            self._hdlen[behind] = upto

    def _chain_round(self, batch: _Batch, strategy: Strategy, window: int, dwindow: int) -> torch.Tensor:
        """A top-1 round: catch-up (its last position drafts the first token), steps - 1
        drafter forwards, one verify forward, and acceptance as a prefix match; the
        accepted KV entries are already in place."""
        rows, steps = batch.rows, strategy.steps
        base = self.cache.lengths[rows]
        root = self._drafter_catch_up(rows, base, steps + 1, dwindow, batch.read)
        drafts = draft_chain(self.drafter, self.dcache, rows, root, base, steps, dwindow, batch.read)
        return self._verify_chain(batch, base, drafts, None, window)

    def _verify_chain(self, batch: _Batch, base: torch.Tensor, drafts: torch.Tensor, draft_len, window: int):
        rows, steps = batch.rows, drafts.shape[1]
        j = torch.arange(steps + 1, device=rows.device)
        pos = base[:, None] + j  # [B, steps + 1]
        tokens = torch.cat([self.seq[rows, base][:, None], drafts], 1)
        h = self.model.hidden(tokens, pos, cache=self.cache, slots=rows, window=window, read_slots=batch.read)
        logits = self.model.logits(h)
        u = None if batch.sampling.all_greedy else self._uniforms(rows, self.gen[rows][:, None] + j)
        acc = accept_chain(drafts, logits, self.temperature[rows], self.top_p[rows], u, draft_len, batch.sampling,
                           self.ties, self._forced(rows))
        if self.hist is not None:
            self.hist[rows[:, None], pos] = h  # entries past the accepted ones are rewritten before use
        self.cache.lengths[rows] = base + acc.num_nodes
        return self._emit(rows, acc.tokens, acc.logprobs, acc.num_nodes, batch.padded, acc.cut)

    def _tree_round(self, batch: _Batch, strategy: Strategy, window: int, dwindow: int) -> torch.Tensor:
        """A tree round (top-k > 1): draft a tree, verify it with a tree mask, accept the
        path plain sampling follows, gather the accepted KV entries into place."""
        rows, steps = batch.rows, strategy.steps
        dev = rows.device
        base = self.cache.lengths[rows]
        root = self._drafter_catch_up(rows, base, steps + 1, dwindow, batch.read)
        pending = self.seq[rows, base]
        tree = draft_tree(self.drafter, self.dcache, rows, pending, root, base, strategy, dwindow, batch.read)
        h = self.model.hidden(tree.tokens, base[:, None] + tree.depth, cache=self.cache, slots=rows,
                              tail_mask=tree.mask, window=window, read_slots=batch.read)
        logits = self.model.logits(h)
        j = torch.arange(steps + 1, device=dev)
        u = None if batch.sampling.all_greedy else self._uniforms(rows, self.gen[rows][:, None] + j)
        acc = accept(tree, logits, self.temperature[rows], self.top_p[rows], u, max_depth=steps,
                     sampling=batch.sampling, ties=self.ties, forced=self._forced(rows))
        if self.hist is not None:
            self.hist[rows[:, None], base[:, None] + j] = h[torch.arange(rows.shape[0], device=dev)[:, None], acc.path]
        self.cache.keep(rows, acc.path, acc.num_nodes)
        return self._emit(rows, acc.tokens, acc.logprobs, acc.num_nodes, batch.padded, acc.cut)

    def _ngram_round(self, batch: _Batch, strategy: Strategy) -> torch.Tensor:
        """N-gram drafts come from the host (the suffix index): read the sequences, draft,
        verify as a chain. Not captured as a graph."""
        steps, n = strategy.steps, len(batch.slots)
        totals = [len(self._slot_req[s].prompt) + int(g) for s, g in zip(batch.slots, self._hgen[batch.idx].tolist())]
        rows_host = self.seq[batch.rows[:n], : max(totals)].tolist()
        drafts = torch.zeros(batch.bucket, steps, dtype=torch.long)
        lengths = torch.zeros(batch.bucket, dtype=torch.long)
        for b, (slot, total) in enumerate(zip(batch.slots, totals)):
            req = self._slot_req[slot]
            prop = self.drafter.propose(req.id, rows_host[b][:total], steps, group=req.group)[:steps]
            drafts[b, :len(prop)] = torch.tensor(prop, dtype=torch.long)
            lengths[b] = len(prop)
        base = self.cache.lengths[batch.rows]
        window = self._window(batch, steps + 1, self.cache.capacity)
        return self._verify_chain(batch, base, drafts.to(self.device), lengths.to(self.device), window)

    def _emit(self, slots: torch.Tensor, tokens: torch.Tensor, logprobs: torch.Tensor,
              counts: torch.Tensor, padded: bool, cut: torch.Tensor | None = None) -> torch.Tensor:
        """Append up to counts[b] tokens per row, cut at the first stop token or at
        max_tokens, on the device. Returns the step's results [B, 5]: tokens verified
        (KV entries committed), tokens emitted, finished, stopped, and whether the row
        stopped before a near-tie draw (`cut`)."""
        dev = slots.device
        width = tokens.shape[1]
        j = torch.arange(width, device=dev)[None, :]
        gen = self.gen[slots]
        room = self.max_tokens[slots] - gen
        is_stop = (tokens[:, :, None] == self.stops[slots][:, None, :]).any(-1) & (j < counts[:, None])
        first_stop = torch.where(is_stop, j, width).amin(1)
        take = torch.minimum(torch.minimum(counts, first_stop + 1), room).clamp_min(0)
        self.seq[slots[:, None], self.prompt_len[slots][:, None] + gen[:, None] + j] = tokens
        self.out_lp[slots[:, None], gen[:, None] + j] = logprobs
        self.gen[slots] = gen + take
        stopped = first_stop < torch.minimum(counts, room)
        finished = stopped | (gen + take >= self.max_tokens[slots])
        if padded:  # the scratch slot's lengths must not creep towards the capacity
            self.cache.lengths[self._pad] = 0
            if self.dcache is not None:
                self.dcache.lengths[self._pad] = 0
        cut = torch.zeros_like(counts) if cut is None else cut.long()
        return torch.stack([counts, take, finished.long(), stopped.long(), cut], 1)

    def _collect(self, slots: list[int], idx: torch.Tensor, res: torch.Tensor, fed: bool = True):
        """The step's one read of results: update the host mirrors, finish rows.
        `fed`: the counted tokens went through the target (not so at admission)."""
        r = res.cpu()[: len(slots)]
        if fed:
            self._hlen[idx] += r[:, 0]
        self._hgen[idx] += r[:, 1]
        produced = int(r[:, 1].sum())
        results = []
        if bool(r[:, 4].any()):  # rows that stopped before a near tie: recompute that position
            for b in (r[:, 4].bool() & ~r[:, 2].bool()).nonzero()[:, 0].tolist():
                slot, gen = slots[b], int(self._hgen[idx[b]])
                token = self._recompute(slot, len(self._slot_req[slot].prompt) + gen, gen)
                self.forced[slot], self.forced_pos[slot] = token, gen
        if bool(r[:, 2].any()):
            for b in r[:, 2].nonzero()[:, 0].tolist():
                results.append(self._finish(slots[b], "stop" if bool(r[b, 3]) else "length"))
            self._batch = None
        with self._lock:
            c = self._counters
            self._counters = _replace(
                c, generated_tokens=c.generated_tokens + produced, finished=c.finished + len(results),
                running=sum(q is not None for q in self._slot_req))
        return results, r

    def _finish(self, slot: int, reason: str) -> Result:
        req = self._slot_req[slot]
        plen, gen = len(req.prompt), int(self._hgen[slot])
        seq = self.seq[slot, : plen + gen].tolist()
        hidden = None
        if req.return_hidden_states:
            hidden = self.hist[slot, : plen + gen - 1].clone()
        if isinstance(self.drafter, NgramDrafter):
            self.drafter.finish(req.id, seq, group=req.group)
        with self._lock:
            self._slot_req[slot] = None
        return Result(id=req.id, prompt=seq[:plen], tokens=seq[plen:],
                      logprobs=self.out_lp[slot, :gen].tolist(), finish_reason=reason,
                      group=req.group, hidden_states=hidden)


def _replace(c: Counters, **kw) -> Counters:
    return replace(c, **kw)
