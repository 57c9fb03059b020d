"""The policy trainer: GRPO/DAPO updates of a Hugging Face causal LM.

One `train(rollouts)` call is one RL step's update:

1. old log-probabilities: the rollout engine's, or recomputed with the current
   policy when the batch has none;
2. reference log-probabilities from the frozen initial policy when kl_coef > 0;
3. `ppo_epochs` passes; each pass shuffles the rollouts and cuts them into
   mini-batches of `mini_batch_size` sequences, one optimizer step each
   (micro-batches of `micro_batch_size` sequences or `micro_batch_tokens` tokens,
   longest first, accumulate into it, weighted so the result equals one forward
   over the whole mini-batch);
4. loss = aggregate(ppo_clip_loss) + kl_coef * aggregate(k3_kl), aggregated
   with the configured mode over the mini-batch's response tokens.

A micro-batch is packed: its sequences back to back in one row, no padding,
attention per sequence (`tlt.models.varlen`), the LM head only where a response
token is predicted; with long-tailed response lengths padding would multiply the
work several times. `remove_padding=False` pads instead (the baseline of
`bench/trainer.py`); both give the same loss and gradient up to float rounding.

Parameter names stay the Hugging Face ones, so `state_dict()` loads into the
rollout engines and `export_hf()` writes a folder `from_pretrained` reads.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

import torch.distributed as dist

from tlt.trainer.backends import DeepSpeedBackend, TorchBackend, world
from tlt.trainer.batch import Collated, Rollouts, collate, pack, pad_per_token, plan_micro_batches
from tlt.trainer.losses import AGGREGATIONS, aggregate, aggregation_weight, k3_kl, ppo_clip_loss
from tlt.trainer.varlen import NAME as VARLEN

# Files of a Hugging Face folder that describe the tokenizer, copied as they are by export_hf.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "chat_template.jinja",
                   "chat_template.json", "generation_config.json")
STATE_FILE = "trainer_state.pt"
# Sums one rank collects during a step (all-reduced over ranks at the end).
_STATS = ("loss", "pg_loss", "kl_loss", "grad_norm", "tokens_seen", "kl", "ppo_kl", "clip_fraction", "entropy",
          "rows_seen")


@dataclass
class TrainerConfig:
    """Hyperparameters of the update (the spec's `algorithm` plus trainer-only knobs)."""

    learning_rate: float = 1e-6
    ppo_epochs: int = 1
    mini_batch_size: int | None = None  # sequences per optimizer step; None: the whole batch
    micro_batch_size: int | None = None  # sequences per forward; None: the whole mini-batch
    micro_batch_tokens: int | None = None  # or: tokens per forward (wins over micro_batch_size)
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    kl_coef: float = 0.0
    loss_aggregation: str = "seq-mean-token-mean"
    temperature: float = 1.0  # the rollout's: log-probs are of softmax(logits / temperature)
    max_grad_norm: float = 1.0
    weight_decay: float = 0.01  # AdamW decoupled decay, as veRL's actor default
    betas: tuple[float, float] = (0.9, 0.999)
    shuffle: bool = True  # reshuffle rollouts into mini-batches every epoch
    seed: int = 0
    gradient_checkpointing: bool = False  # recompute layer activations in backward: memory for time
    precision: Literal["fp32", "bf16"] = "fp32"
    remove_padding: bool = True  # pack micro-batches (False: pad each sequence to the longest)

    def __post_init__(self):
        if self.loss_aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown loss aggregation {self.loss_aggregation!r}; expected one of {AGGREGATIONS}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")

    @classmethod
    def from_algorithm(cls, algorithm, **overrides) -> "TrainerConfig":
        """From `ReasoningRLJobSpec.algorithm` (an `AlgorithmSpec`, defaults already resolved)."""
        fields = dict(learning_rate=algorithm.learning_rate, ppo_epochs=algorithm.ppo_epochs,
                      mini_batch_size=algorithm.mini_batch_size, clip_ratio_low=algorithm.clip_ratio_low,
                      clip_ratio_high=algorithm.clip_ratio_high, kl_coef=algorithm.kl_coef,
                      loss_aggregation=algorithm.loss_aggregation, temperature=algorithm.temperature,
                      seed=algorithm.seed)
        fields.update(overrides)
        return cls(**fields)


def checkpoint_world_size(path: str | Path) -> int:
    """The world size of the trainer that wrote the checkpoint at `path` (1 for checkpoints before it was kept)."""
    return int(torch.load(Path(path) / STATE_FILE, weights_only=False).get("world_size", 1))


def resume_problem(state: dict, backend: str, world_size: int) -> str | None:
    """Why a trainer of `world_size` ranks cannot resume from a checkpoint's `state` (its STATE_FILE), or None.

    DeepSpeed writes each rank's partition of the optimizer state (and, ZeRO-3, of the
    weights) in its own files: another number of ranks would find partitions of the
    wrong size. The torch backend's checkpoint is whole and resumes at any world size.
    """
    written = int(state.get("world_size", 1))
    if backend != "deepspeed" or written == world_size:
        return None
    return (f"it was written by a DeepSpeed trainer of {written} rank(s), each saving its own ZeRO partitions; "
            f"this trainer has {world_size}. Resume with trainer.replicas x gpusPerReplica giving {written} ranks, "
            f"or start fresh (`tlt run --fresh`, or a new runPolicy.checkpoint.path)")


def _default_device() -> torch.device:
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() \
        else torch.device("cpu")


def _load_hf(path: str | Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    from tlt.trainer.varlen import register

    # Packed rows need per-sequence attention; without a plan it is plain SDPA.
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation=register())
    return model.to(device).eval()


def _without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Train mode (HF recomputes checkpointed activations only in train mode) with dropout off.

    Old and new log-probs must come from the same function, or the ratio is noise
    even before the first update (Llama/Qwen2 ship with 0 anyway).
    """
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0
    return model.train()


class PolicyTrainer:
    """Trains a causal LM from a Hugging Face folder on batches of rollouts.

    backend: "torch" (AdamW on the module) or "deepspeed" (ZeRO `zero_stage`,
    optimizer state offloaded per `offload`). Both take the same inputs and give
    the same updates up to floating-point summation order. `join`: join the process
    group of the environment's rendezvous even at world size 1 (a rank of a trainer
    group, whose store the weight broadcast group meets in).
    """

    def __init__(self, model_path: str | Path, config: TrainerConfig | None = None, *,
                 backend: Literal["torch", "deepspeed"] = "torch", zero_stage: int = 2,
                 offload: Literal["none", "optimizer", "all"] = "none", device: str | torch.device | None = None,
                 pad_id: int | None = None, join: bool = False):
        self.config = config or TrainerConfig()
        self.model_path = Path(model_path)
        self.device = torch.device(device) if device is not None else _default_device()
        # DeepSpeed's bf16 keeps the fp32 master weights in ZeRO's partitions: each rank loads the
        # (bf16) checkpoint as it is, half what an fp32 copy per rank would take before ZeRO partitions it.
        bf16_weights = backend == "deepspeed" and self.config.precision == "bf16"
        model = _load_hf(self.model_path, self.device, torch.bfloat16 if bf16_weights else torch.float32)
        if self.config.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        model = _without_dropout(model)
        self.model_config = model.config
        self.pad_id = pad_id if pad_id is not None else (model.config.pad_token_id or 0)
        common = dict(lr=self.config.learning_rate, weight_decay=self.config.weight_decay, betas=self.config.betas,
                      max_grad_norm=self.config.max_grad_norm, precision=self.config.precision, device=self.device,
                      join=join)
        if backend == "torch":
            self.backend = TorchBackend(model, **common)
        elif backend == "deepspeed":
            self.backend = DeepSpeedBackend(model, **common, zero_stage=zero_stage, offload=offload)
        else:
            raise ValueError(f"backend must be 'torch' or 'deepspeed', got {backend!r}")
        self.reference = None
        if self.config.kl_coef > 0:
            ref_dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float32
            self.reference = _load_hf(self.model_path, self.device, ref_dtype).requires_grad_(False)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.updates = 0  # optimizer steps taken
        self.steps = 0  # train() calls (RL steps)

    @classmethod
    def from_spec(cls, spec, model_path: str | Path, **kwargs) -> "PolicyTrainer":
        """Backend, ZeRO stage and offload from `spec.trainer.deepspeed`; hyperparameters from `spec.algorithm`.

        On a GPU: bf16 (fp32 master weights in the optimizer's, or ZeRO's, partitions)
        unless `model.dtype` is float32, and gradient checkpointing.
        """
        ds = spec.trainer.deepspeed
        device = torch.device(kwargs["device"]) if kwargs.get("device") is not None else _default_device()
        gpu = {}
        if device.type == "cuda":
            gpu = dict(precision="fp32" if spec.model.dtype == "float32" else "bf16", gradient_checkpointing=True)
        config = kwargs.pop("config", None) or TrainerConfig.from_algorithm(spec.algorithm, **gpu)
        return cls(model_path, config, backend="deepspeed" if ds.enabled else "torch",
                   zero_stage=ds.zero_stage, offload=ds.offload, **kwargs)

    @property
    def module(self) -> torch.nn.Module:
        return self.backend.module

    # ------------------------------------------------------------------ log-probs

    def _logprobs(self, model: torch.nn.Module, batch: Collated, with_entropy: bool = False):
        """Log-probabilities [b, T] of the response tokens (and token entropies, detached)."""
        valid = batch.valid  # [b, T]
        at = batch.predict_at[valid]  # [n] positions predicting the n response tokens, sequence after sequence
        with self.backend.autocast():
            if batch.packed:
                # The LM head runs only where a response token is predicted.
                logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, logits_to_keep=at,
                               use_cache=False, **{VARLEN: batch.varlen}).logits[0]  # [n, V]
            else:
                # Padded: from the first position that predicts a response token on.
                first = int(at.min())
                width = batch.input_ids.shape[1]
                causal = torch.ones(width, width, dtype=torch.bool, device=valid.device).tril()
                attend = batch.attention_mask.bool()[:, None, None, :] & causal  # [b, 1, L, L]
                logits = model(input_ids=batch.input_ids, attention_mask=attend, logits_to_keep=width - first,
                               use_cache=False).logits  # [b, L - first, V]
                rows = torch.arange(valid.shape[0], device=valid.device)[:, None].expand_as(valid)[valid]
                logits = logits[rows, at - first]  # [n, V]
        logp_all = torch.log_softmax(logits.float() / self.config.temperature, dim=-1)
        picked = logp_all.gather(-1, batch.response_ids[valid].unsqueeze(-1)).squeeze(-1)  # [n]
        logp = picked.new_zeros(valid.shape).masked_scatter(valid, picked)  # [b, T], 0 on padding
        if not with_entropy:
            return logp, None
        with torch.no_grad():
            entropy = -torch.special.xlogy(logp_all.exp(), logp_all.exp()).sum(-1)  # 0 log 0 = 0
            entropy = entropy.new_zeros(valid.shape).masked_scatter(valid, entropy)
        return logp, entropy

    def _layout(self, rollouts: Rollouts, indices: list[int], old_logprobs=None) -> Collated:
        lay = pack if self.config.remove_padding else collate
        return lay(rollouts, indices, self.pad_id, old_logprobs=old_logprobs).to(self.device)

    def _micro_batches(self, rollouts: Rollouts, indices: list[int], world_size: int = 1) -> list[list[int]]:
        cfg = self.config
        lengths = [rollouts.prompts[i].numel() + rollouts.responses[i].numel() for i in indices]
        plan = plan_micro_batches(lengths, cfg.micro_batch_size, cfg.micro_batch_tokens, packed=cfg.remove_padding)
        if world_size > 1 and cfg.micro_batch_tokens is not None:
            # Every rank must run as many forward/backward passes as the others
            # (ZeRO-3 gathers parameters in each): the largest count wins.
            count = torch.tensor([len(plan)], device=self.device)
            dist.all_reduce(count, op=dist.ReduceOp.MAX)
            plan = plan_micro_batches(lengths, count=int(count.item()))
        return [[indices[p] for p in micro] for micro in plan]

    @torch.no_grad()
    def compute_logprobs(self, rollouts: Rollouts, reference: bool = False) -> list[torch.Tensor]:
        """Per-rollout log-probs of the response tokens under the current (or reference) policy, on CPU."""
        model = self.reference if reference else self.backend.forward
        if model is None:
            raise ValueError("no reference model: it is loaded only when kl_coef > 0")
        out: list[torch.Tensor | None] = [None] * len(rollouts)
        for micro in self._micro_batches(rollouts, list(range(len(rollouts)))):  # longest first
            logp, _ = self._logprobs(model, self._layout(rollouts, micro))
            for row, i in enumerate(micro):
                out[i] = logp[row, :rollouts.responses[i].numel()].float().cpu()
        return out

    # ------------------------------------------------------------------ update

    def train(self, rollouts: Rollouts) -> dict[str, float]:
        """One RL step's update on `rollouts`; returns metrics.

        Every rank passes the same whole batch: the rollouts are shuffled
        identically on all ranks (same seed) and each rank trains on its share
        (every world-size-th sequence) of each mini-batch.

        Metrics (over all ranks): loss, pg_loss, kl_loss: mean over optimizer steps
        of the aggregated losses; kl: mean k3 KL to the reference per token;
        ppo_kl: mean (old - new) log-prob per token; clip_fraction: share of tokens
        whose clipped branch is active (no gradient); entropy: mean token entropy;
        grad_norm: mean gradient norm before clipping; tokens: the batch's response
        tokens (counted once, not per epoch); tokens_per_second: those tokens over
        this call's wall time (old/reference log-probs included); updates:
        optimizer steps; zero_advantage_fraction: share of the rollouts never run
        through the policy (see `_trained_rows`). kl, ppo_kl, clip_fraction and
        entropy are over the tokens that were run.
        """
        started = time.perf_counter()
        cfg = self.config
        n = len(rollouts)
        rank, world_size = world()
        mini = cfg.mini_batch_size or n
        if n == 0:
            raise ValueError("no rollouts to train on")
        if any(len(range(b, min(b + mini, n))) % world_size for b in range(0, n, mini)):
            # Equal shares keep the ranks' forward/backward passes in lockstep.
            raise ValueError(f"every mini-batch must split evenly over the ranks: {n} rollouts in mini-batches "
                             f"of {mini} over {world_size} ranks")
        old = rollouts.old_logprobs if rollouts.old_logprobs is not None else self.compute_logprobs(rollouts)
        ref = self.compute_logprobs(rollouts, reference=True) if self.reference is not None else None
        stats = torch.zeros(len(_STATS), dtype=torch.float64)
        updates = 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n, generator=self.generator).tolist() if cfg.shuffle else list(range(n))
            for begin in range(0, n, mini):
                stats += self._update(rollouts, order[begin:begin + mini], old, ref, rank, world_size)
                updates += 1
        if world_size > 1:
            dist.all_reduce(stats)
        self.updates += updates
        self.steps += 1
        values = dict(zip(_STATS, stats.tolist()))
        tokens = max(values.pop("tokens_seen"), 1.0)
        metrics = {k: values[k] / updates for k in ("loss", "pg_loss", "kl_loss")}
        metrics["grad_norm"] = values["grad_norm"] / (updates * world_size)  # the same on every rank
        metrics.update({k: values[k] / tokens for k in ("kl", "ppo_kl", "clip_fraction", "entropy")})
        metrics["tokens"] = float(rollouts.num_tokens())
        metrics["updates"] = float(updates)
        metrics["zero_advantage_fraction"] = 1.0 - values["rows_seen"] / (n * cfg.ppo_epochs)
        metrics["tokens_per_second"] = metrics["tokens"] / (time.perf_counter() - started)
        return metrics

    def _update(self, rollouts: Rollouts, indices: list[int], old: list[torch.Tensor],
                ref: list[torch.Tensor] | None, rank: int, world_size: int) -> torch.Tensor:
        """One optimizer step on the mini-batch `indices`; returns this rank's metric sums (`_STATS`)."""
        cfg = self.config
        total_tokens = float(rollouts.num_tokens(indices))  # the aggregate is over the whole mini-batch
        rows = self._trained_rows(rollouts, indices, world_size)
        micros = self._micro_batches(rollouts, rows[rank::world_size], world_size)
        stats = dict.fromkeys(_STATS, 0.0)
        stats["rows_seen"] = float(len(rows)) / world_size
        for k, micro in enumerate(micros):
            self.backend.begin_micro(is_last=k == len(micros) - 1)
            batch = self._layout(rollouts, micro, old_logprobs=old)
            logp, entropy = self._logprobs(self.backend.forward, batch, with_entropy=True)
            pg_tokens, clipped = ppo_clip_loss(logp, batch.old_logprobs, batch.advantages,
                                               cfg.clip_ratio_low, cfg.clip_ratio_high)
            pg = aggregate(pg_tokens, batch.mask, cfg.loss_aggregation)
            kl = torch.zeros((), device=self.device)
            if ref is not None:
                kl_tokens = k3_kl(logp, pad_per_token(ref, micro, batch.mask.shape[1]).to(self.device))
                kl = aggregate(kl_tokens, batch.mask, cfg.loss_aggregation)
            loss = pg + cfg.kl_coef * kl
            # This micro-batch's share of the mini-batch aggregate; times world size
            # because the backends average gradients over ranks.
            weight = aggregation_weight(batch.mask, cfg.loss_aggregation, len(indices), total_tokens) * world_size
            self.backend.backward(loss * weight)
            with torch.no_grad():
                m = batch.mask
                tokens = float(m.sum())
                share = weight / world_size
                stats["loss"] += loss.item() * share
                stats["pg_loss"] += pg.item() * share
                stats["kl_loss"] += kl.item() * share
                stats["tokens_seen"] += tokens
                stats["ppo_kl"] += float(((batch.old_logprobs - logp) * m).sum())
                stats["clip_fraction"] += float((clipped.float() * m).sum())
                stats["entropy"] += float((entropy * m).sum())
                if ref is not None:
                    stats["kl"] += float((kl_tokens * m).sum())
        stats["grad_norm"] = self.backend.step()
        return torch.tensor([stats[k] for k in _STATS], dtype=torch.float64)

    def _trained_rows(self, rollouts: Rollouts, indices: list[int], world_size: int) -> list[int]:
        """The rows of a mini-batch that can move the policy. Without a KL term a rollout whose
        advantage is 0 (its whole group got one reward) has a loss and a gradient of exactly 0,
        so running it through forward and backward is wasted work: in a long-tailed batch the
        groups that all fail are mostly the longest responses. The aggregate's denominators
        stay those of the whole mini-batch, so the update is the same up to float rounding. A
        few zero rows are kept when needed so each rank gets an equal share of at least one
        (every rank steps the optimizer, with zero gradients if nothing else)."""
        if self.config.kl_coef > 0:
            return indices
        live = [i for i in indices if float(rollouts.advantages[i]) != 0.0]
        idle = sorted((i for i in indices if float(rollouts.advantages[i]) == 0.0),
                      key=lambda i: rollouts.responses[i].numel())
        while (len(live) < world_size or len(live) % world_size) and idle:
            live.append(idle.pop(0))
        return live

    # ------------------------------------------------------------------ weights out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The policy's weights under Hugging Face names, on CPU, as in the model's safetensors.

        A tied LM head is left out, as `save_pretrained` does (it is the embedding).
        Under ZeRO-3 with several ranks this gathers: every rank must call it.
        """
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.backend.full_state_dict().items()}
        if getattr(self.model_config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        return state

    def weight_manifest(self):
        """The policy's parameters (HF names, full shapes) grouped into the layers `policy_layers` yields."""
        from tlt.trainer.sync import full_shape, manifest

        return manifest((n, full_shape(p)) for n, p in self.module.named_parameters())

    def policy_layers(self):
        """The policy's parameters one layer at a time: lists of (HF name, whole tensor), as in
        `weight_manifest` (a tied LM head is the embedding: listed once). Under ZeRO-3 each layer
        is gathered while the caller holds it and released after, so every rank must iterate."""
        params = dict(self.module.named_parameters())
        for layer in self.weight_manifest():
            tensors = [params[name] for name, _ in layer]
            with self.backend.gathered(tensors):
                yield [(name, t) for (name, _), t in zip(layer, tensors)]

    def export_hf(self, path: str | Path) -> Path:
        """Writes a Hugging Face folder: config, safetensors, and the source's tokenizer files.

        Every rank calls it (ZeRO-3 gathers the weights); rank 0 writes.
        """
        path = Path(path)
        rank, world_size = world()
        state = {k: v.detach().cpu() for k, v in self.backend.full_state_dict().items()}
        if rank == 0:
            path.mkdir(parents=True, exist_ok=True)
            self.module.save_pretrained(str(path), state_dict=state)
            for name in TOKENIZER_FILES:
                source = self.model_path / name
                if source.is_file() and not (name == "generation_config.json" and (path / name).exists()):
                    shutil.copy2(source, path / name)
        if world_size > 1:
            dist.barrier()
        return path

    # ------------------------------------------------------------------ resume

    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state(), "python": random.getstate(), "trainer": self.generator.get_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def save_checkpoint(self, path: str | Path) -> Path:
        """Policy, optimizer, counters and RNG states into `path`, replacing it atomically.

        Written to a sibling temporary folder first and swapped in by rename, so a
        kill at any moment leaves either the previous checkpoint or the new one.
        With several ranks every rank calls this (ZeRO shards are per rank); rank 0
        owns the folder.
        """
        path = Path(path)
        rank, world_size = world()
        barrier = dist.barrier if world_size > 1 else (lambda: None)
        tmp = path.parent / f".{path.name}.tmp"
        old = path.parent / f".{path.name}.old"
        if rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
            tmp.mkdir()
        barrier()
        self.backend.save(tmp)
        barrier()
        if rank == 0:
            torch.save({"backend": self.backend.name, "updates": self.updates, "steps": self.steps,
                        "world_size": world_size, "config": asdict(self.config), "rng": self._rng_state()},
                       tmp / STATE_FILE)
            shutil.rmtree(old, ignore_errors=True)
            if path.exists():
                path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        barrier()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restores what `save_checkpoint` wrote (same backend; DeepSpeed: same world size)."""
        path = Path(path)
        state = torch.load(path / STATE_FILE, weights_only=False)
        if state["backend"] != self.backend.name:
            raise ValueError(f"checkpoint {path} was written by the {state['backend']} backend, "
                             f"this trainer uses {self.backend.name}")
        problem = resume_problem(state, self.backend.name, world()[1])
        if problem:
            raise ValueError(f"checkpoint {path}: {problem}")
        self.backend.load(path)
        self.updates, self.steps = state["updates"], state["steps"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        self.generator.set_state(rng["trainer"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
