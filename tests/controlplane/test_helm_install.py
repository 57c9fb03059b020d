"""The chart on a real control plane: helm install, upgrade and uninstall, and the
operator running with exactly the chart's RBAC.

The kube-apiserver, controller-manager (garbage collector, RBAC aggregation, service
account tokens) and kwok nodes are real (tests/controlplane/conftest.py); nothing is
mocked. The operator runs here as a subprocess (`python -m tlt_operator`), logged in
with a token of the chart's ServiceAccount from the TokenRequest API, so every API call
it makes is authorized by the ClusterRole or Roles the chart created: if the chart
lacks a permission, the job's children are not created and the test fails. kwok marks
the job's pods Running on fake GPU nodes; no container runs.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tlt.dev import pods as dev_pods
from tlt.dev.tools import ToolMissing, helm_path, kubectl_path
from tlt_operator.local import OperatorProcess
from waiting import wait_for

pytestmark = [pytest.mark.slow]  # conftest.py marks everything here `controlplane`

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tlt-operator"
CRD = "reasoningrljobs.tlt.dev"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def helm() -> str:
    try:
        return str(helm_path())
    except ToolMissing as err:  # scripts/test.sh installs it; missing is a failure
        pytest.fail(str(err))


class Kube:
    """kubectl and helm against the test control plane, as its admin."""

    def __init__(self, cluster, helm: str):
        self.cluster = cluster
        self.helm_bin = helm

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        return self.cluster.kubectl(*args, check=check, input=input)

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def exists(self, *args: str) -> bool:
        return self.kubectl("get", *args, check=False).returncode == 0

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [self.helm_bin, "--kubeconfig", str(self.cluster.kubeconfig), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def can_i(self, verb: str, resource: str, namespace: str, who: str) -> bool:
        """`kubectl auth can-i` as `who`; "resource/sub" asks about a subresource."""
        resource, _, sub = resource.partition("/")
        args = ["auth", "can-i", verb, resource, f"--as={who}"]
        args += ["-n", namespace] if namespace else []
        args += [f"--subresource={sub}"] if sub else []
        out = self.kubectl(*args, check=False)
        assert out.stdout.strip() in ("yes", "no"), out.stderr
        return out.stdout.strip() == "yes"


@pytest.fixture(scope="module")
def kube(controlplane, helm) -> Kube:
    return Kube(controlplane, helm)


def service_account_kubeconfig(kube: Kube, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig that logs in as the ServiceAccount, with a TokenRequest token."""
    return dev_pods.service_account_kubeconfig(kube.cluster.kubeconfig, namespace, sa, path, kubectl=str(kubectl_path()))


def start_operator(kubeconfig: Path, namespaces: list[str], log_path: Path, release: str = "tlt",
                   release_ns: str = "helm-tlt-system", env: dict | None = None) -> OperatorProcess:
    """`python -m tlt_operator` logged in only through `kubeconfig`, serving `namespaces` (none: all), with the
    environment the chart's Deployment gives it (its namespace, its Lease's name)."""
    env = {
        "TLT_RESYNC_SECONDS": "3",
        "TLT_WORKER_IMAGE_CUDA": "registry.test/tlt/worker-cuda:cp",
        "TLT_WORKER_IMAGE_CPU": "registry.test/tlt/worker-cpu:cp",
        "TLT_OPERATOR_NAMESPACE": release_ns,
        "TLT_LEADER_ELECTION_ID": f"{release}-tlt-operator",
        **(env or {}),
    }
    return OperatorProcess(kubeconfig, log_path, env, namespaces=namespaces, isolated=True).start(timeout=60)


def gpu_job(name: str, namespace: str) -> dict:
    """A small GPU job: 1 trainer and 2 rollout pods of one fake GPU each."""
    return {
        "apiVersion": "tlt.dev/v1alpha1", "kind": "ReasoningRLJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"builtin": "tiny-arith"},
            "task": {"name": "arith"},
            "algorithm": {"steps": 4, "promptsPerStep": 8, "groupSize": 4},
            "rollout": {"replicas": 2, "gpusPerReplica": 1, "engine": "vllm"},
            "trainer": {"replicas": 1, "gpusPerReplica": 1},
        },
    }


