"""The Helm chart renders valid, least-privilege, locked-down manifests (no cluster).

helm (v4, from scripts/install-tools.sh) lints and renders the chart over the default
values and non-default ones (namespaced install, monitoring on, managed CRD, a private
registry); kubernetes-validate checks every built-in kind offline against the 1.35
schemas; the prometheus-operator kinds, which it does not know, get a structural check
here. tests/controlplane/test_helm_install.py installs the same chart for real.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tlt
from tlt.dev.tools import ToolMissing, helm_path

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "tlt-operator"
RELEASE = "tlt"
RELEASE_NS = "tlt-system"

SCENARIOS: dict[str, dict] = {
    "default": {},
    "namespaced": {
        "watchNamespaces": ["team-a", "team-b"],
        "rbac": {"readCRDs": False},
    },
    "monitoring": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "kube-prometheus-stack"}},
            "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        },
        "dashboards": {"enabled": True, "namespace": "monitoring"},
    },
    "managed-crds": {
        "crds": {"managed": True},
        "imageRegistry": "registry.example.com/ml/",
        "image": {"digest": "sha256:" + "ab" * 32},
        "workerImages": {"cuda": {"tag": "0.1.0-cu128"}, "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "fullnameOverride": "tlt-op",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "rbac": {"aggregateToDefaultRoles": False},
        "logLevel": "DEBUG",
    },
}

MONITORING_GROUP = "monitoring.coreos.com/v1"
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def helm() -> str:
    try:
        return str(helm_path())
    except ToolMissing as err:  # installed by scripts/test.sh; a missing tool is a failure
        pytest.fail(str(err))


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def write_values(tmp: Path, name: str, values: dict) -> Path:
    path = tmp / f"values-{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def rendered(helm, tmp_path_factory) -> dict[str, list[dict]]:
    """Every scenario rendered once: name -> the list of objects, with one CRD each."""
    tmp = tmp_path_factory.mktemp("helm")
    out = {}
    for name, values in SCENARIOS.items():
        # As documented: a release with a managed CRD is installed with --skip-crds.
        crds = "--skip-crds" if values.get("crds", {}).get("managed") else "--include-crds"
        result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", RELEASE_NS, crds,
                          "--kube-version", "1.35.0", "-f", str(write_values(tmp, name, values)))
        docs = load_docs(result.stdout)
        (tmp / f"{name}.yaml").write_text(result.stdout)
        out[name] = docs
    out["_dir"] = tmp  # type: ignore[assignment]
    return out


def objects(docs, kind=None):
    return [d for d in docs if kind is None or d["kind"] == kind]


def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def operator_container(docs):
    deployment = one(docs, "Deployment")
    return deployment, deployment["spec"]["template"]["spec"]["containers"][0]


def env_of(container) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


# --------------------------------------------------------------------------- lint, schema


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_helm_lint_strict(helm, tmp_path, scenario):
    result = run_helm(helm, "lint", "--strict", str(CHART), "--namespace", RELEASE_NS,
                      "-f", str(write_values(tmp_path, scenario, SCENARIOS[scenario])))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_rendered_builtin_kinds_pass_strict_schema_validation(rendered, scenario, tmp_path):
    assert len(objects(rendered[scenario], "CustomResourceDefinition")) == 1
    builtin = [d for d in rendered[scenario] if d["apiVersion"] != MONITORING_GROUP]
    path = tmp_path / "builtin.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    validator = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    result = subprocess.run([validator, "-k", "1.35", "--strict", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == len(builtin), result.stdout


def test_schema_validation_catches_an_unknown_field(tmp_path):
    """The offline validator really is strict (else the test above proves nothing)."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                                    "spec": {"selector": {}, "template": {}, "strategy": {"type": "Recreate"}, "replica": 1}}))
    validator = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    result = subprocess.run([validator, "-k", "1.35", "--strict", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "replica" in result.stdout


DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")


def check_label_selector(selector, where):
    assert set(selector) <= {"matchLabels", "matchExpressions"}, where
    for key, value in selector.get("matchLabels", {}).items():
        assert isinstance(key, str) and isinstance(value, str), where
    for expr in selector.get("matchExpressions", []):
        assert set(expr) <= {"key", "operator", "values"} and expr["operator"] in {"In", "NotIn", "Exists", "DoesNotExist"}, where
        assert ("values" in expr) == (expr["operator"] in {"In", "NotIn"}), where


def check_relabelings(relabelings, where):
    for r in relabelings:
        assert set(r) <= {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}, where
        assert all(re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", s) for s in r.get("sourceLabels", [])), where
        if "targetLabel" in r:
            assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", r["targetLabel"]), where


def test_monitoring_kinds_are_structurally_valid(rendered):
    """ServiceMonitor and PodMonitor: the fields prometheus-operator's v1 schema has, well typed."""
    docs = rendered["monitoring"]
    service = one(docs, "Service")
    sm = one(docs, "ServiceMonitor")
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(sm["spec"]) <= {"jobLabel", "namespaceSelector", "selector", "endpoints", "targetLabels", "podTargetLabels"}
    check_label_selector(sm["spec"]["selector"], "ServiceMonitor.spec.selector")
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NS]}
    # It selects the metrics Service and scrapes a port the Service has, by name.
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = sm["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings", "scheme"}
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert DURATION.match(endpoint["interval"]) and endpoint["interval"] == "15s"
    assert DURATION.match(endpoint["scrapeTimeout"])
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    pm = one(docs, "PodMonitor")
    assert set(pm["spec"]) <= {"jobLabel", "namespaceSelector", "selector", "podMetricsEndpoints", "podTargetLabels"}
    check_label_selector(pm["spec"]["selector"], "PodMonitor.spec.selector")
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"}
    assert isinstance(endpoint["port"], str) and DURATION.match(endpoint["interval"])
    check_relabelings(endpoint["relabelings"], "PodMonitor relabelings")
    # The dashboard filters worker metrics by job_name: the PodMonitor must produce it.
    assert any(r.get("targetLabel") == "job_name" for r in endpoint["relabelings"])


def test_namespaced_podmonitor_watches_only_the_job_namespaces(helm, tmp_path):
    values = {"watchNamespaces": ["team-a"], "metrics": {"podMonitor": {"enabled": True}}}
    out = run_helm(helm, "template", RELEASE, str(CHART), "-n", RELEASE_NS, "-f", str(write_values(tmp_path, "pm", values)))
    pm = one(load_docs(out.stdout), "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_values_schema_rejects_unsafe_values(helm):
    for args, message in [
        (["--set", "image.tag=latest"], "/image/tag"),
        (["--set", "replicaCount=9"], "/replicaCount"),
        (["--set", "watchNamespaces={Team_A}"], "/watchNamespaces/0"),
        (["--set", "imagee.tag=x"], "imagee"),
    ]:
        result = run_helm(helm, "template", RELEASE, str(CHART), *args, check=False)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)


# --------------------------------------------------------------------------- RBAC

# What the operator does with the API: (apiGroup, resource, verb), from
# operator/tlt_operator/kube.py and kopf (watch, finalizer patches, core events). The
# control-plane test proves these are enough by running the operator with exactly the
# chart's access.
READ = ("get", "list", "watch")
OPERATOR_NEEDS = (
    {("tlt.dev", "reasoningrljobs", v) for v in (*READ, "patch", "delete")}
    | {("tlt.dev", "reasoningrljobs/status", v) for v in ("get", "patch")}
    | {("", "pods", v) for v in (*READ, "create", "patch", "delete")}
    | {("", "configmaps", v) for v in (*READ, "create", "patch")}
    | {("", "services", v) for v in (*READ, "create")}
    | {("", "serviceaccounts", v) for v in (*READ, "create", "patch")}
    | {("", "secrets", "create")}  # each job's Ray token, never read back
    | {("networking.k8s.io", "networkpolicies", v) for v in (*READ, "create", "patch")}
    | {("rbac.authorization.k8s.io", r, v) for r in ("roles", "rolebindings") for v in (*READ, "create", "patch")}
    | {("", "events", v) for v in ("create", "get", "patch")}  # a repeated event raises its count
)

LEASE = {("coordination.k8s.io", "leases", v) for v in ("create", "get", "update")}

DANGEROUS_VERBS = {"*", "escalate", "bind", "impersonate"}
SENSITIVE_RESOURCES = {"secrets", "nodes", "pods/exec", "pods/attach", "pods/portforward", "clusterroles",
                       "clusterrolebindings", "serviceaccounts/token", "persistentvolumes", "*"}


def grants(rules) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def operator_roles(docs):
    """Roles and ClusterRoles bound to the operator's ServiceAccount, with their binding."""
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d["kind"] in ("Role", "ClusterRole")}
    out = []
    for b in docs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == RELEASE_NS for s in b["subjects"]):
            continue
        ref = b["roleRef"]
        ns = b["metadata"].get("namespace") if ref["kind"] == "Role" else None
        out.append((b, roles[(ref["kind"], ns, ref["name"])]))
    return out


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_rbac_has_no_wildcards_and_no_sensitive_access(rendered, scenario):
    for role in objects(rendered[scenario]):
        if role["kind"] not in ("Role", "ClusterRole"):
            continue
        assert "aggregationRule" not in role
        for rule in role["rules"]:
            where = f"{role['kind']} {role['metadata']['name']}: {rule}"
            assert "*" not in rule["apiGroups"] and "*" not in rule["resources"] and "*" not in rule["verbs"], where
            assert not set(rule["verbs"]) & DANGEROUS_VERBS, where
            sensitive = set(rule["resources"]) & SENSITIVE_RESOURCES
            # Secrets may be created (a job's Ray token), never read, listed or watched.
            assert not sensitive or (sensitive == {"secrets"} and rule["verbs"] == ["create"]), where
            assert "nonResourceURLs" not in rule, where


