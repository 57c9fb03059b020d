"""Cost table: target forward time per running batch size and verify width, and the
drafter's cost relative to the target, measured on this machine. It feeds the `auto`
batch threshold and the cluster simulator."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from tlt.models import ModelConfig, random_model
from tlt.models.drafter import EagleDrafter
from tlt.models.llama import CausalLM
from tlt.speculative.adaptive import Strategy, threshold_from_costs

# Stand-in until the built-in task model exists: 8 layers, hidden 256, small vocabulary.
FALLBACK_CONFIG = ModelConfig(vocab_size=512, hidden_size=256, intermediate_size=704, num_hidden_layers=8,
                              num_attention_heads=8, num_key_value_heads=4)


@dataclass
class CostTable:
    device: str
    context_len: int
    target_seconds: dict[int, dict[int, float]]  # [batch][width] median seconds per forward
    drafter_ratio: float  # drafter forward / target forward, median over batch sizes at width 1
    drafter_seconds: dict[int, float] = field(default_factory=dict)  # [batch] at width 1
    model: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["target_seconds"] = {str(b): {str(w): s for w, s in row.items()} for b, row in self.target_seconds.items()}
        d["drafter_seconds"] = {str(b): s for b, s in self.drafter_seconds.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "CostTable":
        d = dict(d)
        d["target_seconds"] = {int(b): {int(w): float(s) for w, s in row.items()}
                               for b, row in d["target_seconds"].items()}
        d["drafter_seconds"] = {int(b): float(s) for b, s in d.get("drafter_seconds", {}).items()}
        return cls(**d)

    def auto_threshold(self, strategy: Strategy, acceptance_length: float = 2.0) -> int:
        return threshold_from_costs(self.target_seconds, strategy, acceptance_length, self.drafter_ratio)


def builtin_model(dtype: torch.dtype = torch.float32) -> tuple[CausalLM, str]:
    """The built-in tiny model if the task package offers it, else the fallback config."""
    try:
        from tlt.tasks import ensure_base_model  # type: ignore[attr-defined]
    except ImportError:
        return random_model(FALLBACK_CONFIG, seed=0, dtype=dtype), "random-8x256 (fallback)"
    from tlt.models import load_model
    path = ensure_base_model()
    return load_model(path, dtype=dtype), str(path)


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure_costs(model: CausalLM, drafter: EagleDrafter | None = None,
                  batch_sizes=(1, 2, 4, 8, 16, 32, 64), widths=(1, 2, 4, 8, 16),
                  context_len: int = 256, repeats: int = 5, progress: bool = True,
                  model_name: str = "") -> CostTable:
    """Median time of one target forward (KV cache of `context_len` tokens per sequence,
    `width` new tree-masked tokens each, LM head on all of them) per batch and width."""
    drafter = drafter or EagleDrafter.for_target(model)
    dev = model.device
    table: dict[int, dict[int, float]] = {}
    dtimes: dict[int, float] = {}
    total = len(batch_sizes) * (len(widths) + 1)
    bar = tqdm(total=total, desc="cost table", disable=not progress, leave=False)
    with torch.inference_mode():
        for b in batch_sizes:
            cache = model.new_cache(b, context_len + max(widths) + 1)
            dcache = drafter.new_cache(b, context_len + max(widths) + 1)
            slots = torch.arange(b, device=dev)
            table[b] = {}
            for w in widths:
                ids = torch.randint(0, model.config.vocab_size, (b, w), device=dev)
                pos = context_len + torch.arange(w, device=dev).expand(b, w)

                def target_forward():
                    cache.lengths.fill_(context_len)
                    model.logits(model.hidden(ids, pos, cache=cache, slots=slots))

                table[b][w] = _time(target_forward, repeats)
                bar.update(1)
            ids = torch.randint(0, model.config.vocab_size, (b, 1), device=dev)
            hid = torch.randn(b, 1, model.config.hidden_size, device=dev, dtype=model.dtype)
            pos = torch.full((b, 1), context_len, device=dev)

            def drafter_forward():
                dcache.lengths.fill_(context_len)
                drafter.logits(drafter.features(ids, hid, pos, cache=dcache, slots=slots))

            dtimes[b] = _time(drafter_forward, repeats)
            bar.update(1)
    bar.close()
    ratio = statistics.median(dtimes[b] / table[b][1] for b in batch_sizes)
    return CostTable(device=str(dev), context_len=context_len, target_seconds=table,
                     drafter_ratio=ratio, drafter_seconds=dtimes, model=model_name)


def format_table(table: CostTable) -> str:
    widths = sorted(next(iter(table.target_seconds.values())))
    lines = [f"target forward ms ({table.model or 'model'}, {table.device}, context {table.context_len})",
             "batch " + " ".join(f"{'w=' + str(w):>9}" for w in widths) + f"{'drafter/target':>16}"]
    for b, row in sorted(table.target_seconds.items()):
        ratio = table.drafter_seconds.get(b, float("nan")) / row[widths[0]]
        lines.append(f"{b:>5} " + " ".join(f"{row[w] * 1e3:9.3f}" for w in widths) + f"{ratio:16.3f}")
    lines.append(f"drafter cost relative to target (median): {table.drafter_ratio:.3f}")
    return "\n".join(lines)
