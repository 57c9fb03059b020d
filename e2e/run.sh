#!/usr/bin/env bash
# End-to-end on a real cluster: build the images, install the chart, run the CPU
# quickstart job to Succeeded (its pods run `tlt worker`), and check pods, active-role
# labels, events, status and the head pod's metrics on 8080.
#
#   e2e/run.sh                 create a kind cluster "tlt-e2e", run, delete it
#   E2E_KEEP=1 e2e/run.sh      keep the cluster and the release afterwards
#   E2E_CONTEXT=current e2e/run.sh
#                              use the current kube context instead of kind; the images
#                              are pushed to $E2E_REGISTRY (required then, e.g.
#                              registry.example.com/ml), which the cluster must pull from
#
# Needs: a Docker daemon (`docker info`), kind (for the default mode), and kubectl/helm
# (scripts/install-tools.sh puts them in .cache/tools/bin; PATH is searched after that).
# Environment: E2E_CLUSTER (kind cluster name, default tlt-e2e), E2E_TAG (image tag,
# default e2e), E2E_TIMEOUT (seconds for the job, default 1800), TORCH_INDEX_URL (build
# argument of the CPU worker image: a CPU-only torch wheel index makes it much smaller).
# The same steps, as a pytest suite: .venv/bin/pytest e2e (see e2e/README.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CLUSTER="${E2E_CLUSTER:-tlt-e2e}"
TAG="${E2E_TAG:-e2e}"
TIMEOUT="${E2E_TIMEOUT:-1800}"
CONTEXT_MODE="${E2E_CONTEXT:-kind}"
REGISTRY="${E2E_REGISTRY:-}"
RELEASE=tlt
RELEASE_NS=tlt-system
JOB_NS=tlt-e2e
JOB=quickstart-cpu
MANIFEST=e2e/manifests/quickstart-cpu.yaml
export PATH="$ROOT/.cache/tools/bin:$PATH"

