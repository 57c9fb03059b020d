"""What the simulator knows about a model on a device: the cost table and the profile around it.

The `CostTable` (`tlt.speculative.costs`, the one `tlt bench costs` measures) is the
target's forward time per (running batch size, tokens per sequence in the forward =
verify width), the drafter's cost relative to the target, and an optional linear term
for reading the KV cache; the simulator's tables hold forwards on an empty cache
(`context_len` 0) and add that term per context held. A `Profile` adds the rest of
an RL step's costs (prefill, drafter training, policy training, weight sync, pod and
role-switch latencies) and the drafter's acceptance model.

Files (JSON or YAML) hold a profile in this layout; every field but the forward
table is optional (defaults below, throughputs derived from the table):

    name: my-gpu
    forward_seconds: {1: {1: 0.0067, 8: 0.0069}, 64: {1: 0.0072, 8: 0.012}}
    drafter_ratio: 0.12              # drafter forward / target forward of the same width
    kv_seconds_per_token: 2.1e-8     # added per forward per token of context held
    prefill_tokens_per_second: 25000
    drafter_train_tokens_per_second: 15000   # per GPU, target hidden states included
    train_tokens_per_second: 5000            # per GPU, policy update incl. logprob passes
    train_fixed_seconds: 0, weight_sync_seconds: 5, reward_seconds: 2
    pod_start_seconds: 60, role_switch_seconds: 3, prompt_tokens: 512
    acceptance: {alpha_initial: 0.35, alpha_max: 0.75, tokens_scale: 1.0e8, drift: 0.05,
                 lengths: {"4_1_4": {1: 0.3, 2: 0.3, 3: 0.2, 4: 0.1, 5: 0.1}}}

Engine terms, all optional and measured by `tlt bench costs` on the machine (see
`tlt.engine.costs`): `step_overhead_seconds: {batch: s}` added to every plain decode
iteration and `round_overhead_seconds: {batch: s}` to every speculative round (the
engine's sampling, tree building, acceptance, bookkeeping on top of the forwards);
`attention_reads: sum | longest` (how the KV term counts context: each sequence's own,
as paged attention reads it, or every row up to the longest context in the batch, as
the torch engine pads it); `prefill_fixed_seconds` per admission of queued sequences.

`tlt bench costs --json FILE` output is read too. Its `target_seconds` were measured
with a KV cache of `context_len` tokens per sequence: without a measured
`kv_seconds_per_token` the KV term stays 0 (the table's context stands for all);
with one, the table is moved to an empty cache (kv x batch x context_len less) and
the KV term counts the context actually held. More
generally the forward table may sit under `forward_seconds`, `target_seconds`,
`target_forward_seconds`, `costs`, `forward` or `target`, as a
nested mapping batch -> width -> seconds or as a list of records with batch, width
and seconds fields; the drafter ratio under `drafter_ratio`, `drafter_cost_ratio`
or `drafter_relative_cost`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from tlt.sim.acceptance import AcceptanceModel
from tlt.speculative.costs import CostTable, CostTableError

FORWARD_KEYS = ("forward_seconds", "target_seconds", "target_forward_seconds", "costs", "forward", "target")
RATIO_KEYS = ("drafter_ratio", "drafter_cost_ratio", "drafter_relative_cost")


@dataclass(frozen=True)
class Profile:
    """Everything but the job spec and the lengths that decides simulated time."""

    name: str
    costs: CostTable
    acceptance: AcceptanceModel = field(default_factory=AcceptanceModel)
    prefill_tokens_per_second: float = 0.0  # 0: derived from the cost table
    drafter_train_tokens_per_second: float = 0.0  # per GPU; 0: prefill / 1.3
    train_tokens_per_second: float = 0.0  # per GPU; 0: prefill / 5
    train_fixed_seconds: float = 0.0
    weight_sync_seconds: float = 0.0
    reward_seconds: float = 0.0
    pod_start_seconds: float = 0.0
    role_switch_seconds: float = 0.0
    prompt_tokens: int = 0
    prefill_fixed_seconds: float = 0.0  # per admission of queued sequences (one padded prefill)
    source: str = ""

    def __post_init__(self):
        prefill = self.prefill_tokens_per_second or self.costs.peak_tokens_per_second()
        object.__setattr__(self, "prefill_tokens_per_second", prefill)
        if not self.drafter_train_tokens_per_second:
            # Hidden states come from a target prefill; the one-layer drafter's pass adds about a third.
            object.__setattr__(self, "drafter_train_tokens_per_second", prefill / 1.3)
        if not self.train_tokens_per_second:
            # Forward + backward (3 forwards) plus old and reference log-prob passes (2 forwards).
            object.__setattr__(self, "train_tokens_per_second", prefill / 5.0)

    def with_changes(self, **changes) -> "Profile":
        return replace(self, **changes)


# ---------------------------------------------------------------------------------
# Built-in profile: a Qwen2.5-7B-like target on one H100 SXM per rollout shard.
#
# Numbers and where they come from (public specs, first-order reasoning; no measurement):
# - Qwen2.5-7B: 7.6B parameters, 28 layers, hidden 3584, GQA with 4 KV heads of 128, vocab
#   152K with an untied LM head. A decode forward reads every weight but the input
#   embedding: ~7.07B params = 14.1 GB in bf16, and does 2 x 7.07B = 14.1 GFLOP per token.
# - H100 SXM: 3.35 TB/s HBM3 (take 2.7 TB/s achieved), 989 TFLOP/s dense bf16 (take 60%
#   for decode-shaped GEMMs = 600 TFLOP/s).
# - Forward time = overhead + smooth max of weight-read time (14.1 GB / 2.7 TB/s = 5.2 ms)
#   and compute time (tokens x 23.5 us), roofline with a p=4 norm so the knee is soft.
#   Overhead 1.5 ms per forward (CUDA-graph launch, sampling, scheduler). Batch 1 gives
#   ~6.7 ms per token = ~150 tokens/s, in line with published single-stream vLLM figures
#   for 7B models on H100.
# - KV cache: 28 layers x 2 x 4 heads x 128 x 2 bytes = 57 KB per token of context, read
#   once per forward: 57,344 B / 2.7 TB/s = 2.1e-8 s per context token. At 32K-token
#   responses this term dominates the tail, as it does in practice.
# - EAGLE drafter: one decoder layer (~0.23B) + fc + the shared LM head (0.54B) ~ 0.8B of
#   7.07B read per draft forward: ratio ~0.11; 0.12 with its own launch overhead.
# - Prefill / re-prefill: 14.1 GFLOP per token at ~50% of peak with attention over long
#   contexts: 25K tokens/s. Drafter training per lent GPU: target hidden states (prefill)
#   plus the drafter's forward and backward: 15K tokens/s.
# - Policy training: 6N (forward+backward) + 2N (old log-probs) + 2N (reference) = ~70
#   GFLOP per token at ~40% MFU (ZeRO, long sequences): ~5K tokens/s per GPU.
# - Weight sync (resharding the trainer's weights into the rollout engines, veRL-style)
#   5 s; vLLM sleep/wake or drafter checkpoint on a role switch 3 s; pod start with a cached
#   image and the model on a local volume 60 s; rewards overlap the tail, 2 s remain.
# - Acceptance: a trained EAGLE drafter accepts ~75% of chain tokens (alpha_max 0.75 gives
#   ~3.5 tokens per round at depth 6 and ~5 with a 16-node tree, the range EAGLE-2 reports
#   for 7-8B models); a fresh drafter 0.35. How fast it learns (tokens_scale) and how much a
#   policy update costs it (drift) are assumptions, not public figures.

_QWEN7B_WEIGHT_BYTES = 14.1e9
_QWEN7B_FLOP_PER_TOKEN = 14.1e9
_H100_BYTES_PER_S = 2.7e12
_H100_FLOPS = 6.0e14
_FORWARD_OVERHEAD_S = 1.5e-3
_KV_BYTES_PER_TOKEN = 28 * 2 * 4 * 128 * 2
TABLE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TABLE_WIDTHS = (1, 2, 3, 4, 5, 7, 9, 17, 33)


def roofline_table(weight_bytes: float, flop_per_token: float, bytes_per_s: float, flops: float,
                   overhead_s: float, batches=TABLE_BATCHES, widths=TABLE_WIDTHS, sharpness: float = 4.0):
    """Forward seconds per (batch, width): overhead + soft max of weight reads and compute."""
    memory = weight_bytes / bytes_per_s
    table = {}
    for b in batches:
        row = {}
        for w in widths:
            compute = b * w * flop_per_token / flops
            row[w] = overhead_s + (memory**sharpness + compute**sharpness) ** (1.0 / sharpness)
        table[b] = row
    return table


def qwen7b_h100() -> Profile:
    costs = CostTable(
        target_seconds=roofline_table(_QWEN7B_WEIGHT_BYTES, _QWEN7B_FLOP_PER_TOKEN, _H100_BYTES_PER_S, _H100_FLOPS,
                               _FORWARD_OVERHEAD_S),
        drafter_ratio=0.12,
        kv_seconds_per_token=_KV_BYTES_PER_TOKEN / _H100_BYTES_PER_S,
    )
    return Profile(
        name="qwen2.5-7b-h100",
        costs=costs,
        acceptance=AcceptanceModel(alpha_initial=0.35, alpha_max=0.75, tokens_scale=2.0e7, drift=0.05),
        prefill_tokens_per_second=25_000.0,
        drafter_train_tokens_per_second=15_000.0,
        train_tokens_per_second=5_000.0,
        weight_sync_seconds=5.0,
        reward_seconds=2.0,
        pod_start_seconds=60.0,
        role_switch_seconds=3.0,
        prompt_tokens=512,
        source="built-in: Qwen2.5-7B-like on H100 SXM from public specs (see tlt.sim.costs)",
    )


BUILTIN_PROFILES = {"qwen2.5-7b-h100": qwen7b_h100}


# ---------------------------------------------------------------------------------
# Reading files


def load_profile(path: str | Path) -> Profile:
    """A profile from a JSON/YAML file in tlt's layout or `tlt bench costs` output."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise CostTableError(f"cannot read cost table {path}: {err.strerror or err}") from None
    try:
        body = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise CostTableError(f"cost table {path} is not valid JSON/YAML: {err}") from None
    if not isinstance(body, dict):
        raise CostTableError(f"cost table {path} must be a mapping with forward_seconds")
    return profile_from_dict(body, default_name=path.stem, source=str(path))


