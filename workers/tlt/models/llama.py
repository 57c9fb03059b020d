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
from .varlen import VarlenPlan, packed_attention


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One fused kernel that normalises in at least float32 (as HF does); in float32 and
        # float64 it equals HF's, in bfloat16 it rounds once where HF rounds twice.
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos and sign-folded sin, [B, T, 1, head_dim], for integer positions [B, T]: `sin`
    is negated on the first half, so `apply_rope` needs one roll where HF's
    rotate_half needs two slices, a negation and a cat (bitwise the same result)."""
    compute = torch.promote_types(dtype, torch.float32)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device,
                                             dtype=torch.int64).to(compute) / head_dim))
    freqs = positions.to(compute)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    sin = emb.sin()
    half = head_dim // 2
    sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return emb.cos().to(dtype)[:, :, None], sin.to(dtype)[:, :, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's rotary embedding x*cos + rotate_half(x)*sin, with `rope_cos_sin`'s folded sin."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


class RopeTable:
    """cos/sin of every position up to a length, computed once by `rope_cos_sin` (so a
    lookup is bitwise what the per-call computation gives) and grown on demand. Decode
    and verify forwards then cost two gathers instead of ten small kernels."""

    def __init__(self, head_dim: int, theta: float, max_positions: int = 0):
        self.head_dim, self.theta, self.max_positions = head_dim, theta, max_positions
        self.cos: torch.Tensor | None = None  # [L, head_dim]
        self.sin: torch.Tensor | None = None

    def reserve(self, length: int, dtype: torch.dtype, device: torch.device) -> None:
        """Make the table cover positions < length (call outside CUDA graph capture)."""
        if self.cos is not None and self.cos.shape[0] >= length and self.cos.dtype == dtype \
                and self.cos.device == device:
            return
        # sized for the model's positions at once: a table that moves would strand CUDA graphs reading it
        size = max(length, 2 * self.cos.shape[0] if self.cos is not None else 0, self.max_positions, 256)
        pos = torch.arange(size, device=device)[None]
        cos, sin = rope_cos_sin(pos, self.head_dim, self.theta, dtype)
        self.cos, self.sin = cos[0, :, 0], sin[0, :, 0]

    def __call__(self, positions: torch.Tensor):
        """cos/sin [B, T, 1, head_dim] for positions [B, T] (covered by `reserve`)."""
        return self.cos[positions][:, :, None], self.sin[positions][:, :, None]


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
                attn_mask: torch.Tensor | VarlenPlan | None):
        """`attn_mask`: [B, T, T] bool (True = may attend), or the `VarlenPlan` of a packed row (B = 1)."""
        bsz, seq, _ = x.shape
        # [B, T, heads, D] until attention: rope and the cache write need no transposes
        q = apply_rope(self.q_proj(x).view(bsz, seq, self.num_heads, self.head_dim), cos, sin).transpose(1, 2)
        k = apply_rope(self.k_proj(x).view(bsz, seq, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(bsz, seq, self.num_kv_heads, self.head_dim)
        if cache is not None:
            keys, values = cache.write_and_read(layer, plan, k, v)
            mask = plan.mask
        elif isinstance(attn_mask, VarlenPlan):
            out = packed_attention(q[0], k[0].transpose(0, 1), v[0].transpose(0, 1), attn_mask)  # [T, heads, D]
            return self.o_proj(out.reshape(1, seq, self.num_heads * self.head_dim))
        else:
            keys, values = k.transpose(1, 2), v.transpose(1, 2)
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
        self.rope = RopeTable(config.head_dim, config.rope_theta, config.max_position_embeddings)
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
               attn_mask: torch.Tensor | VarlenPlan | None = None, window: int | None = None,
               read_slots: slice | None = None) -> torch.Tensor:
        """Post-norm last hidden states [B, T, H].

        With a cache: new tokens of `slots` attend to the committed prefix and to each
        other through `tail_mask` (default causal); the cache length does not move.
        `window` (>= every row's committed length + write_offset + T) fixes how many
        cache positions attention reads, so the forward has static shapes and no host
        read; `read_slots`, a slice equal to `slots`, reads the cache as a view.
        Without: plain attention over `input_ids`, causal, or `attn_mask` [B, T, T], or per
        sequence of a packed row (`attn_mask` a `VarlenPlan`, B = 1).
        """
        bsz, seq = input_ids.shape
        if positions is None:
            positions = torch.arange(seq, device=input_ids.device).expand(bsz, seq)
        x = self.model.embed_tokens(input_ids)
        if cache is None:
            cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
            plan = None
        else:  # cached forwards (the engine's hot path): table lookups, no host reads with a window
            self.rope.reserve(cache.capacity, x.dtype, x.device)
            cos, sin = self.rope(positions)
            plan = cache.plan(slots, seq, write_offset, tail_mask, window, read_slots)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, i, cache, plan, attn_mask)
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def forward(self, input_ids, positions=None, **kwargs) -> torch.Tensor:
        return self.logits(self.hidden(input_ids, positions, **kwargs))