def test_cluster_wide_install_grants_exactly_what_the_operator_needs(rendered):
    docs = rendered["default"]
    bound = operator_roles(docs)
    assert bound and all(b["kind"] == "ClusterRoleBinding" or b["metadata"]["namespace"] == RELEASE_NS for b, _ in bound)
    granted = set().union(*(grants(role["rules"]) for _, role in bound))
    missing = OPERATOR_NEEDS - granted
    assert not missing, f"the operator lacks {sorted(missing)}"
    # Beyond its needs: reading CRDs (so kopf notices a CRD installed or upgraded later) and, in its own
    # namespace only, its leader-election Lease.
    extra = granted - OPERATOR_NEEDS
    assert extra == {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in READ} | LEASE, extra
    assert [r["metadata"]["namespace"] for r in objects(docs, "Role")] == [RELEASE_NS]


def test_namespaced_install_uses_a_role_per_watched_namespace(rendered):
    docs = rendered["namespaced"]
    bound = operator_roles(docs)
    by_ns = {}
    for binding, role in bound:
        if role["kind"] == "Role" and role["metadata"]["namespace"] == RELEASE_NS:
            assert grants(role["rules"]) == LEASE, "in its own namespace: its Lease only"
        elif role["kind"] == "Role":
            assert binding["kind"] == "RoleBinding" and binding["metadata"]["namespace"] == role["metadata"]["namespace"]
            by_ns[role["metadata"]["namespace"]] = grants(role["rules"])
    assert set(by_ns) == {"team-a", "team-b"}
    for ns, granted in by_ns.items():
        assert granted == OPERATOR_NEEDS, (ns, sorted(OPERATOR_NEEDS ^ granted))
    # Cluster-wide it may only list and watch namespaces (kopf checks which exist).
    cluster = set().union(*(grants(role["rules"]) for _, role in bound if role["kind"] == "ClusterRole"))
    assert cluster == {("", "namespaces", v) for v in READ}
    _, container = operator_container(docs)
    assert env_of(container)["TLT_WATCH_NAMESPACES"] == "team-a,team-b"


