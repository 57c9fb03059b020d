"""Where the development tools live: the cache folder, kubectl, helm.

kubectl v1.35 and helm v4 are installed by `scripts/install-tools.sh` into
`.cache/tools/bin` (the machine's own kubectl, if any, may be outside the version
skew window of the 1.35 control plane, so it is never picked up from PATH).
"""

from __future__ import annotations

import os
from pathlib import Path


class ToolMissing(RuntimeError):
    """A development tool or build output is not there; the message says how to get it."""


def repo_root() -> Path:
    """The checkout this package was loaded from (workers/tlt/dev/ -> repo root)."""
    return Path(__file__).resolve().parents[3]


def cache_dir() -> Path:
    """The cache root: $TLT_CACHE_DIR, or `<repo>/.cache` (git-ignored)."""
    env = os.environ.get("TLT_CACHE_DIR")
    return Path(env).resolve() if env else repo_root() / ".cache"


def tools_bin_dir() -> Path:
    return cache_dir() / "tools" / "bin"


def _tool(name: str, env: str) -> Path:
    override = os.environ.get(env)
    path = Path(override) if override else tools_bin_dir() / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ToolMissing(
            f"{name} not found at {path}: run scripts/install-tools.sh "
            f"(installs kubectl v1.35 and helm v4 into {tools_bin_dir()}), or set {env}"
        )
    return path


def kubectl_path() -> Path:
    """kubectl v1.35 from `.cache/tools/bin` ($TLT_KUBECTL overrides)."""
    return _tool("kubectl", "TLT_KUBECTL")


def helm_path() -> Path:
    """helm v4 from `.cache/tools/bin` ($TLT_HELM overrides)."""
    return _tool("helm", "TLT_HELM")