def profile_from_dict(body: dict, default_name: str = "custom", source: str = "") -> Profile:
    forward = _find_forward(body)
    ratio = next((float(body[k]) for k in RATIO_KEYS if body.get(k) is not None), 0.1)
    try:
        kv = float(body.get("kv_seconds_per_token") or 0.0)
        step_overhead = _batch_map(body.get("step_overhead_seconds") or {})
        round_overhead = _batch_map(body.get("round_overhead_seconds") or {})
        context = int(body.get("context_len") or 0)
    except (TypeError, ValueError, AttributeError) as err:
        raise CostTableError(f"engine terms of the cost table: {err}; give numbers (and {{batch: seconds}} maps)")
    # `tlt bench costs` output: every forward held `context_len` tokens per sequence. With a measured
    # KV term the table moves to an empty cache, and the KV term counts the context really held.
    measured_at = context if kv > 0 and "target_seconds" in body and "forward_seconds" not in body else 0
    costs = CostTable(target_seconds=forward, context_len=measured_at, drafter_ratio=ratio, kv_seconds_per_token=kv,
                      step_overhead_seconds=step_overhead, round_overhead_seconds=round_overhead,
                      attention_reads=str(body.get("attention_reads") or "sum"))
    if measured_at > 0:
        costs = costs.at_context(0)
    acceptance = AcceptanceModel.from_dict(body.get("acceptance") or {})
    numbers = {
        name: float(body[name])
        for name in (
            "prefill_tokens_per_second", "drafter_train_tokens_per_second", "train_tokens_per_second",
            "train_fixed_seconds", "weight_sync_seconds", "reward_seconds", "pod_start_seconds",
            "role_switch_seconds", "prefill_fixed_seconds",
        )
        if body.get(name) is not None
    }
    return Profile(
        name=str(body.get("name") or default_name),
        costs=costs,
        acceptance=acceptance,
        prompt_tokens=int(body.get("prompt_tokens", 0)),
        source=source,
        **numbers,
    )


