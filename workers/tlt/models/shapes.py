"""Named model shapes (config.json values of public checkpoints) with random weights
built directly on a device: benchmarks of the engine at real sizes without a download."""

from __future__ import annotations

import torch

from .config import ConfigError, ModelConfig
from .llama import CausalLM
from .loading import resolve_dtype

SHAPES: dict[str, ModelConfig] = {
    # Qwen/Qwen2.5-7B-Instruct config.json
    "qwen2.5-7b": ModelConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                              num_attention_heads=28, num_key_value_heads=4, model_type="qwen2", rope_theta=1e6,
                              rms_norm_eps=1e-6, max_position_embeddings=32768),
    # Qwen/Qwen2.5-1.5B-Instruct
    "qwen2.5-1.5b": ModelConfig(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                num_attention_heads=12, num_key_value_heads=2, model_type="qwen2", rope_theta=1e6,
                                tie_word_embeddings=True, max_position_embeddings=32768),
    # Qwen/Qwen2.5-0.5B-Instruct
    "qwen2.5-0.5b": ModelConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                num_attention_heads=14, num_key_value_heads=2, model_type="qwen2", rope_theta=1e6,
                                tie_word_embeddings=True, max_position_embeddings=32768),
    # meta-llama/Llama-3.1-8B (its llama3 rope scaling changes no cost and is left out)
    "llama3.1-8b": ModelConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                               num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0, rms_norm_eps=1e-5,
                               max_position_embeddings=131072),
    # the built-in tiny-arith model's shape: CPU smoke runs
    "tiny": ModelConfig(vocab_size=200, hidden_size=128, intermediate_size=352, num_hidden_layers=8,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                        max_position_embeddings=4096),
}


def shape_config(name: str) -> ModelConfig:
    if name not in SHAPES:
        raise ConfigError(f"unknown model shape {name!r}; known shapes: {', '.join(SHAPES)}")
    return SHAPES[name]


def random_on_device(config: ModelConfig, device: str | torch.device = "cpu",
                     dtype: str | torch.dtype = torch.bfloat16, seed: int = 0, init_std: float = 0.02) -> CausalLM:
    """A model with random normal(0, init_std) weights (norms at 1), allocated and drawn
    on `device` in `dtype` (no host copy: a 7B shape is ready in seconds on a GPU)."""
    with torch.device("meta"):
        model = CausalLM(config)
    model = model.to(dtype=resolve_dtype(dtype)).to_empty(device=device)
    model.tie_weights()
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, init_std, generator=gen)
    return model.eval()
