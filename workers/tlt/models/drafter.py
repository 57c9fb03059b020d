"""EAGLE-style draft model.

At position t the drafter reads [embed(x_{t+1}); h_t], where h_t is the target's
post-norm last hidden state (see `tlt.models.llama`), projects it with
`fc: 2H -> H` (no bias), runs ONE Llama-style decoder layer without input norm and
without a final norm, and outputs a predicted hidden state for position t+1; the
target's (frozen, shared) LM head turns it into draft logits for x_{t+2}.

Folder layout (what vLLM's and SGLang's `eagle` method load):

- `config.json`: a Llama config (`model_type: llama`,
  `architectures: ["LlamaForCausalLM"]`, `num_hidden_layers: 1`) with the target's
  hidden/intermediate/head sizes and vocabulary. vLLM's SpeculativeConfig with
  `method: "eagle"` wraps it into its EAGLEConfig and runs `EagleLlamaForCausalLM`
  (vllm/model_executor/models/llama_eagle.py); SGLang maps `LlamaForCausalLM` of a
  draft model to `LlamaForCausalLMEagle`. Both use the input-norm-free first layer.
- `model.safetensors` with names WITHOUT a `model.` prefix: `fc.weight`,
  `layers.0.self_attn.{q,k,v,o}_proj.weight`, `layers.0.post_attention_layernorm.weight`,
  `layers.0.mlp.{gate,up,down}_proj.weight`. We also write `fc.bias` as zeros:
  SGLang's fc is `nn.Linear(2H, H)` with a bias (the original EAGLE-1 checkpoints
  carry one), while vLLM's fc has none and skips the name. `embed_tokens`/`lm_head`
  are not written: both servers (at pipeline-parallel size 1) share the target's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ConfigError, ModelConfig
from .kv_cache import KVCache
from .llama import CausalLM, DecoderLayer, RopeTable, rope_cos_sin
from .loading import resolve_dtype
from .varlen import VarlenPlan


def drafter_config(target: ModelConfig) -> ModelConfig:
    """The drafter's config derived from the target's: one bias-free Llama layer."""
    return target.replace(num_hidden_layers=1, model_type="llama", attention_bias=False,
                          mlp_bias=False, extra={})


class EagleDrafter(nn.Module):
    def __init__(self, config: ModelConfig, target: CausalLM | None = None):
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.fc = nn.Linear(2 * h, h, bias=False)
        self.layers = nn.ModuleList([DecoderLayer(config, input_norm=False)])
        self.rope = RopeTable(config.head_dim, config.rope_theta, config.max_position_embeddings)
        self._target: list[CausalLM] = []  # held outside the module tree: shared, frozen, not saved
        if target is not None:
            self.attach(target)

    @classmethod
    def for_target(cls, target: CausalLM, seed: int = 0, init_std: float = 0.02) -> "EagleDrafter":
        """A freshly initialised drafter for `target` (same dtype and device)."""
        drafter = cls(drafter_config(target.config))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in drafter.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * init_std)
        drafter.to(device=target.device, dtype=target.dtype)
        drafter.attach(target)
        return drafter

    def attach(self, target: CausalLM) -> None:
        t = target.config
        c = self.config
        if (t.hidden_size, t.vocab_size) != (c.hidden_size, c.vocab_size):
            raise ConfigError(
                f"drafter (hidden {c.hidden_size}, vocab {c.vocab_size}) does not fit target "
                f"(hidden {t.hidden_size}, vocab {t.vocab_size}); train a drafter for this target"
            )
        self._target = [target]

    @property
    def target(self) -> CausalLM:
        if not self._target:
            raise RuntimeError("drafter has no target attached; call attach(target)")
        return self._target[0]

    def new_cache(self, num_slots: int, capacity: int) -> KVCache:
        c = self.config
        p = self.fc.weight
        return KVCache(1, num_slots, capacity, c.num_key_value_heads, c.head_dim, dtype=p.dtype, device=p.device)

    def features(self, input_ids: torch.Tensor, target_hidden: torch.Tensor,
                 positions: torch.Tensor | None = None, cache: KVCache | None = None,
                 slots: torch.Tensor | None = None, write_offset: int = 0,
                 tail_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | VarlenPlan | None = None,
                 window: int | None = None, read_slots: slice | None = None) -> torch.Tensor:
        """Predicted next hidden states [B, T, H] from tokens x_{t+1} and target states h_t
        (cache arguments as in `CausalLM.hidden`)."""
        bsz, seq = input_ids.shape
        if positions is None:
            positions = torch.arange(seq, device=input_ids.device).expand(bsz, seq)
        emb = F.embedding(input_ids, self.target.model.embed_tokens.weight.detach())
        x = self.fc(torch.cat((emb, target_hidden.to(emb.dtype)), dim=-1))
        if cache is None:
            cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
            plan = None
        else:
            self.rope.reserve(cache.capacity, x.dtype, x.device)
            cos, sin = self.rope(positions)
            plan = cache.plan(slots, seq, write_offset, tail_mask, window, read_slots)
        return self.layers[0](x, cos, sin, 0, cache, plan, attn_mask)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        # the shared head is frozen: gradients reach the drafter, never the target
        return F.linear(features, self.target.lm_head.weight.detach())

    def loss(self, input_ids: torch.Tensor, target_hidden: torch.Tensor,
             loss_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
             positions: torch.Tensor | None = None, ce_weight: float = 0.1) -> torch.Tensor:
        """EAGLE loss on whole sequences: SmoothL1(pred_h, h_next) + ce_weight * CE between
        the LM-head distributions of h_next and pred_h, averaged over `loss_mask[:, 1:]`."""
        pred = self.features(input_ids[:, 1:], target_hidden[:, :-1],
                             positions=None if positions is None else positions[:, :-1],
                             attn_mask=None if attn_mask is None else attn_mask[:, :-1, :-1])
        nxt = target_hidden[:, 1:].to(pred.dtype)
        reg = F.smooth_l1_loss(pred, nxt, reduction="none").mean(-1)
        with torch.no_grad():
            target_p = F.softmax(self.logits(nxt).float(), dim=-1)
        ce = -(target_p * F.log_softmax(self.logits(pred).float(), dim=-1)).sum(-1)
        per_token = reg.float() + ce_weight * ce
        if loss_mask is None:
            return per_token.mean()
        m = loss_mask[:, 1:].to(per_token.dtype)
        return (per_token * m).sum() / m.sum().clamp_min(1.0)

    # ---- folder layout ----
    def save(self, folder: str | Path, dtype: str | torch.dtype | None = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out_dtype = resolve_dtype(dtype) if dtype is not None else self.fc.weight.dtype
        state = {k: v.detach().to("cpu", out_dtype).contiguous() for k, v in self.state_dict().items()}
        state["fc.bias"] = torch.zeros(self.config.hidden_size, dtype=out_dtype)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        cfg = self.config.to_hf_dict()
        cfg["architectures"] = ["LlamaForCausalLM"]
        cfg["torch_dtype"] = str(out_dtype).removeprefix("torch.")
        (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, target: CausalLM) -> "EagleDrafter":
        folder = Path(folder)
        cfg_path, weights = folder / "config.json", folder / "model.safetensors"
        if not cfg_path.is_file() or not weights.is_file():
            raise ConfigError(f"{folder} is not a drafter folder (needs config.json and model.safetensors)")
        drafter = cls(ModelConfig.from_hf_dict(json.loads(cfg_path.read_text())))
        drafter.load_state(load_file(str(weights)))
        drafter.to(device=target.device, dtype=target.dtype)
        drafter.attach(target)
        return drafter.eval()

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy weights in place (also the runtime drafter-update path)."""
        state = dict(state)
        bias = state.pop("fc.bias", None)
        if bias is not None and bool(bias.abs().max() > 0):
            raise ConfigError("drafter checkpoint has a non-zero fc.bias; tlt drafters use fc without bias")
        for k in [k for k in state if k.startswith(("embed_tokens.", "lm_head."))]:
            state.pop(k)  # shared with the target
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state))
        unknown = sorted(set(state) - set(params))
        if missing or unknown:
            raise ConfigError(f"drafter weights do not match: missing {missing[:4]}, unexpected {unknown[:4]}")
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v.to(params[k].device, params[k].dtype))