def test_duplicate_watch_namespaces_render_one_role_each(helm, tmp_path):
    out = run_helm(helm, "template", RELEASE, str(CHART), "-n", RELEASE_NS,
                   "-f", str(write_values(tmp_path, "dup", {"watchNamespaces": ["a", "b", "a"]})))
    docs = load_docs(out.stdout)
    assert sorted(r["metadata"]["namespace"] for r in objects(docs, "Role")) == ["a", "b", RELEASE_NS]


def test_rbac_create_false_renders_no_rbac(helm, tmp_path):
    values = {"rbac": {"create": False, "aggregateToDefaultRoles": False}, "serviceAccount": {"create": False, "name": "byo"}}
    out = run_helm(helm, "template", RELEASE, str(CHART), "-n", RELEASE_NS, "-f", str(write_values(tmp_path, "norbac", values)))
    docs = load_docs(out.stdout)
    assert not [d for d in docs if d["apiVersion"].startswith("rbac.authorization.k8s.io")]
    assert not objects(docs, "ServiceAccount")
    deployment, _ = operator_container(docs)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "byo"


def test_aggregated_roles_let_namespace_users_create_and_read_jobs(rendered):
    docs = rendered["default"]
    edit = one(docs, "ClusterRole", f"{RELEASE}-tlt-operator-edit")
    view = one(docs, "ClusterRole", f"{RELEASE}-tlt-operator-view")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]
    assert {("tlt.dev", "reasoningrljobs", v) for v in ("create", "delete", "get", "list", "watch", "patch", "update")} <= grants(edit["rules"])
    # Users never write the status: that is the operator's and the job pods'.
    assert not {v for g, r, v in grants(edit["rules"]) if r.endswith("/status")} - {"get", "list", "watch"}
    assert {v for _, _, v in grants(view["rules"])} == {"get", "list", "watch"}
    # rbac.aggregateToDefaultRoles=false leaves the built-in roles alone.
    assert not [r for r in objects(rendered["managed-crds"], "ClusterRole") if r["metadata"]["name"].endswith(("-edit", "-view"))]


