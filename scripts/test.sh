#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs (or reuses) the virtualenv, the
# kubectl/helm tools and the Kubernetes control plane, then runs pytest.
#   bash scripts/test.sh               # everything
#   bash scripts/test.sh -k crd        # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh
[ -f scripts/install-tools.sh ] && bash scripts/install-tools.sh
[ -f scripts/build-controlplane.sh ] && bash scripts/build-controlplane.sh

export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -ra "$@"