def assert_reconciled(kube: Kube, namespace: str, name: str, operator: OperatorProcess) -> dict:
    """The operator, with only the chart's RBAC, created every child and wrote the status."""
    def three_pods():
        pods = kube.get("pods", "-n", namespace, "-l", f"tlt.dev/job={name}")["items"]
        return pods if len(pods) == 3 else None

    pods = wait_for(three_pods, 90, what=f"the 3 pods of {namespace}/{name}")
    assert sorted(p["metadata"]["labels"]["tlt.dev/role"] for p in pods) == ["rollout", "rollout", "trainer"]
    for pod in pods:
        assert pod["metadata"]["ownerReferences"][0]["name"] == name
        assert pod["spec"]["containers"][0]["image"] == "registry.test/tlt/worker-cuda:cp"  # from the operator's env
    for kind, count in (("serviceaccount", 3), ("role", 3), ("rolebinding", 3), ("configmap", 2), ("service", 1),
                        ("networkpolicy", 1)):
        items = kube.get(kind, "-n", namespace, "-l", f"tlt.dev/job={name}")["items"]
        assert len(items) == count, (kind, [i["metadata"]["name"] for i in items])  # one identity per pod
    # The pods' Roles hold verbs the operator could grant only because it has them.
    head = kube.get("role", "-n", namespace, f"{name}-trainer-0")
    assert any("configmaps" in r["resources"] and "patch" in r["verbs"] for r in head["rules"])
    assert any("pods" in r["resources"] and "patch" in r["verbs"] for r in head["rules"])
    def written_status():
        status = kube.get("reasoningrljob", "-n", namespace, name).get("status") or {}
        return status if status.get("phase") in ("Created", "Running") and status.get("totalSteps") == 4 else None

    status = wait_for(written_status, 90, what="the job's status")
    events = kube.get("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]
    assert "Created" in {e["reason"] for e in events}, [e["reason"] for e in events]
    logs = operator.logs()
    assert "Forbidden" not in logs, logs[-3000:]
    return status


# --------------------------------------------------------------------------- tests

# Names of this module only, so that other control-plane tests sharing the cluster
# are not disturbed.
RELEASE, RELEASE_NS = "tlt", "helm-tlt-system"
RESEARCH, TEAM_X, TEAM_A, TEAM_B = "helm-research", "helm-team-x", "helm-team-a", "helm-team-b"
SA = f"system:serviceaccount:{RELEASE_NS}:{RELEASE}-tlt-operator"


@pytest.fixture(scope="module")
def release(kube: Kube) -> str:
    """The cluster-wide release, installed once; the last test uninstalls it."""
    result = kube.helm("install", RELEASE, str(CHART), "-n", RELEASE_NS, "--create-namespace", "--wait", "--timeout", "3m")
    yield result.stdout
    kube.helm("uninstall", RELEASE, "-n", RELEASE_NS, "--wait", check=False)


def test_install_cluster_wide(kube: Kube, release: str):
    assert "STATUS: deployed" in release
    assert "It handles ReasoningRLJobs in every namespace." in release  # NOTES.txt
    crd = kube.get("crd", CRD)
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}.get("Established") == "True"
    deployment = kube.get("deployment", "-n", RELEASE_NS, f"{RELEASE}-tlt-operator")
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["status"].get("readyReplicas") == 1  # kwok runs the pod on a fake node
    # The operator's rights, as the API server sees them.
    assert kube.can_i("create", "pods", "default", SA)
    assert kube.can_i("patch", "reasoningrljobs.tlt.dev/status", "default", SA)
    assert kube.can_i("create", "roles.rbac.authorization.k8s.io", "default", SA)
    for verb, resource in [("get", "secrets"), ("list", "secrets"), ("create", "clusterroles"), ("update", "pods"),
                           ("delete", "services"), ("get", "nodes"), ("escalate", "roles"), ("impersonate", "users")]:
        assert not kube.can_i(verb, resource, "default", SA), f"the operator may {verb} {resource}"


