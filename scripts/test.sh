#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs (or reuses) the virtualenv, the
# kubectl/helm tools and the Kubernetes control plane, then runs pytest.
#   bash scripts/test.sh               # everything
#   bash scripts/test.sh -k crd        # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

# kubectl/helm, the control plane build and the Go caches live outside the clone, so a
# second clone on the same machine reuses them (keyed by version and source hash).
export TLT_CACHE_DIR="${TLT_CACHE_DIR:-$HOME/.cache/tlt}"
bash scripts/install.sh
bash scripts/install-tools.sh
bash scripts/build-controlplane.sh

export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -ra --durations=25 "$@"