log() { printf '\033[1m[e2e %s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; diagnostics; exit 1; }

diagnostics() {
    command -v kubectl >/dev/null || return 0
    log "diagnostics"
    kubectl get rlj -A -o wide 2>&1 || true
    kubectl -n "$JOB_NS" get rlj "$JOB" -o yaml 2>&1 | sed -n '/^status:/,$p' || true
    kubectl get pods -A -o wide 2>&1 || true
    kubectl -n "$JOB_NS" get events --sort-by=.lastTimestamp 2>&1 | tail -40 || true
    kubectl -n "$RELEASE_NS" logs deployment/"$RELEASE"-tlt-operator --tail=100 2>&1 || true
    for pod in $(kubectl -n "$JOB_NS" get pods -l tlt.dev/job="$JOB" -o name 2>/dev/null); do
        echo "--- $pod"; kubectl -n "$JOB_NS" logs "$pod" --tail=40 2>&1 || true
    done
}

cleanup() {
    local rc=$?
    if [[ "${E2E_KEEP:-0}" == 1 ]]; then
        log "keeping the cluster and release (E2E_KEEP=1)"
    else
        helm uninstall "$RELEASE" -n "$RELEASE_NS" --wait >/dev/null 2>&1 || true
        kubectl delete namespace "$JOB_NS" --wait=false >/dev/null 2>&1 || true
        if [[ "$CONTEXT_MODE" == kind && "${CREATED_CLUSTER:-0}" == 1 ]]; then
            log "deleting kind cluster $CLUSTER"
            kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
        fi
    fi
    exit "$rc"
}

# ---------------------------------------------------------------- preconditions
[[ -x .cache/tools/bin/helm && -x .cache/tools/bin/kubectl ]] || bash scripts/install-tools.sh
for tool in docker kubectl helm; do
    command -v "$tool" >/dev/null || { log "$tool is not installed"; exit 2; }
done
docker info >/dev/null 2>&1 || { log "no Docker daemon (docker info fails): the images cannot be built"; exit 2; }
if [[ "$CONTEXT_MODE" == kind ]]; then
    command -v kind >/dev/null || { log "kind is not installed (go install sigs.k8s.io/kind@latest, or E2E_CONTEXT=current)"; exit 2; }
elif [[ "$CONTEXT_MODE" == current ]]; then
    [[ -n "$REGISTRY" ]] || { log "E2E_CONTEXT=current needs E2E_REGISTRY (where the cluster pulls the images from)"; exit 2; }
    kubectl cluster-info >/dev/null || { log "the current kube context does not answer"; exit 2; }
else
    log "E2E_CONTEXT must be kind or current"; exit 2
fi
trap cleanup EXIT

# ---------------------------------------------------------------- cluster
if [[ "$CONTEXT_MODE" == kind ]]; then
    if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
        log "reusing kind cluster $CLUSTER"
    else
        log "creating kind cluster $CLUSTER"
        kind create cluster --name "$CLUSTER" --wait 180s
        CREATED_CLUSTER=1
    fi
    kubectl config use-context "kind-$CLUSTER" >/dev/null
fi
log "cluster: $(kubectl config current-context), server $(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"

# ---------------------------------------------------------------- images
prefix="${REGISTRY:+${REGISTRY%/}/}"
OPERATOR_IMAGE="${prefix}tlt/operator:$TAG"
WORKER_IMAGE="${prefix}tlt/worker-cpu:$TAG"
log "building $OPERATOR_IMAGE"
docker build -f images/operator.Dockerfile -t "$OPERATOR_IMAGE" .
log "building $WORKER_IMAGE"
docker build -f images/worker-cpu.Dockerfile ${TORCH_INDEX_URL:+--build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL"} -t "$WORKER_IMAGE" .
if [[ "$CONTEXT_MODE" == kind ]]; then
    log "loading the images into the kind nodes"
    kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$WORKER_IMAGE"
else
    docker push "$OPERATOR_IMAGE"
    docker push "$WORKER_IMAGE"
fi

# ---------------------------------------------------------------- install
log "helm install $RELEASE into $RELEASE_NS"
helm upgrade --install "$RELEASE" helm/tlt-operator -n "$RELEASE_NS" --create-namespace --wait --timeout 5m \
    --set imageRegistry="${REGISTRY}" \
    --set image.tag="$TAG" --set image.pullPolicy=IfNotPresent \
    --set workerImages.cpu.tag="$TAG" --set workerImages.cuda.tag="$TAG"
kubectl -n "$RELEASE_NS" rollout status deployment/"$RELEASE"-tlt-operator --timeout=180s
kubectl get crd reasoningrljobs.tlt.dev >/dev/null || die "the chart did not install the CRD"

# ---------------------------------------------------------------- the job
kubectl create namespace "$JOB_NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f "$MANIFEST"

log "waiting for the job's pods"
deadline=$(( $(date +%s) + 300 ))
until [[ "$(kubectl -n "$JOB_NS" get pods -l tlt.dev/job="$JOB" --no-headers 2>/dev/null | wc -l)" -ge 3 ]]; do
    (( $(date +%s) < deadline )) || die "the operator created no pods for $JOB"
    sleep 3
done
roles="$(kubectl -n "$JOB_NS" get pods -l tlt.dev/job="$JOB" -o jsonpath='{range .items[*]}{.metadata.labels.tlt\.dev/role}{"\n"}{end}' | sort | uniq -c | awk '{print $2"="$1}' | xargs)"
log "pods by role: $roles"
[[ "$roles" == *"rollout=2"* && "$roles" == *"trainer=1"* ]] || die "expected 2 rollout and 1 trainer pods, got: $roles"
owner="$(kubectl -n "$JOB_NS" get pod "$JOB-trainer-0" -o jsonpath='{.metadata.ownerReferences[0].kind}')"
[[ "$owner" == ReasoningRLJob ]] || die "pod $JOB-trainer-0 is not owned by the job (owner: $owner)"

log "waiting for phase Succeeded (up to ${TIMEOUT}s)"
deadline=$(( $(date +%s) + TIMEOUT ))
last=""
roles_seen=""
metrics=""
while :; do
    phase="$(kubectl -n "$JOB_NS" get rlj "$JOB" -o jsonpath='{.status.phase}')"
    step="$(kubectl -n "$JOB_NS" get rlj "$JOB" -o jsonpath='{.status.stepText}')"
    [[ "$phase $step" != "$last" ]] && log "phase=$phase step=$step" && last="$phase $step"
    # The role each worker labels itself with (member pods are deleted when the job ends).
    roles_seen="$(printf '%s\n%s' "$roles_seen" "$(kubectl -n "$JOB_NS" get pods -l tlt.dev/job="$JOB" \
        -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.labels.tlt\.dev/active-role}{"\n"}{end}' 2>/dev/null \
        | grep -v '=$' || true)" | sort -u)"
    # The head pod's /metrics on 8080, through the API server's pod proxy.
    if [[ "$phase" == Running && "$metrics" != *tlt_coordinator_steps_total* ]]; then
        metrics="$(kubectl get --raw "/api/v1/namespaces/$JOB_NS/pods/$JOB-trainer-0:8080/proxy/metrics" 2>/dev/null || true)"
    fi
    [[ "$phase" == Succeeded ]] && break
    [[ "$phase" == Failed || "$phase" == Invalid ]] && die "the job ended $phase"
    (( $(date +%s) < deadline )) || die "the job did not finish in ${TIMEOUT}s"
    sleep 5
done

# ---------------------------------------------------------------- checks
step="$(kubectl -n "$JOB_NS" get rlj "$JOB" -o jsonpath='{.status.step}')"
total="$(kubectl -n "$JOB_NS" get rlj "$JOB" -o jsonpath='{.status.totalSteps}')"
[[ -n "$step" && "$step" == "$total" && "$total" == 3 ]] || die "status.step=$step totalSteps=$total, expected 3/3"
completion="$(kubectl -n "$JOB_NS" get rlj "$JOB" -o jsonpath='{.status.completionTime}')"
[[ -n "$completion" ]] || die "no status.completionTime"
reasons="$(kubectl -n "$JOB_NS" get events --field-selector involvedObject.kind=ReasoningRLJob,involvedObject.name="$JOB" -o jsonpath='{range .items[*]}{.reason}{"\n"}{end}' | sort -u | xargs)"
log "event reasons: $reasons"
for reason in Created StepCompleted Succeeded; do
    [[ " $reasons " == *" $reason "* ]] || die "no $reason event on the job (got: $reasons)"
done
drafter="$(kubectl -n "$JOB_NS" get rlj "$JOB" -o jsonpath='{.status.drafter.version}')"
[[ -n "$drafter" ]] || die "the coordinator wrote no status.drafter"
exit_code="$(kubectl -n "$JOB_NS" get pod "$JOB-trainer-0" -o jsonpath='{.status.containerStatuses[0].state.terminated.exitCode}')"
[[ "$exit_code" == 0 ]] || die "the head pod's tlt worker exited with '$exit_code', expected 0"
# Role labels the workers set themselves (tlt.dev/active-role) next to the fixed ones.
log "active roles seen: $(echo $roles_seen)"
for pod in trainer-0 rollout-0 rollout-1; do
    grep -q "^$JOB-$pod=" <<<"$roles_seen" || die "pod $JOB-$pod never labelled its tlt.dev/active-role"
done
kubectl -n "$JOB_NS" get pods -l tlt.dev/job="$JOB" -L tlt.dev/role,tlt.dev/active-role
[[ "$metrics" == *tlt_coordinator_steps_total* ]] || die "no coordinator metrics on $JOB-trainer-0:8080/metrics"
if kubectl -n "$RELEASE_NS" logs deployment/"$RELEASE"-tlt-operator | grep -Eqi 'forbidden|cannot (create|patch|list|watch)'; then
    die "the operator logged RBAC denials"
fi
log "PASSED: $JOB Succeeded ($step/$total steps)"
