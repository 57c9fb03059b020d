"""Llama/Qwen2-family decoder (target) and the EAGLE-style draft model, in plain torch."""

from .config import ConfigError, ModelConfig
from .kv_cache import KVCache
from .llama import CausalLM
from .loading import load_model, load_weights, random_model, read_config, resolve_dtype, save_model

__all__ = ["CausalLM", "ConfigError", "KVCache", "ModelConfig", "load_model", "load_weights",
           "random_model", "read_config", "resolve_dtype", "save_model"]
