"""Hugging Face's side of packed attention: `attn_implementation="tlt_varlen"`.

The plan (`tlt.models.varlen`) travels as the `tlt_varlen` keyword argument of the
model's forward, which HF hands to every attention call. Without a plan it is plain
SDPA (single unpadded sequences, or an explicit 4-D mask).
"""

from __future__ import annotations

from tlt.models.varlen import VarlenPlan, packed_attention, plan

__all__ = ["NAME", "VarlenPlan", "plan", "register", "varlen_attention"]

NAME = "tlt_varlen"


def varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """HF attention interface: query [1, heads, N, D], key/value [1, kv_heads, N, D] -> ([1, N, heads, D], None)."""
    varlen: VarlenPlan | None = kwargs.get(NAME)
    if varlen is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return packed_attention(query[0], key[0], value[0], varlen, scale=scaling, dropout=dropout).unsqueeze(0), None


def register() -> str:
    """Make `attn_implementation="tlt_varlen"` known to transformers (idempotent); returns the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_attention)
    return NAME