def test_aggregated_roles_let_namespace_users_run_jobs(kube: Kube, release):
    kube.kubectl("create", "namespace", RESEARCH, check=False)
    kube.kubectl("create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice", "-n", RESEARCH)
    kube.kubectl("create", "rolebinding", "bob-view", "--clusterrole=view", "--user=bob", "-n", RESEARCH)

    def aggregated() -> bool:
        rules = kube.get("clusterrole", "edit")["rules"]
        return any("reasoningrljobs" in r.get("resources", []) for r in rules)

    wait_for(aggregated, 60, what="the controller-manager aggregating tlt's rules into `edit`")
    jobs = "reasoningrljobs.tlt.dev"
    assert kube.can_i("create", jobs, RESEARCH, "alice") and kube.can_i("delete", jobs, RESEARCH, "alice")
    assert kube.can_i("get", f"{jobs}/status", RESEARCH, "alice")
    assert not kube.can_i("patch", f"{jobs}/status", RESEARCH, "alice")  # status is the operator's
    assert kube.can_i("list", jobs, RESEARCH, "bob") and kube.can_i("watch", jobs, RESEARCH, "bob")
    assert not kube.can_i("create", jobs, RESEARCH, "bob") and not kube.can_i("delete", jobs, RESEARCH, "bob")
    assert not kube.can_i("create", jobs, "default", "alice")  # only where she is bound
    # Alice really creates a job (server-side schema and CEL validation on the chart's CRD).
    kube.kubectl("apply", "--as=alice", "-f", "-", input=json.dumps(gpu_job("alice-job", RESEARCH)))
    assert kube.get("reasoningrljob", "-n", RESEARCH, "alice-job")["spec"]["rollout"]["replicas"] == 2


def test_operator_reconciles_with_the_chart_service_account(kube: Kube, release, tmp_path):
    kubeconfig = service_account_kubeconfig(kube, RELEASE_NS, f"{RELEASE}-tlt-operator", tmp_path / "sa.kubeconfig")
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    with api:
        review = client.AuthenticationV1Api(api).create_self_subject_review({"apiVersion": "authentication.k8s.io/v1",
                                                                             "kind": "SelfSubjectReview"})
        assert review.status.user_info.username == SA
    kube.kubectl("create", "namespace", TEAM_X)
    kube.kubectl("apply", "-f", "-", input=json.dumps(gpu_job("before", TEAM_X)))
    operator = start_operator(kubeconfig, [], tmp_path / "operator.log")
    try:
        # A job created before the operator started and one created now: both reconciled.
        kube.kubectl("apply", "-f", "-", input=json.dumps(gpu_job("grpo", TEAM_X)))
        assert_reconciled(kube, TEAM_X, "grpo", operator)
        assert_reconciled(kube, TEAM_X, "before", operator)
        # The GPU gauge counts the GPUs of every live job pod by role, as the API server
        # has them (other tests' jobs included: this operator serves every namespace).
        seen = []

        def gpu_gauge():
            expected: dict[str, float] = {}
            for pod in kube.get("pods", "-A", "-l", "tlt.dev/job")["items"]:
                if (pod.get("status") or {}).get("phase", "Pending") not in ("Pending", "Running"):
                    continue
                role = pod["metadata"]["labels"]["tlt.dev/role"]
                gpus = float(pod["spec"]["containers"][0].get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
                key = f'tlt_operator_gpus{{activity="{role}",role="{role}"}}'
                expected[key] = expected.get(key, 0.0) + gpus
            text = operator.metrics()
            gauges = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                      if line.startswith("tlt_operator_gpus{") and float(line.split(" ")[1])}
            seen.append((gauges, expected))
            ours = gauges.get('tlt_operator_gpus{activity="rollout",role="rollout"}', 0) >= 4  # 2 jobs x 2 x 1 GPU
            return text if ours and gauges == {k: v for k, v in expected.items() if v} else None

        try:
            text = wait_for(gpu_gauge, 30, what="the GPU gauge")
        except AssertionError:
            raise AssertionError(f"GPU gauges vs the API server's pods: {seen[-1] if seen else None}") from None
        assert "tlt_operator_reconciles_total" in text
        # Deleting the job: the garbage collector removes the children (owner references).
        kube.kubectl("delete", "reasoningrljob", "-n", TEAM_X, "grpo", "--wait=true", "--timeout=60s")
        wait_for(lambda: not kube.get("pods,configmaps,services", "-n", TEAM_X, "-l", "tlt.dev/job=grpo")["items"],
                 90, what="garbage collection of the job's children")
    finally:
        operator.stop()
    logs = operator.logs()
    assert "Forbidden" not in logs, logs[-3000:]


