#!/usr/bin/env bash
# A newcomer's first command: install tlt into ./.venv and run the quickstart job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if .venv/bin/tlt run --help >/dev/null 2>&1; then
  exec .venv/bin/tlt run examples/quickstart.yaml "$@"
fi
# Until the embedded runner lands, check the job instead of running it.
exec .venv/bin/tlt validate examples/quickstart.yaml
