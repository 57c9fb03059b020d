"""Llama/Qwen2-family decoder in plain torch.

Module and parameter names follow Hugging Face (`model.layers.0.self_attn.q_proj.weight`,
`lm_head.weight`, ...), so a checkpoint's safetensors load with `load_state_dict`.

Hidden states handed to the drafter are the last decoder layer's output AFTER the final
RMSNorm (the input of the LM head). That is what EAGLE-1 and vLLM's/SGLang's `eagle`
method use, and it lets the drafter's predicted state go straight into the shared LM head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .kv_cache import AttentionPlan, KVCache


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in at least float32 as HF does, then cast back.
        compute = torch.promote_types(x.dtype, torch.float32)
        h = x.to(compute)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin of shape [B, 1, T, head_dim] for integer positions [B, T]."""
    compute = torch.promote_types(dtype, torch.float32)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device,
                                             dtype=torch.int64).to(compute) / head_dim))
    freqs = positions.to(compute)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        h, d = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=False)

    def forward(self, x, cos, sin, layer: int, cache: KVCache | None, plan: AttentionPlan | None,
                attn_mask: torch.Tensor | None):
        bsz, seq, _ = x.shape
        q = self.q_proj(x).view(bsz, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(bsz, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(bsz, seq, self.num_kv_heads, self.head_dim)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cache is not None:
            keys, values = cache.write_and_read(layer, plan, k.transpose(1, 2), v)
            mask = plan.mask
        else:
            keys, values = k, v.transpose(1, 2)
            mask = attn_mask[:, None] if attn_mask is not None else None
        if mask is None:
            out = F.scaled_dot_product_attention(q, keys, values, is_causal=True,
                                                 enable_gqa=self.num_kv_heads != self.num_heads)
        else:
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                                 enable_gqa=self.num_kv_heads != self.num_heads)
        return self.o_proj(out.transpose(1, 2).reshape(bsz, seq, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=config.mlp_bias)
        self.up_proj = nn.Linear(h, i, bias=config.mlp_bias)
        self.down_proj = nn.Linear(i, h, bias=config.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, input_norm: bool = True):
        super().__init__()
        # EAGLE's drafter layer has no input norm: its input is already the fc projection.
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps) if input_norm else nn.Identity()
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, layer: int, cache=None, plan=None, attn_mask=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layer, cache, plan, attn_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderBody(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLM(nn.Module):
    """The target model. `hidden(...)` gives post-norm last hidden states, `logits(h)` the LM head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = DecoderBody(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def new_cache(self, num_slots: int, capacity: int) -> KVCache:
        c = self.config
        return KVCache(c.num_hidden_layers, num_slots, capacity, c.num_key_value_heads, c.head_dim,
                       dtype=self.dtype, device=self.device)

    def hidden(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
               cache: KVCache | None = None, slots: torch.Tensor | None = None,
               write_offset: int = 0, tail_mask: torch.Tensor | None = None,
               attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Post-norm last hidden states [B, T, H].

        With a cache: new tokens of `slots` attend to the committed prefix and to each
        other through `tail_mask` (default causal); the cache length does not move.
        Without: plain attention over `input_ids`, causal or `attn_mask` [B, T, T].
        """
        bsz, seq = input_ids.shape
        if positions is None:
            positions = torch.arange(seq, device=input_ids.device).expand(bsz, seq)
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        plan = cache.plan(slots, seq, write_offset, tail_mask) if cache is not None else None
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, i, cache, plan, attn_mask)
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def forward(self, input_ids, positions=None, **kwargs) -> torch.Tensor:
        return self.logits(self.hidden(input_ids, positions, **kwargs))
