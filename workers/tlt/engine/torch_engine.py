"""Torch reference rollout engine: continuous batching over fixed slots, with lossless
adaptive speculative decoding (EAGLE drafter or n-gram fallback).

Per slot the engine keeps the whole sequence (prompt + generated), the target KV
cache of every token but the last (the *pending* token, sampled and emitted but not
yet fed), and, when an EAGLE drafter or hidden states are wanted, the target's last
hidden state per position. A step admits waiting requests into free slots (one padded
prefill), then either decodes one token for every running sequence or runs one
speculative round: draft, verify all sequences' trees in one target forward, accept
per row, keep only the accepted KV entries.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

import torch
from tqdm import tqdm

from tlt.models.drafter import EagleDrafter
from tlt.models.llama import CausalLM
from tlt.models.loading import load_weights
from tlt.speculative.adaptive import Strategy
from tlt.speculative.eagle import draft_tree
from tlt.speculative.ngram import NgramDrafter
from tlt.speculative.sampling import sample_from, target_probs, token_logprobs, uniforms
from tlt.speculative.tree import chain_tree
from tlt.speculative.verify import accept

from .metrics import engine_metrics
from .types import Counters, Request, RequestError, Result


class SpeculationController(Protocol):
    def decide(self, batch: int) -> Strategy | None: ...
    def record(self, strategy: Strategy, batch: int, tokens: int, seconds: float) -> None: ...
    def record_plain(self, batch: int, tokens: int, seconds: float) -> None: ...


class TorchEngine:
    def __init__(self, model: CausalLM, *, num_slots: int = 64, max_model_len: int = 2048,
                 drafter: EagleDrafter | NgramDrafter | None = None,
                 speculation: SpeculationController | None = None,
                 store_hidden_states: bool = False, metrics_registry=None,
                 max_tree_nodes: int = 64):
        if num_slots < 1:
            raise ValueError("num_slots must be >= 1")
        if speculation is not None and drafter is None:
            raise ValueError("speculation needs a drafter: pass an EagleDrafter or NgramDrafter")
        self.model = model.eval()
        self.device = model.device
        self.num_slots = num_slots
        self.max_model_len = max_model_len
        self.drafter = drafter
        self.speculation = speculation
        self.max_tree_nodes = max_tree_nodes
        self.metrics = engine_metrics(metrics_registry)
        self._eagle = isinstance(drafter, EagleDrafter)
        self._keep_hidden = store_hidden_states or self._eagle
        self._lock = threading.Lock()
        self._step_lock = threading.Lock()  # step() and preempt() never interleave
        self._waiting: deque[Request] = deque()
        self._finished: list[Result] = []
        self._counters = Counters()
        self._slot_req: list[Request | None] = [None] * num_slots
        self._allocate()

    # ---------- buffers ----------
    def _allocate(self) -> None:
        S, dev = self.num_slots, self.device
        cap = self.max_model_len + self.max_tree_nodes + 2
        self.cache = self.model.new_cache(S, cap)
        self.dcache = self.drafter.new_cache(S, cap + self.max_tree_nodes) if self._eagle else None
        self.seq = torch.zeros(S, cap, dtype=torch.long, device=dev)
        self.prompt_len = torch.zeros(S, dtype=torch.long, device=dev)
        self.gen = torch.zeros(S, dtype=torch.long, device=dev)  # emitted tokens incl. pending
        self.out_lp = torch.zeros(S, cap, dtype=torch.float32, device=dev)
        self.max_tokens = torch.zeros(S, dtype=torch.long, device=dev)
        self.temperature = torch.zeros(S, dtype=torch.float64, device=dev)
        self.top_p = torch.ones(S, dtype=torch.float64, device=dev)
        self.seeds = torch.zeros(S, dtype=torch.int64, device=dev)
        self.stops = torch.full((S, 1), -1, dtype=torch.long, device=dev)
        h = self.model.config.hidden_size
        self.hist = torch.zeros(S, cap, h, dtype=self.model.dtype, device=dev) if self._keep_hidden else None

    def sleep(self) -> None:
        """Free the KV caches and buffers (e.g. to lend the device); requires no running work."""
        if self.running_slots().numel():
            raise RuntimeError("cannot sleep with running sequences; wait until the engine is idle")
        self.cache = self.dcache = self.hist = None
        self.seq = self.out_lp = None

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
        with torch.inference_mode():
            done = self._admit()
            slots = self.running_slots()
            strategy = None
            if slots.numel():
                strategy = self.speculation.decide(int(slots.numel())) if self.speculation else None
                if strategy is None:
                    t0 = time.perf_counter()
                    emitted = self._counters.generated_tokens
                    done += self._decode(slots)
                    if self.speculation is not None:
                        self.speculation.record_plain(int(slots.numel()), self._counters.generated_tokens - emitted,
                                                      time.perf_counter() - t0)
                else:
                    done += self._speculate(slots, strategy)
        elapsed = time.perf_counter() - start
        m = self.metrics
        produced = self._counters.generated_tokens - before
        m.generated_tokens.inc(produced)
        m.speculation_seconds.labels(state="on" if strategy else "off").inc(elapsed)
        if elapsed > 0:
            m.tokens_per_second.set(produced / elapsed)
        m.running_batch.set(int(slots.numel()))
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
                plen, gen = int(self.prompt_len[slot]), int(self.gen[slot])
                seq = self.seq[slot, : plen + gen].tolist()
                out.append(replace(req, prompt=seq[:plen], prefix=seq[plen:],
                                   prefix_logprobs=self.out_lp[slot, :gen].tolist()))
                if isinstance(self.drafter, NgramDrafter):
                    self.drafter.finish(req.id)  # forget the suffix index; it is rebuilt on the new engine
                with self._lock:
                    self._slot_req[slot] = None
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

    # ---------- internals ----------
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
        resumed = [(slot, r) for slot, r in zip(free, take) if r.prefix]
        for slot, r in resumed:
            self._resume(slot, r)
        fresh = [(slot, r) for slot, r in zip(free, take) if not r.prefix]
        if not fresh:
            return []
        free, take = [s for s, _ in fresh], [r for _, r in fresh]
        dev = self.device
        slots = torch.tensor(free[:len(take)], dtype=torch.long, device=dev)
        lens = torch.tensor([len(r.prompt) for r in take], dtype=torch.long, device=dev)
        width = int(lens.max())
        ids = torch.zeros(len(take), width, dtype=torch.long, device=dev)
        max_stops = max([len(r.stop_ids) for r in take] + [self.stops.shape[1]])
        if max_stops > self.stops.shape[1]:
            pad = torch.full((self.num_slots, max_stops - self.stops.shape[1]), -1, dtype=torch.long, device=dev)
            self.stops = torch.cat([self.stops, pad], 1)
        for b, r in enumerate(take):
            ids[b, :len(r.prompt)] = torch.as_tensor(list(r.prompt), device=dev)
            self.stops[slots[b]] = -1
            if r.stop_ids:
                self.stops[slots[b], :len(r.stop_ids)] = torch.as_tensor(list(r.stop_ids), device=dev)
        self.seq[slots, :width] = ids
        self.prompt_len[slots] = lens
        self.gen[slots] = 0
        self.max_tokens[slots] = torch.tensor([r.max_tokens for r in take], device=dev)
        self.temperature[slots] = torch.tensor([r.temperature for r in take], dtype=torch.float64, device=dev)
        self.top_p[slots] = torch.tensor([r.top_p for r in take], dtype=torch.float64, device=dev)
        self.seeds[slots] = torch.tensor([int(r.seed) for r in take], dtype=torch.int64, device=dev)
        self.cache.reset(slots)
        if self.dcache is not None:
            self.dcache.reset(slots)
        h = self.model.hidden(ids, cache=self.cache, slots=slots)
        self.cache.advance(slots, lens)
        if self.hist is not None:
            self.hist[slots, :width] = h
        rows = torch.arange(len(take), device=dev)
        logits = self.model.logits(h[rows, lens - 1])
        tokens, lp = self._sample(logits, slots)
        return self._emit(slots, tokens[:, None], lp[:, None], torch.ones_like(lens))

    def _set_stops(self, slot: int, stop_ids) -> None:
        if len(stop_ids) > self.stops.shape[1]:
            pad = torch.full((self.num_slots, len(stop_ids) - self.stops.shape[1]), -1, dtype=torch.long, device=self.device)
            self.stops = torch.cat([self.stops, pad], 1)
        self.stops[slot] = -1
        if stop_ids:
            self.stops[slot, :len(stop_ids)] = torch.as_tensor(list(stop_ids), device=self.device)

    def _resume(self, slot: int, r: Request) -> None:
        """Admit a continuation: prefill prompt + prefix but the last token, which is pending."""
        dev = self.device
        full = [*r.prompt, *r.prefix]
        s = torch.tensor([slot], dtype=torch.long, device=dev)
        self._set_stops(slot, r.stop_ids)
        self.seq[slot, :len(full)] = torch.as_tensor(full, device=dev)
        self.prompt_len[slot] = len(r.prompt)
        self.gen[slot] = len(r.prefix)
        self.out_lp[slot, :len(r.prefix)] = torch.as_tensor(list(r.prefix_logprobs), dtype=self.out_lp.dtype, device=dev)
        self.max_tokens[slot] = r.max_tokens
        self.temperature[slot] = r.temperature
        self.top_p[slot] = r.top_p
        self.seeds[slot] = int(r.seed)
        self.cache.reset(s)
        if self.dcache is not None:
            self.dcache.reset(s)
        ids = torch.as_tensor(full[:-1], device=dev)[None, :]
        h = self.model.hidden(ids, cache=self.cache, slots=s)
        self.cache.advance(s, torch.tensor([len(full) - 1], device=dev))
        if self.hist is not None:
            self.hist[slot, : len(full) - 1] = h[0]

    def _sample(self, logits: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        temp = self.temperature[slots]
        if bool((temp <= 0).all()):
            tokens = logits.argmax(-1)
        else:
            probs = target_probs(logits, temp, self.top_p[slots])
            u = uniforms(self.seeds[slots], self.gen[slots][:, None], 1)[:, 0, 0]
            tokens = sample_from(probs, u)
        return tokens, token_logprobs(logits, temp, tokens)

    def _decode(self, slots: torch.Tensor) -> list[Result]:
        pos = self.cache.lengths[slots]
        pending = self.seq[slots, self.prompt_len[slots] + self.gen[slots] - 1]
        h = self.model.hidden(pending[:, None], pos[:, None], cache=self.cache, slots=slots)
        self.cache.advance(slots, 1)
        if self.hist is not None:
            self.hist[slots, pos] = h[:, 0]
        tokens, lp = self._sample(self.model.logits(h[:, 0]), slots)
        return self._emit(slots, tokens[:, None], lp[:, None], torch.ones_like(pos))

    def _speculate(self, slots: torch.Tensor, strategy: Strategy) -> list[Result]:
        start = time.perf_counter()
        dev = self.device
        bsz = slots.numel()
        base = self.cache.lengths[slots]  # position of the pending token
        pending = self.seq[slots, base]
        if self._eagle:
            root_feature = self._drafter_catch_up(slots, base)
            tree = draft_tree(self.drafter, self.dcache, slots, pending, root_feature, base, strategy)
        else:
            tree = self._ngram_tree(slots, pending, strategy)
        positions = base[:, None] + tree.depth
        h = self.model.hidden(tree.tokens, positions, cache=self.cache, slots=slots, tail_mask=tree.mask)
        logits = self.model.logits(h)
        steps = tree.max_depth + 1
        u = uniforms(self.seeds[slots], self.gen[slots][:, None] + torch.arange(steps, device=dev), 1)[..., 0]
        acc = accept(tree, logits, self.temperature[slots], self.top_p[slots], u, max_depth=steps - 1)
        if self.hist is not None:
            width = acc.path.shape[1]
            rows = torch.arange(bsz, device=dev)[:, None]
            self.hist[slots[:, None], base[:, None] + torch.arange(width, device=dev)] = h[rows, acc.path]
        self.cache.keep(slots, acc.path, acc.num_nodes)
        emitted = int(acc.num_nodes.sum())
        results = self._emit(slots, acc.tokens, acc.logprobs, acc.num_nodes)
        seconds = time.perf_counter() - start
        self.speculation.record(strategy, bsz, emitted, seconds)
        for n in acc.num_nodes.tolist():
            self.metrics.acceptance_length.labels(strategy=strategy.name).observe(n)
        with self._lock:
            c = self._counters
            self._counters = _replace(c, verify_rounds=c.verify_rounds + bsz,
                                      accepted_tokens=c.accepted_tokens + emitted)
        return results

    def _drafter_catch_up(self, slots: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Feed the drafter every committed position it has not seen (inputs: token at
        t+1 and the target's true hidden state at t); return its feature at the last
        committed position, whose LM head drafts the token after the pending one."""
        dev = self.device
        start = self.dcache.lengths[slots]
        count = base - start  # >= 1: positions start .. base-1
        width = int(count.max())
        j = torch.arange(width, device=dev)[None, :]
        pos = (start[:, None] + j).clamp_max(base[:, None] - 1)
        tokens = self.seq[slots[:, None], pos + 1]
        hidden = self.hist[slots[:, None], pos]
        feat = self.drafter.features(tokens, hidden, pos, cache=self.dcache, slots=slots)
        self.dcache.advance(slots, count)
        return feat[torch.arange(slots.numel(), device=dev), count - 1]

    def _ngram_tree(self, slots: torch.Tensor, pending: torch.Tensor, strategy: Strategy):
        steps = strategy.steps
        drafts = torch.zeros(slots.numel(), steps, dtype=torch.long)
        lengths = torch.zeros(slots.numel(), dtype=torch.long)
        totals = (self.prompt_len[slots] + self.gen[slots]).tolist()
        rows = self.seq[slots].tolist()
        for b, (slot, total) in enumerate(zip(slots.tolist(), totals)):
            req = self._slot_req[slot]
            prop = self.drafter.propose(req.id, rows[b][:total], steps, group=req.group)
            drafts[b, :len(prop)] = torch.tensor(prop, dtype=torch.long)
            lengths[b] = len(prop)
        return chain_tree(pending, drafts.to(self.device), lengths.to(self.device))

    def _emit(self, slots: torch.Tensor, tokens: torch.Tensor, logprobs: torch.Tensor,
              counts: torch.Tensor) -> list[Result]:
        """Append up to counts[b] tokens per row, cut at the first stop token or at
        max_tokens; finished rows become results and free their slot."""
        dev = self.device
        width = tokens.shape[1]
        j = torch.arange(width, device=dev)[None, :]
        gen = self.gen[slots]
        room = self.max_tokens[slots] - gen
        is_stop = (tokens[:, :, None] == self.stops[slots][:, None, :]).any(-1) & (j < counts[:, None])
        first_stop = torch.where(is_stop, j, width).min(1).values
        take = torch.minimum(torch.minimum(counts, first_stop + 1), room)
        write = self.prompt_len[slots][:, None] + gen[:, None] + j
        self.seq[slots[:, None], write] = tokens
        self.out_lp[slots[:, None], gen[:, None] + j] = logprobs
        self.gen[slots] = gen + take
        stopped = first_stop < torch.minimum(counts, room)
        finished = stopped | (gen + take >= self.max_tokens[slots])
        produced = int(take.sum())
        results = []
        if bool(finished.any()):
            for b in finished.nonzero()[:, 0].tolist():
                results.append(self._finish(int(slots[b]), "stop" if bool(stopped[b]) else "length"))
        with self._lock:
            c = self._counters
            self._counters = _replace(
                c, generated_tokens=c.generated_tokens + produced, finished=c.finished + len(results),
                running=sum(r is not None for r in self._slot_req))
        return results

    def _finish(self, slot: int, reason: str) -> Result:
        req = self._slot_req[slot]
        plen, gen = int(self.prompt_len[slot]), int(self.gen[slot])
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
    from dataclasses import replace
    return replace(c, **kw)
