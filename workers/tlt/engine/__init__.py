"""Rollout engines: the torch reference engine and the vLLM backend, one interface.

Names are imported on first use, so `tlt --help` and the CLI's command modules in
this package do not pay for importing torch.
"""

import importlib

_EXPORTS = {
    "TorchEngine": ".torch_engine",
    "Counters": ".types",
    "Request": ".types",
    "RequestError": ".types",
    "Result": ".types",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
