"""The control-plane tier: a real kube-apiserver, etcd, controller-manager, scheduler
and kwok fake GPU nodes, started once per test session (tlt.dev.cluster.DevCluster).

The binaries come from `scripts/build-controlplane.sh` and kubectl from
`scripts/install-tools.sh`; the test script runs both before pytest. If either is
missing the tests here fail (never skip) with the command to run.

Fixtures:
- `controlplane`: the session's DevCluster (`.kubeconfig`, `.kubectl(...)`, `.api_client()`).
- `kubeconfig`: path of its admin kubeconfig.
- `kube_api`: a kubernetes.client.ApiClient logged in as admin (cluster-admin).
- `kubectl`: a function running kubectl against it (`kubectl("get", "nodes").stdout`).
- `namespace`: a fresh namespace for one test, deleted afterwards.
- `crd`, `operator`, `api` (per module): the CRD installed; one operator process
  (`python -m tlt_operator`, real kopf) watching every namespace with a short backoff;
  (CoreV1Api, CustomObjectsApi) as admin.
- `micro_model` (session): the built-in micro model's folder, for real jobs (`jobs.small_job`).

Every test in this folder is marked `controlplane` (select with `-m controlplane`,
leave out with `-m "not controlplane"`).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from jobs import CRD_NAME, wait_for
from tlt.dev.cluster import ClusterError, DevCluster, default_pools
from tlt.dev.tools import ToolMissing, kubectl_path
from tlt_operator.local import OperatorProcess

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.controlplane)


@pytest.fixture(scope="session")
def controlplane(tmp_path_factory) -> DevCluster:
    """The control plane, started on first use and stopped at the end of the session."""
    problem = None
    try:
        kubectl_path()
    except ToolMissing as err:
        problem = str(err)
    if problem:
        pytest.fail(problem, pytrace=False)
    state_dir = os.environ.get("TLT_TEST_CLUSTER_DIR")
    state = Path(state_dir) if state_dir else tmp_path_factory.mktemp("dev-cluster")
    messages: list[str] = []
    # Room for several tests' jobs at once (the whole tier shares the cluster, and pods of
    # deleted namespaces take a moment to go): 4 GPU nodes x 8 GPUs and 2 CPU nodes.
    cluster = DevCluster(state, pools=default_pools(gpu_nodes=4, gpus_per_node=8, cpu_nodes=2),
                         owned=True, log=messages.append)
    t0 = time.monotonic()
    try:
        cluster.start()
    except ToolMissing as err:  # includes ControlPlaneNotBuilt
        problem = str(err)
    except ClusterError as err:
        problem = f"the test control plane did not start: {err}"
    if problem:
        pytest.fail(problem, pytrace=False)
    print(f"\n[controlplane] started in {time.monotonic() - t0:.1f}s, state in {state}")
    try:
        yield cluster
    finally:
        t0 = time.monotonic()
        stopped = cluster.stop()
        for line in messages:
            if "killing" in line:
                print(f"\n[controlplane] {line}")
        print(f"\n[controlplane] stopped {', '.join(stopped)} in {time.monotonic() - t0:.1f}s")


@pytest.fixture(scope="session")
def kubeconfig(controlplane) -> Path:
    return controlplane.kubeconfig


@pytest.fixture(scope="session")
def kube_api(controlplane):
    api = controlplane.api_client()
    yield api
    api.close()


@pytest.fixture(scope="session")
def kubectl(controlplane):
    return controlplane.kubectl


@pytest.fixture
def namespace(controlplane, request) -> str:
    name = f"t-{request.node.name.lower()[:40].strip('-_[]').replace('_', '-').replace('[', '-').replace(']', '')}"
    name = "".join(c for c in name if c.isalnum() or c == "-").strip("-")[:50] + "-" + uuid.uuid4().hex[:5]
    controlplane.kubectl("create", "namespace", name)
    yield name
    # The test's ReasoningRLJobs go first and at once: in a namespace being deleted they
    # would still reach the next test's operator if it watches every namespace (and its
    # writes there are Forbidden). The namespace itself is deleted without waiting.
    controlplane.kubectl("delete", "reasoningrljobs.tlt.dev", "--all", "-n", name, "--wait=false",
                         "--ignore-not-found", check=False)
    controlplane.kubectl("delete", "namespace", name, "--wait=false", check=False)


# The operator tier: the CRD installed and one operator process per test module.

@pytest.fixture(scope="module")
def crd(kubectl):
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    # `kubectl wait` errors out (instead of waiting) while the new CRD has no status yet.
    wait_for(lambda: kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=10s", check=False).returncode == 0,
             what="the CRD Established")
    wait_for(lambda: kubectl("get", "rlj", "-A", check=False).returncode == 0, what="rlj in discovery")
    return CRD_NAME


@pytest.fixture(scope="module")
def operator(crd, kubeconfig, tmp_path_factory):
    env = {"TLT_BACKOFF_SECONDS": "0.5", "TLT_RESYNC_SECONDS": "2"}
    proc = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", env).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(kube_api):
    return client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
