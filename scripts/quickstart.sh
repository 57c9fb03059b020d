#!/usr/bin/env bash
# A newcomer's first command: install tlt into ./.venv and run the quickstart job.
# Extra arguments go to `tlt run` (e.g. --fresh to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
exec .venv/bin/tlt run examples/quickstart.yaml "$@"
