"""The control plane itself: kwok GPU nodes, scheduling, RBAC, garbage collection,
namespace deletion and service-account tokens, all served by the real components."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import yaml
from kubernetes import client

from tlt.dev.cluster import GPU_RESOURCE, NodePool
from tlt.dev.tools import kubectl_path
from waiting import wait_for

pytestmark = pytest.mark.controlplane


def gpu_pod(name: str, gpus: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "gpu-test"}},
        "spec": {
            "containers": [{
                "name": "main",
                "image": "registry.invalid/never-pulled:1",  # kwok runs no container
                "resources": {"limits": {GPU_RESOURCE: str(gpus)}},
            }],
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 0,
        },
    }


@pytest.fixture(scope="module")
def core(kube_api):
    return client.CoreV1Api(kube_api)


@pytest.fixture(scope="module")
def gpu_nodes(core) -> dict[str, int]:
    nodes = core.list_node(label_selector="nvidia.com/gpu.present=true").items
    return {n.metadata.name: int(n.status.allocatable[GPU_RESOURCE]) for n in nodes}


def test_kwok_gpu_nodes_are_ready_with_gpu_capacity(core, gpu_nodes):
    assert len(gpu_nodes) >= 2 and all(g >= 1 for g in gpu_nodes.values()), gpu_nodes
    for node in core.list_node(label_selector="type=kwok").items:
        conditions = {c.type: c.status for c in node.status.conditions}
        assert conditions["Ready"] == "True", (node.metadata.name, conditions)
        if node.metadata.name in gpu_nodes:
            assert node.metadata.labels["nvidia.com/gpu.product"]
            assert any(t.key == GPU_RESOURCE and t.effect == "NoSchedule" for t in node.spec.taints)
            assert int(node.status.capacity[GPU_RESOURCE]) == gpu_nodes[node.metadata.name]


@pytest.fixture
def own_gpu_nodes(controlplane, namespace) -> dict[str, int]:
    """Two GPU nodes of this test alone (a taint and a label fence them off), so the
    capacity check does not depend on what other tests left running."""
    fence = {"key": "tlt.dev/test-pool", "value": namespace[-5:], "effect": "NoSchedule"}
    pool = NodePool(prefix=f"kwok-gpu-{namespace[-5:]}", count=2, gpus=2,
                    labels={"tlt.dev/test-pool": namespace[-5:]}, taints=[fence])
    names = controlplane.add_nodes(pool)
    yield {n: pool.gpus for n in names}
    controlplane.delete_nodes(names)


def test_gpu_pods_run_on_kwok_nodes_and_the_rest_stay_pending(core, namespace, own_gpu_nodes):
    fence = namespace[-5:]  # the value of own_gpu_nodes' label and taint

    def fenced_pod(name: str, gpus: int) -> dict:
        pod = gpu_pod(name, gpus)
        pod["spec"]["nodeSelector"] = {"tlt.dev/test-pool": fence}
        pod["spec"]["tolerations"].append({"key": "tlt.dev/test-pool", "operator": "Exists", "effect": "NoSchedule"})
        return pod

    # One pod per node that takes all its GPUs: the scheduler must spread them.
    names = []
    for i, gpus in enumerate(own_gpu_nodes.values()):
        name = f"full-{i}"
        core.create_namespaced_pod(namespace, fenced_pod(name, gpus))
        names.append(name)
    core.create_namespaced_pod(namespace, fenced_pod("one-too-many", 1))

    def running():
        pods = {p.metadata.name: p for p in core.list_namespaced_pod(namespace).items}
        ok = [n for n in names if pods[n].status.phase == "Running" and any(
            c.type == "Ready" and c.status == "True" for c in pods[n].status.conditions or [])]
        return pods if len(ok) == len(names) else None

    pods = wait_for(running, 90, what="the full-node GPU pods Running")
    assert {pods[n].spec.node_name for n in names} == set(own_gpu_nodes), "one pod per GPU node"
    assert all(pods[n].status.pod_ip for n in names), "kwok assigns pod IPs"

    def unschedulable():
        pod = core.read_namespaced_pod("one-too-many", namespace)
        cond = {c.type: c for c in pod.status.conditions or []}.get("PodScheduled")
        return pod if cond and cond.status == "False" and cond.reason == "Unschedulable" else None

    pod = wait_for(unschedulable, 60, what="the extra pod to be reported Unschedulable")
    assert pod.status.phase == "Pending" and not pod.spec.node_name
    message = next(c.message for c in pod.status.conditions if c.type == "PodScheduled")
    assert f"Insufficient {GPU_RESOURCE}" in message, message

    # Freeing a node lets the pending pod in.
    core.delete_namespaced_pod(names[0], namespace, grace_period_seconds=0)
    wait_for(lambda: core.read_namespaced_pod("one-too-many", namespace).status.phase == "Running", 90,
             what="the pending pod to run once GPUs were freed")


def test_gpu_pod_without_toleration_is_kept_off_gpu_nodes(core, namespace, gpu_nodes):
    pod = gpu_pod("no-toleration", 1)
    del pod["spec"]["tolerations"]
    core.create_namespaced_pod(namespace, pod)

    def unschedulable():
        p = core.read_namespaced_pod("no-toleration", namespace)
        cond = {c.type: c for c in p.status.conditions or []}.get("PodScheduled")
        return cond.message if cond and cond.status == "False" else None

    message = wait_for(unschedulable, 60, what="the untolerated pod to be Unschedulable")
    assert "untolerated taint" in message and GPU_RESOURCE in message, message


def test_cpu_pod_runs_on_the_cpu_node(core, namespace, gpu_nodes):
    pod = gpu_pod("cpu-only", 1)
    pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1", "memory": "1Gi"}}
    del pod["spec"]["tolerations"]
    core.create_namespaced_pod(namespace, pod)
    p = wait_for(lambda: (lambda p: p if p.status.phase == "Running" else None)(
        core.read_namespaced_pod("cpu-only", namespace)), 90, what="the CPU pod Running")
    assert p.spec.node_name not in gpu_nodes


def test_rbac_can_i_for_a_service_account(kubectl, namespace):
    sa = f"system:serviceaccount:{namespace}:worker"
    kubectl("create", "serviceaccount", "worker", "-n", namespace)
    kubectl("create", "role", "pod-reader", "--verb=get,list,watch", "--resource=pods", "-n", namespace)
    kubectl("create", "rolebinding", "worker-reads-pods", "--role=pod-reader",
            f"--serviceaccount={namespace}:worker", "-n", namespace)

    def can_i(*args: str) -> str:
        return kubectl("auth", "can-i", *args, f"--as={sa}", check=False).stdout.strip()

    wait_for(lambda: can_i("list", "pods", "-n", namespace) == "yes", 10, what="the binding to apply")
    assert can_i("watch", "pods", "-n", namespace) == "yes"
    assert can_i("delete", "pods", "-n", namespace) == "no"
    assert can_i("list", "secrets", "-n", namespace) == "no"
    assert can_i("list", "pods", "-n", "default") == "no"
    assert can_i("list", "nodes") == "no"


def test_service_account_token_authenticates_and_is_authorized(kubectl, controlplane, namespace, tmp_path):
    """TokenRequest signs with the generated key; the apiserver accepts and authorizes it."""
    kubectl("create", "serviceaccount", "reader", "-n", namespace)
    kubectl("create", "role", "cm-reader", "--verb=list", "--resource=configmaps", "-n", namespace)
    kubectl("create", "rolebinding", "reader", "--role=cm-reader", f"--serviceaccount={namespace}:reader",
            "-n", namespace)
    token = kubectl("create", "token", "reader", "-n", namespace, "--duration=10m").stdout.strip()
    admin = yaml.safe_load(controlplane.kubeconfig.read_text())
    sa_config = tmp_path / "reader.kubeconfig"
    sa_config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": "reader", "user": {"token": token}}],
        "contexts": [{"name": "reader", "context": {"cluster": admin["clusters"][0]["name"], "user": "reader"}}],
        "current-context": "reader",
    }))

    def as_reader(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(kubectl_path()), f"--kubeconfig={sa_config}", *args],
                              capture_output=True, text=True, timeout=60)

    whoami = json.loads(as_reader("auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:reader"
    out = as_reader("get", "configmaps", "-n", namespace)
    assert out.returncode == 0, out.stderr
    denied = as_reader("get", "secrets", "-n", namespace)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr


def test_deleting_an_owner_garbage_collects_owned_objects(core, namespace):
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}, "data": {"a": "1"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid,
           "controller": True, "blockOwnerDeletion": True}
    for i in range(3):
        core.create_namespaced_config_map(namespace, {"metadata": {"name": f"owned-{i}", "ownerReferences": [ref]}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "bystander"}})

    core.delete_namespaced_config_map("owner", namespace)  # background propagation
    wait_for(lambda: {c.metadata.name for c in core.list_namespaced_config_map(namespace).items}
             .isdisjoint({"owned-0", "owned-1", "owned-2"}), 60, what="the garbage collector")
    names = {c.metadata.name for c in core.list_namespaced_config_map(namespace).items}
    assert "bystander" in names


def test_foreground_deletion_waits_for_dependents(core, namespace):
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "fg-owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "fg-owner", "uid": owner.metadata.uid,
           "blockOwnerDeletion": True}
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "fg-owned", "ownerReferences": [ref]}})
    core.delete_namespaced_config_map("fg-owner", namespace, propagation_policy="Foreground")

    def both_gone():
        names = {c.metadata.name for c in core.list_namespaced_config_map(namespace).items}
        return not names & {"fg-owner", "fg-owned"}

    wait_for(both_gone, 60, what="foreground deletion of owner and dependent")


def test_namespace_deletion_removes_its_contents(core, kubectl):
    ns = f"t-ns-delete-{int(time.time() * 1000) % 100000}"
    kubectl("create", "namespace", ns)
    kubectl("create", "configmap", "x", "-n", ns, "--from-literal=a=1")
    kubectl("delete", "namespace", ns, "--wait=false")

    def gone():
        try:
            core.read_namespace(ns)
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_for(gone, 90, what="the namespace controller to finish")


def test_kubectl_version_matches_the_server(kubectl):
    version = json.loads(kubectl("version", "-o", "json").stdout)
    server = version["serverVersion"]
    assert server["major"] == "1" and server["minor"].startswith("35"), server
    assert server["gitVersion"].startswith("v1.35."), server