# --------------------------------------------------------------------------- Deployment


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_operator_pod_is_locked_down(rendered, scenario):
    deployment, container = operator_container(rendered[scenario])
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 1
    # A new pod waits for the Lease while the old one leads, so a rolling update has no gap and no overlap.
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert not sc.get("privileged")
    assert "hostNetwork" not in pod and "hostPID" not in pod
    # A read-only root needs a writable /tmp (the kubernetes client writes certificates).
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # Probes hit the health port the container declares.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "health" and container[probe]["httpGet"]["path"] == "/healthz"
    assert ports["health"] == int(env_of(container)["TLT_HEALTH_PORT"])
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
    # No secret values in the environment.
    for e in container["env"]:
        assert not re.search(r"(?i)token|password|secret|apikey", e["name"]), e


def test_operator_container_runs_the_operator_with_its_settings(rendered):
    deployment, container = operator_container(rendered["default"])
    assert container["command"] == ["python", "-m", "tlt_operator"]
    assert container["image"] == f"tlt/operator:{tlt.__version__}"
    env = env_of(container)
    assert env["TLT_WATCH_NAMESPACES"] == ""
    assert env["TLT_WORKER_IMAGE_CUDA"] == f"tlt/worker-cuda:{tlt.__version__}"
    assert env["TLT_WORKER_IMAGE_CPU"] == f"tlt/worker-cpu:{tlt.__version__}"
    assert env["TLT_METRICS_PORT"] == "9090" and env["TLT_HEALTH_PORT"] == "8080"
    # Every variable the chart sets is one the operator reads (operator/tlt_operator/__main__.py).
    main = (ROOT / "operator" / "tlt_operator" / "__main__.py").read_text() + (ROOT / "operator" / "tlt_operator" / "builders.py").read_text()
    for name in env:
        assert name in main, f"the chart sets {name}, which the operator does not read"
    service = one(rendered["default"], "Service")
    assert service["spec"]["ports"][0]["port"] == 9090 and service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_private_registry_digest_and_scheduling_values_reach_the_pod(rendered):
    deployment, container = operator_container(rendered["managed-crds"])
    pod = deployment["spec"]["template"]["spec"]
    assert container["image"] == "registry.example.com/ml/tlt/operator@sha256:" + "ab" * 32
    env = env_of(container)
    assert env["TLT_WORKER_IMAGE_CUDA"] == "registry.example.com/ml/tlt/worker-cuda:0.1.0-cu128"
    assert env["TLT_WORKER_IMAGE_CPU"] == f"registry.example.com/ml/tlt/worker-cpu:{tlt.__version__}"
    assert env["TLT_WORKER_IMAGE_PULL_POLICY"] == "Always" and env["TLT_LOG_LEVEL"] == "DEBUG"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == SCENARIOS["managed-crds"]["nodeSelector"]
    assert pod["tolerations"] == SCENARIOS["managed-crds"]["tolerations"]
    assert pod["affinity"] == SCENARIOS["managed-crds"]["affinity"]
    assert deployment["metadata"]["name"] == "tlt-op"


