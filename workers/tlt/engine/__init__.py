"""Rollout engines: the torch reference engine and the vLLM backend, one interface."""

from .torch_engine import TorchEngine
from .types import Counters, Request, RequestError, Result

__all__ = ["Counters", "Request", "RequestError", "Result", "TorchEngine"]
