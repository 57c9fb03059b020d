#!/usr/bin/env bash
# Build the test control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, etcd, kwok) from the Go module in e2e/controlplane/, once.
#
#   scripts/build-controlplane.sh            build, or reuse the build that is there
#   scripts/build-controlplane.sh --force    rebuild even if the build is there
#   scripts/build-controlplane.sh --print-bin  only print the bin folder (no build)
#
# Output: .cache/controlplane/<key>/bin/tlt-controlplane, one multi-call binary,
# and one symlink per component (kube-apiserver, etcd, ...). <key> is the
# Kubernetes version plus a hash of go.mod, go.sum and the Go sources, so any
# change builds anew; workers/tlt/dev/cluster.py computes the same key.
#
# Environment:
#   TLT_CACHE_DIR   cache root (default: <repo>/.cache); the Go module and build
#                   caches live under it too (go/mod, go/build), so a fresh clone
#                   builds cold unless this points at a folder that survives.
#   GOMODCACHE, GOCACHE   override the Go caches (defaults under TLT_CACHE_DIR/go).
#   GOTOOLCHAIN, GOPROXY  passed through to go.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/e2e/controlplane"
CACHE="${TLT_CACHE_DIR:-$ROOT/.cache}"
FORCE=0
PRINT_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --print-bin) PRINT_ONLY=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "build-controlplane: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { printf '[build-controlplane %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

command -v go >/dev/null || { log "go is not on PATH (Go >= 1.26 is needed)"; exit 1; }

K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$SRC/go.mod")"
[[ -n "$K8S_VERSION" ]] || { log "no k8s.io/kubernetes requirement in $SRC/go.mod"; exit 1; }

# The key: version + hash of the inputs. Same recipe as tlt.dev.cluster.build_key():
# sha256 of the lines "<sha256>  <path>" (sha256sum's format) for go.mod, go.sum and
# every .go file under cmd/, in sorted order, relative to e2e/controlplane.
inputs() { (cd "$SRC" && { echo go.mod; echo go.sum; find cmd -name '*.go' | LC_ALL=C sort; }); }
HASH="$(cd "$SRC" && inputs | xargs sha256sum | sha256sum | cut -c1-12)"
KEY="$K8S_VERSION-$HASH"
DEST="$CACHE/controlplane/$KEY"
BIN="$DEST/bin"

if [[ "$PRINT_ONLY" == 1 ]]; then
    echo "$BIN"
    exit 0
fi

COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)

if [[ "$FORCE" == 0 && -x "$BIN/tlt-controlplane" ]] && "$BIN/tlt-controlplane" version >/dev/null 2>&1; then
    log "reusing $BIN ($("$BIN/tlt-controlplane" version))"
    exit 0
fi

export GOMODCACHE="${GOMODCACHE:-$CACHE/go/mod}"
export GOCACHE="${GOCACHE:-$CACHE/go/build}"
export GOFLAGS="-modcacherw -mod=readonly -buildvcs=false"
export CGO_ENABLED=0
mkdir -p "$GOMODCACHE" "$GOCACHE" "$DEST"

START=$(date +%s)
log "building the control plane $KEY (Kubernetes $K8S_VERSION) into $BIN"
log "go: $(go version); $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
log "GOMODCACHE=$GOMODCACHE GOCACHE=$GOCACHE"

log "step 1/3: downloading modules (k8s.io/kubernetes is about 100 MB)"
T0=$(date +%s)
(cd "$SRC" && go mod download)
log "step 1/3 done in $(( $(date +%s) - T0 ))s"

TOTAL="$(cd "$SRC" && go list -deps ./cmd/tlt-controlplane | wc -l)"
log "step 2/3: compiling up to $TOTAL packages (CGO_ENABLED=0, -trimpath; cached packages are skipped)"

# Version stamps, as Kubernetes' hack/lib/version.sh sets them, so that
# `kubectl version` and the apiserver report the real version.
MAJOR="${K8S_VERSION#v}"; MAJOR="${MAJOR%%.*}"
MINOR="${K8S_VERSION#v*.}"; MINOR="${MINOR%%.*}"
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$MAJOR -X $pkg.gitMinor=$MINOR"
    LDFLAGS+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$BUILD_DATE"
done

TMP="$DEST/bin.tmp.$$"
rm -rf "$TMP"
mkdir -p "$TMP"
T0=$(date +%s)
# `go build -v` names each package as it compiles it: count them for progress.
set +e
(cd "$SRC" && go build -v -trimpath -ldflags="$LDFLAGS" -o "$TMP/tlt-controlplane" ./cmd/tlt-controlplane) 2>&1 | {
    n=0; last=-100; SECONDS=0
    while IFS= read -r line; do
        if [[ "$line" =~ ^[A-Za-z0-9_./~-]+$ ]]; then
            n=$((n + 1))
            if (( SECONDS - last >= 20 )); then
                printf '[build-controlplane] %4ds  compiled %d of up to %d packages: %s\n' "$SECONDS" "$n" "$TOTAL" "$line" >&2
                last=$SECONDS
            fi
        else
            printf '%s\n' "$line" >&2
        fi
    done
    printf '[build-controlplane] %4ds  compiled %d packages (the others came from the build cache)\n' "$SECONDS" "$n" >&2
}
RC=${PIPESTATUS[0]}
set -e
if [[ "$RC" != 0 ]]; then
    rm -rf "$TMP"
    log "go build failed (exit $RC)"
    exit "$RC"
fi
log "step 2/3 done in $(( $(date +%s) - T0 ))s"

log "step 3/3: installing into $BIN"
for c in "${COMPONENTS[@]}"; do
    ln -sf tlt-controlplane "$TMP/$c"
done
"$TMP/tlt-controlplane" version >/dev/null
rm -rf "$BIN"
mv "$TMP" "$BIN"
# Keep one build: remove the other keys (each is ~150 MB).
for old in "$CACHE"/controlplane/*/; do
    old="${old%/}"
    [[ "$old" == "$DEST" || ! -d "$old/bin" ]] && continue
    log "removing the old build $old"
    rm -rf "$old"
done

END=$(date +%s)
log "built $("$BIN/tlt-controlplane" version) in $(( END - START ))s: $BIN ($(du -sh "$BIN/tlt-controlplane" | cut -f1))"