def test_chart_version_follows_the_package():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == tlt.__version__
    assert chart["apiVersion"] == "v2" and chart["type"] == "application"


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_object_carries_the_standard_labels(rendered, scenario):
    for obj in rendered[scenario]:
        labels = obj["metadata"].get("labels", {})
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        assert labels.get("app.kubernetes.io/part-of") == "tlt", name
        if obj["kind"] == "CustomResourceDefinition" and scenario != "managed-crds":
            continue  # the crds/ copy is the generated file, not a template
        assert labels.get("app.kubernetes.io/name") == "tlt-operator", name
        assert labels.get("app.kubernetes.io/instance") == RELEASE, name
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", name
        assert labels.get("helm.sh/chart") == f"tlt-operator-{tlt.__version__}", name
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"], name
        elif obj["kind"] not in ("Role", "RoleBinding", "ConfigMap"):
            assert obj["metadata"]["namespace"] == RELEASE_NS, name


def test_service_selects_the_operator_pod_only(rendered):
    docs = rendered["default"]
    deployment, _ = operator_container(docs)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = one(docs, "Service")["spec"]["selector"]
    assert selector.items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == selector
    # Stable across upgrades: no version in the selector (a Deployment selector is immutable).
    assert not any("version" in k or k == "helm.sh/chart" for k in selector)


# --------------------------------------------------------------------------- CRDs


def test_chart_crd_equals_the_root_crd():
    chart_crds = sorted(p.name for p in (CHART / "crds").iterdir())
    root_crds = sorted(p.name for p in (ROOT / "crds").iterdir())
    assert chart_crds == root_crds
    for name in root_crds:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"helm/tlt-operator/crds/{name} differs from crds/{name}: cp crds/{name} helm/tlt-operator/crds/")


def test_managed_crd_is_the_same_crd_with_release_metadata(helm, tmp_path):
    out = run_helm(helm, "template", RELEASE, str(CHART), "-n", RELEASE_NS, "--set", "crds.managed=true",
                   "--show-only", "templates/crd.yaml")
    rendered = yaml.safe_load(out.stdout)
    original = yaml.safe_load((ROOT / "crds" / "reasoningrljob.yaml").read_text())
    assert rendered["spec"] == original["spec"]
    assert rendered["metadata"]["name"] == original["metadata"]["name"]
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert original["metadata"]["labels"].items() <= rendered["metadata"]["labels"].items()
    assert rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    # The schema text is carried verbatim (a YAML round trip would rewrite numbers).
    assert out.stdout.split("\nspec:\n", 1)[1] == (ROOT / "crds" / "reasoningrljob.yaml").read_text().split("\nspec:\n", 1)[1]

    out = run_helm(helm, "template", RELEASE, str(CHART), "--set", "crds.managed=true", "--set", "crds.keep=false",
                   "--show-only", "templates/crd.yaml")
    assert "annotations" not in yaml.safe_load(out.stdout)["metadata"]
    out = run_helm(helm, "template", RELEASE, str(CHART), "--show-only", "templates/crd.yaml", check=False)
    assert out.returncode != 0 and "could not find template" in out.stderr  # only with crds.managed=true


# --------------------------------------------------------------------------- dashboard


DASHBOARD = CHART / "dashboards" / "tlt.json"


def dashboard_exprs(dashboard) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(tlt_[a-z0-9_]+)", expr))


def test_dashboard_is_valid_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]} | {"__interval", "__rate_interval"}
    assert {"datasource", "namespace", "job"} <= variables
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in ("GPUs by role", "Lends and returns", "Step time", "Acceptance length", "Rollout tail"):
        assert wanted in titles
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            assert metric_names(expr), expr
            for var in re.findall(r"\$(\w+)", expr):
                assert var in variables, (panel["title"], var)


