"""Test tiers and what is real in each.

- unit (default): pure code, no API server, no Ray cluster unless a test starts one.
- kmock (tests named *_kmock*): kopf and the kubernetes client talk over real HTTP to
  kmock, an in-process Kubernetes API emulator. Fast; no schema validation, no GC.
- controlplane (tests/controlplane/, marker `controlplane`): the real kube-apiserver,
  etcd, controller-manager, scheduler and kwok fake GPU nodes, built from upstream Go
  modules by scripts/build-controlplane.sh. Nothing about the API is mocked there.
- e2e/ (not collected here): a real cluster with images, opt-in.

Nothing here talks to the network: Ray runs locally, models are built-in or tiny.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Ray writes an auth token under $HOME/.ray and phones home unless told not to.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def micro_model() -> Path:
    """The built-in micro model: bootstrapped in seconds, then cached in $TLT_CACHE_DIR/models as
    a user's would be. Tests use it, not the quickstart's tiny-arith, whose every forward
    costs far more. Control-plane jobs' pods read it from this path."""
    from tlt.tasks.bootstrap import ensure_base_model

    return ensure_base_model("micro-arith", progress=False)