def _find_forward(body: dict) -> dict[int, dict[int, float]]:
    for key in FORWARD_KEYS:
        if key in body:
            return _parse_forward(body[key], key)
    raise CostTableError(
        f"no forward table found; expected one of {', '.join(FORWARD_KEYS)} "
        "as {batch: {width: seconds}} or a list of {batch, width, seconds} records"
    )


def _parse_forward(value, key: str) -> dict[int, dict[int, float]]:
    table: dict[int, dict[int, float]] = {}
    if isinstance(value, dict):
        for batch, row in value.items():
            if isinstance(row, dict):
                table[int(batch)] = {int(w): float(s) for w, s in row.items()}
            else:  # batch -> seconds: plain decoding only
                table[int(batch)] = {1: float(row)}
    elif isinstance(value, list):
        for record in value:
            if not isinstance(record, dict):
                raise CostTableError(f"{key}: records must be mappings with batch, width and seconds")
            batch = record.get("batch", record.get("batch_size"))
            width = record.get("width", record.get("verify_width", record.get("tokens", 1)))
            seconds = next((record[k] for k in ("seconds", "forward_seconds", "time_s", "time") if k in record), None)
            if batch is None or seconds is None:
                raise CostTableError(f"{key}: record {record} lacks batch or seconds")
            table.setdefault(int(batch), {})[int(width)] = float(seconds)
    else:
        raise CostTableError(f"{key} must be a mapping or a list of records")
    return table


def _batch_map(value) -> dict[int, float]:
    return {int(b): float(x) for b, x in dict(value).items()}


def describe(profile: Profile) -> dict:
    c = profile.costs
    return {
        "name": profile.name,
        "source": profile.source,
        "forward_ms_batch1": round(c.forward_seconds(1, 1) * 1e3, 3),
        "forward_ms_batch64": round(c.forward_seconds(64, 1) * 1e3, 3),
        "drafter_ratio": c.drafter_ratio,
        "kv_seconds_per_token": c.kv_seconds_per_token,
        "attention_reads": c.attention_reads,
        "step_overhead_ms_batch1": round(c.step_overhead(1) * 1e3, 3),
        "round_overhead_ms_batch1": round(c.round_overhead(1) * 1e3, 3),
        "prefill_tokens_per_second": profile.prefill_tokens_per_second,
        "prefill_fixed_seconds": profile.prefill_fixed_seconds,
        "drafter_train_tokens_per_second": profile.drafter_train_tokens_per_second,
        "train_tokens_per_second": profile.train_tokens_per_second,
        "weight_sync_seconds": profile.weight_sync_seconds,
        "role_switch_seconds": profile.role_switch_seconds,
        "pod_start_seconds": profile.pod_start_seconds,
        "acceptance": profile.acceptance.describe(),
    }

