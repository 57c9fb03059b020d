"""Engine benchmark at real model shapes (`tlt bench engine`, `bench/gpu_engine.py`).

A named Hugging Face shape (`tlt.models.shapes`) with random weights is built on the
device; the torch engine then decodes from `prompt`-token prompts and we report, per
running batch: milliseconds per plain step, tokens per second, the fraction of the HBM
roofline (weights + each row's KV cache read once per step, over the device's memory
bandwidth), host synchronisations per step (CUDA's sync debug mode) and peak memory;
and per speculative strategy: the round's time and its ratio to a plain step (with a
random drafter: the round's cost does not depend on what it accepts). Timers
synchronise CUDA. On a CPU it is a smoke run of the same code (syncs and memory null).
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings

import torch

from tlt.models.drafter import EagleDrafter
from tlt.models.shapes import random_on_device, shape_config
from tlt.speculative.adaptive import FixedStrategy, Strategy

from .torch_engine import TorchEngine
from .types import Request

# Peak memory bandwidth, bytes/s, by a substring of torch.cuda.get_device_name() (vendor figures).
BANDWIDTH = [
    ("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("H800", 3.35e12), ("GH200", 4.0e12),
    ("B200", 8.0e12), ("A100-SXM4-80GB", 2.039e12), ("A100 80GB", 1.935e12), ("A100", 1.555e12),
    ("L40S", 0.864e12), ("L40", 0.864e12), ("A10", 0.6e12), ("L4", 0.3e12), ("RTX 4090", 1.008e12),
]


def device_bandwidth(device: torch.device, given: float | None = None) -> tuple[float | None, str | None]:
    """(bytes/s, where the figure came from): `given`, else the table, else unknown."""
    if given:
        return given, "--bandwidth"
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for key, bw in BANDWIDTH:
        if key in name:
            return bw, f"table: {key}"
    return None, None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _count_syncs(device: torch.device, fn) -> int | None:
    """Host synchronisations `fn` causes (CUDA's sync debug mode warns on each); None on a CPU."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def _prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (count, length), generator=gen).tolist()


def _engine_steps(model, batch: int, prompt: int, steps: int, warmup: int, drafter=None, strategy=None,
                  static: bool | None = None, seed: int = 0) -> dict:
    """Time `steps` engine steps of a running batch held at `batch` (after admission and
    `warmup` steps, which also capture the CUDA graphs)."""
    dev = model.device
    room = (warmup + steps + 3) * ((strategy.steps + 1) if strategy else 1) + 8
    engine = TorchEngine(model, num_slots=batch, max_model_len=prompt + room, drafter=drafter,
                         speculation=FixedStrategy(strategy) if strategy else None, static=static)
    engine.submit([Request(prompt=p, max_tokens=room - 4, temperature=0.0, seed=i, id=i)
                   for i, p in enumerate(_prompts(batch, prompt, model.config.vocab_size, seed))])
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    engine.step()  # admission (prefill) and, with speculation, the drafter's catch-up
    for _ in range(warmup):
        engine.step()
    syncs = _count_syncs(dev, engine.step)
    before = engine.counters()
    _sync(dev)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.step()
        _sync(dev)
        times.append(time.perf_counter() - start)
    c = engine.counters()
    if c.running != batch:
        raise RuntimeError(f"the running batch fell to {c.running} during the benchmark; raise max_tokens")
    rounds = c.verify_rounds - before.verify_rounds
    out = {"ms": statistics.median(times) * 1e3, "syncs": syncs,
           "acceptance": (c.accepted_tokens - before.accepted_tokens) / rounds if rounds else None,
           "context": prompt + warmup + 1 + steps // 2,
           "peak_memory_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
           "graphs": len(engine._graphs) if engine._graphs is not None else 0}
    del engine
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def run_engine_bench(shape: str, device: str, dtype: str, batch_sizes=(1, 4, 16, 64, 256), prompt: int = 512,
                     steps: int = 32, warmup: int = 6, strategies=("4_1_4", "3_2_6"), spec_batch_sizes=(1, 4),
                     bandwidth: float | None = None, static: bool | None = None, seed: int = 0,
                     log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    dev = torch.device(device)
    cfg = shape_config(shape)
    start = time.perf_counter()
    model = random_on_device(cfg, dev, dtype, seed=seed)
    drafter = EagleDrafter.for_target(model, seed=seed) if strategies else None
    _sync(dev)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * model.dtype.itemsize
    bw, bw_source = device_bandwidth(dev, bandwidth)
    probe = TorchEngine(model, num_slots=1, max_model_len=8, static=static)
    out = {
        "bench": "gpu_engine", "shape": shape, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": str(model.dtype).removeprefix("torch."),
        "params": sum(p.numel() for p in model.parameters()), "weight_bytes": weight_bytes,
        "bandwidth_bytes_per_s": bw, "bandwidth_source": bw_source, "prompt_tokens": prompt,
        "static": probe.static, "cuda_graphs": probe.cuda_graphs, "build_seconds": 0.0,
        "plain": {}, "speculative": {},
    }
    del probe
    out["build_seconds"] = round(time.perf_counter() - start, 2)
    with torch.inference_mode():
        for b in batch_sizes:
            r = _engine_steps(model, b, prompt, steps, warmup, static=static, seed=seed + b)
            s = r["ms"] / 1e3
            roof = (weight_bytes + kv_per_token * r["context"] * b) / bw if bw else None
            out["plain"][str(b)] = {
                "ms_per_step": round(r["ms"], 3), "tokens_per_s": round(b / s, 1),
                "roofline_ms": float(f"{roof * 1e3:.4g}") if roof else None,
                "fraction_of_roofline": float(f"{roof / s:.4g}") if roof else None,
                "host_syncs_per_step": r["syncs"], "peak_memory_bytes": r["peak_memory_bytes"],
                "graphs": r["graphs"]}
            log(f"plain batch {b}: {r['ms']:.2f} ms/step, {b / s:,.0f} tokens/s"
                + (f", {roof / s:.0%} of the HBM roofline" if roof else ""))
        for name in strategies:
            strategy = Strategy.parse(name)
            out["speculative"][name] = {}
            for b in spec_batch_sizes:
                r = _engine_steps(model, b, prompt, steps, warmup, drafter=drafter, strategy=strategy,
                                  static=static, seed=seed + b)
                plain = out["plain"].get(str(b), {}).get("ms_per_step")
                out["speculative"][name][str(b)] = {
                    "ms_per_round": round(r["ms"], 3),
                    "round_over_plain_step": round(r["ms"] / plain, 3) if plain else None,
                    "host_syncs_per_round": r["syncs"], "peak_memory_bytes": r["peak_memory_bytes"],
                    "graphs": r["graphs"]}
                log(f"speculative {name} batch {b}: {r['ms']:.2f} ms/round"
                    + (f" = {r['ms'] / plain:.2f}x a plain step" if plain else ""))
    peaks = [v["peak_memory_bytes"] for part in (out["plain"], *out["speculative"].values())
             for v in part.values() if v["peak_memory_bytes"] is not None]
    out["peak_memory_bytes"] = max(peaks) if peaks else None
    return out