# Series the dashboard shows that no code exports yet: the coordinator's step time
# (histogram with label `phase`). An entry must go once the code defines the metric
# (the test below fails then), so the list never hides a typo.
PENDING_METRICS: dict[str, str] = {}


def exported_series(registry) -> set[str]:
    """The series names a registry exposes: counters get _total, histograms _bucket/_sum/_count."""
    out = set()
    for family in registry.collect():
        if family.type == "counter":
            out.add(family.name + "_total")
        elif family.type == "histogram":
            out |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            out.add(family.name)
    return out


def test_dashboard_queries_only_metrics_the_code_exports():
    """Every tlt_* series on the dashboard is exported by tlt.engine.metrics or
    tlt.coordinator.metrics (job pods) or tlt_operator.metrics (the operator), apart from
    the documented pending ones."""
    from prometheus_client import REGISTRY, CollectorRegistry

    import tlt_operator.metrics  # noqa: F401  (registers the operator's metrics in REGISTRY)
    from tlt.engine.metrics import engine_metrics

    from tlt.coordinator.metrics import coordinator_metrics

    engine = CollectorRegistry()
    engine_metrics(engine)
    coordinator_metrics(engine)
    exported = exported_series(engine) | {m for m in exported_series(REGISTRY) if m.startswith("tlt_operator_")}
    pending = set()
    for name, kind in PENDING_METRICS.items():
        pending |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
    assert not pending & exported, "a pending metric is exported now: drop it from PENDING_METRICS"
    sources = "\n".join(p.read_text() for d in ("workers", "operator") for p in (ROOT / d).rglob("*.py"))
    for name in PENDING_METRICS:
        assert f'"{name}"' not in sources, f"{name} is defined in the code now: drop it from PENDING_METRICS"

    used = set().union(*(metric_names(e) for e in dashboard_exprs(json.loads(DASHBOARD.read_text()))))
    assert {m for m in used if m.startswith("tlt_engine_")} and {m for m in used if m.startswith("tlt_operator_")}
    unknown = used - exported - pending
    assert not unknown, f"the dashboard queries series no code exports: {sorted(unknown)}"
    # Each operator metric is on the dashboard.
    operator_families = {m for m in exported if m.startswith("tlt_operator_") and not m.endswith(("_sum", "_count"))}
    assert operator_families <= used, sorted(operator_families - used)


def test_dashboard_configmap_carries_the_dashboard_file(rendered):
    cm = one(rendered["monitoring"], "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert json.loads(cm["data"]["tlt.json"]) == json.loads(DASHBOARD.read_text())
    assert not objects(rendered["default"], "ConfigMap")


def test_helm_package_includes_crds_and_dashboard(helm, tmp_path):
    run_helm(helm, "package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("tlt-operator-*.tgz")
    import tarfile

    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for wanted in ("crds/reasoningrljob.yaml", "dashboards/tlt.json", "values.schema.json", "README.md", "templates/NOTES.txt"):
        assert f"tlt-operator/{wanted}" in names, wanted


def test_two_replicas_elect_a_leader_through_a_lease_in_the_release_namespace(helm, tmp_path):
    out = run_helm(helm, "template", RELEASE, str(CHART), "-n", RELEASE_NS, "--set", "replicaCount=2",
                   "--set", "leaderElection.leaseSeconds=20", "--set", "jobNetworkPolicy.metricsNamespaces={monitoring}")
    docs = load_docs(out.stdout)
    deployment, container = operator_container(docs)
    assert deployment["spec"]["replicas"] == 2
    env = {e["name"]: e for e in container["env"]}
    assert env["TLT_LEADER_ELECTION_ID"]["value"] == f"{RELEASE}-tlt-operator" and env["TLT_LEASE_SECONDS"]["value"] == "20"
    assert env["TLT_OPERATOR_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", "each replica's identity"
    assert env["TLT_METRICS_NAMESPACES"]["value"] == "monitoring"
    lease = one(docs, "Role", f"{RELEASE}-tlt-operator-leader-election")
    assert lease["metadata"]["namespace"] == RELEASE_NS
    named = next(r for r in lease["rules"] if "resourceNames" in r)
    assert named["resourceNames"] == [f"{RELEASE}-tlt-operator"] and named["verbs"] == ["get", "update"]