def test_namespaced_install_serves_only_its_namespaces(kube: Kube, release, tmp_path):
    for ns in (TEAM_A, TEAM_B):
        kube.kubectl("create", "namespace", ns)
    release, ns = "tlt-a", "helm-tlt-a-system"
    kube.helm("install", release, str(CHART), "-n", ns, "--create-namespace", "--wait", "--timeout", "3m",
              "--set", f"watchNamespaces={{{TEAM_A}}}", "--set", "rbac.aggregateToDefaultRoles=false")
    sa = f"system:serviceaccount:{ns}:{release}-tlt-operator"
    assert kube.can_i("create", "pods", TEAM_A, sa)
    assert not kube.can_i("create", "pods", TEAM_B, sa)
    assert not kube.can_i("list", "reasoningrljobs.tlt.dev", TEAM_B, sa)
    assert kube.can_i("list", "namespaces", "", sa) and not kube.can_i("delete", "namespaces", "", sa)
    env = {e["name"]: e.get("value") for e in
           kube.get("deployment", "-n", ns, f"{release}-tlt-operator")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TLT_WATCH_NAMESPACES"] == TEAM_A

    kubeconfig = service_account_kubeconfig(kube, ns, f"{release}-tlt-operator", tmp_path / "sa.kubeconfig")
    operator = start_operator(kubeconfig, [TEAM_A], tmp_path / "operator.log", release=release, release_ns=ns)
    try:
        kube.kubectl("apply", "-f", "-", input=json.dumps(gpu_job("grpo", TEAM_B)))
        kube.kubectl("apply", "-f", "-", input=json.dumps(gpu_job("grpo", TEAM_A)))
        assert_reconciled(kube, TEAM_A, "grpo", operator)
        time.sleep(3)  # a resync period: team-b stays untouched
        assert not kube.get("pods", "-n", TEAM_B, "-l", "tlt.dev/job=grpo")["items"]
        assert not (kube.get("reasoningrljob", "-n", TEAM_B, "grpo").get("status") or {}).get("phase")
    finally:
        operator.stop()
    kube.helm("uninstall", release, "-n", ns, "--wait")
    assert not kube.exists("role", "-n", TEAM_A, f"{release}-tlt-operator")


def test_upgrade_changes_values_and_hands_the_crd_to_the_release(kube: Kube, release):
    kube.helm("upgrade", RELEASE, str(CHART), "-n", RELEASE_NS, "--reuse-values", "--wait", "--timeout", "3m",
              "--set", "logLevel=DEBUG", "--set", "workerImages.cpu.tag=0.1.0-cpu")
    deployment = kube.get("deployment", "-n", RELEASE_NS, f"{RELEASE}-tlt-operator")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TLT_LOG_LEVEL"] == "DEBUG" and env["TLT_WORKER_IMAGE_CPU"] == "tlt/worker-cpu:0.1.0-cpu"
    history = json.loads(kube.helm("history", RELEASE, "-n", RELEASE_NS, "-o", "json").stdout)
    assert [h["revision"] for h in history][-1] == 2 and history[-1]["status"] == "deployed"

    # A managed CRD without the documented handover is refused (Helm will not adopt it) ...
    refused = kube.helm("upgrade", RELEASE, str(CHART), "-n", RELEASE_NS, "--reuse-values", "--set", "crds.managed=true",
                        check=False)
    assert refused.returncode != 0 and CRD in refused.stderr
    # ... and accepted after it (chart README, "Upgrading the CRD", way B).
    kube.kubectl("label", "crd", CRD, "app.kubernetes.io/managed-by=Helm", "--overwrite")
    kube.kubectl("annotate", "crd", CRD, "--overwrite", f"meta.helm.sh/release-name={RELEASE}",
                 f"meta.helm.sh/release-namespace={RELEASE_NS}")
    kube.helm("upgrade", RELEASE, str(CHART), "-n", RELEASE_NS, "--reuse-values", "--set", "crds.managed=true",
              "--wait", "--timeout", "3m")
    crd = kube.get("crd", CRD)
    assert crd["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # The schema the release applied is the chart's (same versions and fields).
    chart_crd = yaml.safe_load((CHART / "crds" / "reasoningrljob.yaml").read_text())
    served = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert set(served) == set(chart_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])


def test_an_operator_upgrade_to_new_images_leaves_a_running_jobs_pods_untouched(kube: Kube, release, tmp_path):
    """helm upgrade with new image tags: the Deployment's new operator builds new jobs' pods with the new
    worker image, and rolls none of a running job's pods (only a change of the job's own spec does)."""
    ns = "helm-upgrade-jobs"
    kube.kubectl("create", "namespace", ns)
    kubeconfig = service_account_kubeconfig(kube, RELEASE_NS, f"{RELEASE}-tlt-operator", tmp_path / "sa.kubeconfig")

    def deployment_env() -> dict:
        """The worker images the release's Deployment gives its operator pod."""
        container = kube.get("deployment", "-n", RELEASE_NS, f"{RELEASE}-tlt-operator")["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("TLT_WORKER_IMAGE") and "value" in e}

    def pods(job: str) -> dict:
        items = kube.get("pods", "-n", ns, "-l", f"tlt.dev/job={job}")["items"]
        return {p["metadata"]["name"]: (p["metadata"]["uid"], p["spec"]["containers"][0]["image"]) for p in items}

    before_env = deployment_env()
    operator = start_operator(kubeconfig, [], tmp_path / "before.log", env=before_env)
    try:
        kube.kubectl("apply", "-f", "-", input=json.dumps(gpu_job("steady", ns)))
        before = wait_for(lambda: len(pods("steady")) == 3 and pods("steady"), 90, what="the running job's pods")
    finally:
        operator.stop()  # the Deployment's old pod goes away with the upgrade
    kube.helm("upgrade", RELEASE, str(CHART), "-n", RELEASE_NS, "--reuse-values", "--wait", "--timeout", "3m",
              "--set", "image.tag=0.9.9", "--set", "workerImages.cuda.tag=0.9.9-cuda", "--set", "workerImages.cpu.tag=0.9.9-cpu")
    after_env = deployment_env()
    assert after_env["TLT_WORKER_IMAGE_CUDA"].endswith(":0.9.9-cuda") and after_env != before_env
    operator = start_operator(kubeconfig, [], tmp_path / "after.log", env=after_env)
    try:
        kube.kubectl("apply", "-f", "-", input=json.dumps(gpu_job("fresh", ns)))
        fresh = wait_for(lambda: len(pods("fresh")) == 3 and pods("fresh"), 90, what="a new job's pods")
        assert {image for _, image in fresh.values()} == {after_env["TLT_WORKER_IMAGE_CUDA"]}, "new jobs get the new image"
        wait_for(lambda: operator.reconciles() >= 6, 60, what="the new operator's resyncs of both jobs")
        assert pods("steady") == before, "the running job's pods are the same pods, with the image they started with"
        events = kube.get("events", "-n", ns, "--field-selector", "involvedObject.name=steady")["items"]
        assert not [e for e in events if e["reason"] in ("SpecChanged", "PodFailed", "PodReplaced")], events
    finally:
        operator.stop()


def test_uninstall_removes_the_operator_and_keeps_crd_and_jobs(kube: Kube, release):
    kube.kubectl("create", "namespace", RESEARCH, check=False)
    kube.kubectl("apply", "-f", "-", input=json.dumps(gpu_job("survivor", RESEARCH)))
    kube.helm("uninstall", RELEASE, "-n", RELEASE_NS, "--wait")
    for args in (("deployment", "-n", RELEASE_NS, f"{RELEASE}-tlt-operator"),
                 ("serviceaccount", "-n", RELEASE_NS, f"{RELEASE}-tlt-operator"),
                 ("service", "-n", RELEASE_NS, f"{RELEASE}-tlt-operator-metrics"),
                 ("clusterrole", f"{RELEASE}-tlt-operator"),
                 ("clusterrolebinding", f"{RELEASE}-tlt-operator"),
                 ("clusterrole", f"{RELEASE}-tlt-operator-edit")):
        assert not kube.exists(*args), args
    # The CRD (kept by its resource policy) and the users' jobs survive.
    assert kube.exists("crd", CRD)
    assert kube.exists("reasoningrljob", "-n", RESEARCH, "survivor")
    wait_for(lambda: not any("reasoningrljobs" in r.get("resources", []) for r in kube.get("clusterrole", "edit")["rules"]),
             60, what="`edit` to lose the aggregated rules")
