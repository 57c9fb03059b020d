#!/usr/bin/env bash
# Install tlt and everything its tests need into ./.venv (idempotent, cached).
#   bash scripts/install.sh            # CPU install (torch 2.13.0 first, then tlt[dev])
#   TLT_VENV=/path bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${TLT_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0

log() { printf '\033[1m[install]\033[0m %s\n' "$*" >&2; }

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: tlt needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# Skip the pip work when nothing that decides the install has changed.
stamp="$VENV/.tlt-install-stamp"
want=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c 'import tlt, torch' 2>/dev/null; then
  log "up to date ($VENV)"
  exit 0
fi

# torch first and pinned, so no later package pulls another build.
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION (about 1-5 GB; this is the slow part)"
  "${PIP[@]}" install --progress-bar on "torch==$TORCH_VERSION"
fi

log "installing tlt and its dependencies (editable, with test tools)"
# DeepSpeed's ops are compiled lazily on first use; nothing CUDA is built here.
DS_BUILD_OPS=0 "${PIP[@]}" install --progress-bar on -e ".[dev]" "torch==$TORCH_VERSION"

echo "$want" > "$stamp"
log "done in $(( $(date +%s) - start ))s: $("$VENV/bin/tlt" --version)"
