"""The operator (`python -m tlt_operator`, real kopf) against the real control plane.

One operator process runs for the module, cluster-wide, with a short replacement
backoff; each test works in its own namespace. kwok plays the kubelets: pods on
fake GPU nodes become Running and Ready, no container runs.
"""

from __future__ import annotations

import json
import threading
import time

import yaml
from kubernetes import config as kube_config, watch

from jobs import GROUP, PLURAL, VERSION, Job, wait_for
from specs import manifest, with_fields
from tlt.dev.pods import service_account_kubeconfig
from tlt.dev.tools import kubectl_path
from tlt.worker.role_watcher import RoleWatcher


JOB = manifest("demo", {
    "algorithm": {"groupSize": 4, "steps": 3},
    # CPU pods (kwok's CPU node): tests in namespaces still being deleted do not hold GPUs.
    "rollout": {"replicas": 3, "gpusPerReplica": 0, "engine": "torch", "maxBatchSize": 32},
    "trainer": {"replicas": 1, "gpusPerReplica": 0},
    "speculative": {"batchThreshold": 16},
    "elasticity": {"consolidateTail": {"threshold": 4}},
    "runPolicy": {"backoffLimit": 1},
})


def named(name: str, **spec_changes) -> dict:
    return manifest(name, {**JOB["spec"], **spec_changes})


def test_apply_creates_owned_children_with_least_privilege_rbac_and_pods_on_gpu_nodes(operator, api, kubectl, namespace):
    gpu_job = with_fields(JOB, **{"rollout.gpusPerReplica": 1, "trainer.gpusPerReplica": 1})
    job = Job(api, kubectl, namespace, gpu_job)
    pods = job.running_pods(4)
    uid = job.get()["metadata"]["uid"]
    for pod in pods.values():
        owner = pod.metadata.owner_references[0]
        assert (owner.kind, owner.name, owner.uid, owner.controller) == ("ReasoningRLJob", "demo", uid, True)
        assert pod.metadata.labels["tlt.dev/job"] == "demo"
        assert pod.spec.node_name.startswith("kwok-gpu"), f"{pod.metadata.name} on {pod.spec.node_name}"
        assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
        assert pod.spec.security_context.run_as_non_root is True
    for kind in ("serviceaccount/demo-rollout-0", "role/demo-trainer-0", "rolebinding/demo-rollout-2", "configmap/demo-config",
                 "configmap/demo-progress", "service/demo-workers", "networkpolicy/demo-workers"):
        got = json.loads(kubectl("get", kind, "-n", namespace, "-o", "json").stdout)
        assert got["metadata"]["ownerReferences"][0]["uid"] == uid, kind
    secret = pods["demo-rollout-0"].spec.volumes[1].secret.secret_name
    token = json.loads(kubectl("get", "secret", secret, "-n", namespace, "-o", "json").stdout)
    assert token["metadata"]["ownerReferences"][0]["uid"] == uid and len(token["data"]["token"]) > 40
    wait_for(lambda: job.phase() == "Running", what="phase Running")
    assert job.events("Created")

    printed = kubectl("get", "rlj", "demo", "-n", namespace).stdout
    assert "Running" in printed and "0/3" in printed and "3/3" in printed

    def can(pod: str, *args: str) -> bool:
        out = kubectl("auth", "can-i", *args, "-n", namespace, f"--as=system:serviceaccount:{namespace}:{pod}", check=False)
        return out.stdout.strip() == "yes"

    assert can("demo-rollout-0", "get", "reasoningrljobs.tlt.dev/demo")
    assert can("demo-rollout-0", "get", "pods/demo-rollout-0") and can("demo-rollout-0", "patch", "pods/demo-rollout-0")
    assert not can("demo-rollout-0", "patch", "pods/demo-rollout-1"), "a pod labels itself only"
    assert not can("demo-rollout-0", "patch", "reasoningrljobs.tlt.dev/demo", "--subresource=status"), "status is the operator's"
    assert not can("demo-trainer-0", "patch", "reasoningrljobs.tlt.dev/demo", "--subresource=status")
    assert can("demo-trainer-0", "patch", "configmaps/demo-progress"), "the head reports into the progress ConfigMap"
    assert not can("demo-rollout-0", "patch", "configmaps/demo-progress")
    assert not can("demo-trainer-0", "patch", "configmaps/demo-config")
    assert not can("demo-rollout-0", "patch", "reasoningrljobs.tlt.dev/demo")  # the spec is not the workers' to change
    assert not can("demo-rollout-0", "get", "pods/someone-elses-pod")
    assert not can("demo-rollout-0", "list", "pods")  # only with a field selector on its own name
    assert not can("demo-rollout-0", "delete", "pods/demo-rollout-0")
    assert not can("demo-rollout-0", "create", "pods")
    assert not can("demo-rollout-0", "get", "secrets") and not can("demo-trainer-0", "get", f"secrets/{secret}")


def test_scripted_progress_lends_returns_and_consolidates_with_events(operator, api, kubectl, namespace):
    job = Job(api, kubectl, namespace, JOB)
    job.running_pods(4)
    wait_for(lambda: job.phase() == "Running", what="Running")

    job.report({"progress": {"step": 1, "phase": "rollout", "shards": [
        {"shard": 0, "running": 0, "finished": 32}, {"shard": 1, "running": 20, "finished": 12}, {"shard": 2, "running": 18, "finished": 14},
    ]}})
    wait_for(lambda: job.annotation("demo-rollout-0") == "drafter", what="rollout-0 lent")
    assert job.annotation("demo-trainer-0") == "drafter"  # idle trainer during disaggregated rollout
    assert job.annotation("demo-rollout-1") is None
    wait_for(lambda: job.events("GPULent") and job.events("ShardDrained"), what="lend events")
    wait_for(lambda: job.status().get("rolloutText") == "3/3 (1 lent)", what="rolloutText with the loan")

    # The tail: few sequences on the two busy shards -> consolidation requested from the coordinator.
    job.report({"progress": {"step": 1, "phase": "rollout", "shards": [
        {"shard": 0, "running": 0, "finished": 32}, {"shard": 1, "running": 3, "finished": 29}, {"shard": 2, "running": 2, "finished": 30},
    ]}})
    request = wait_for(lambda: job.annotation("demo-trainer-0", "tlt.dev/consolidate"), what="consolidation request")
    assert json.loads(request)["moves"] == [{"target": "demo-rollout-1", "sources": ["demo-rollout-2"], "sequences": [2]}]
    wait_for(lambda: job.events("TailConsolidated"), what="TailConsolidated event")

    # Training: the trainer comes back; next step: every rollout shard comes back.
    job.report({"progress": {"step": 1, "phase": "train", "shards": [
        {"shard": i, "running": 0, "finished": 32} for i in range(3)]}})
    wait_for(lambda: job.annotation("demo-trainer-0") == "trainer", what="trainer returned")
    job.report({"step": 1, "progress": {"step": 2, "phase": "rollout", "shards": [
        {"shard": i, "waiting": 32} for i in range(3)]}})
    wait_for(lambda: all(job.annotation(f"demo-rollout-{i}") == "rollout" for i in range(3)), what="shards returned")
    wait_for(lambda: job.events("GPUReturned") and job.events("StepCompleted"), what="return and step events")
    metrics = operator.metrics()
    assert "tlt_operator_gpu_lends_total" in metrics and "tlt_operator_reconciles_total" in metrics


def test_operator_restart_mid_job_creates_no_duplicates(operator, api, kubectl, namespace):
    job = Job(api, kubectl, namespace, JOB)
    before = {n: p.metadata.uid for n, p in job.running_pods(4).items()}
    wait_for(lambda: job.phase() == "Running", what="Running")
    created = len(job.events("Created"))
    operator.stop()
    operator.start()
    time.sleep(4)  # a resume reconcile and two resyncs
    assert {n: p.metadata.uid for n, p in job.pods().items()} == before
    assert len(job.events("Created")) == created
    assert job.phase() == "Running" and job.status().get("failures", 0) == 0


def test_deleted_pods_are_replaced_then_the_job_fails_past_backoff_limit(operator, api, kubectl, namespace):
    job = Job(api, kubectl, namespace, JOB)  # backoffLimit 1
    first = job.running_pods(4)["demo-rollout-1"].metadata.uid
    wait_for(lambda: job.phase() == "Running", what="Running")
    kubectl("delete", "pod", "demo-rollout-1", "-n", namespace, "--wait=false")
    replaced = wait_for(lambda: job.pods().get("demo-rollout-1") and job.pods()["demo-rollout-1"].metadata.uid != first and job.pods()["demo-rollout-1"],
                        what="replacement pod")
    assert replaced.metadata.uid != first
    wait_for(lambda: job.events("PodReplaced"), what="PodReplaced event")
    assert job.status()["failures"] == 1

    job.running_pods(4)
    kubectl("delete", "pod", "demo-rollout-2", "-n", namespace, "--wait=false")
    wait_for(lambda: job.phase() == "Failed", what="Failed")
    failed = next(c for c in job.status()["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    wait_for(lambda: not job.pods(), what="GPUs given back")


def test_suspend_deletes_pods_keeps_progress_and_resume_recreates(operator, api, kubectl, namespace):
    job = Job(api, kubectl, namespace, JOB)
    job.running_pods(4)
    job.report({"step": 2, "progress": {"step": 3, "phase": "rollout", "shards": [{"shard": 0, "running": 5}]}})
    job.patch({"spec": {"runPolicy": {"suspend": True}}})
    wait_for(lambda: job.phase() == "Suspended" and not job.pods(), what="suspended without pods")
    status = job.status()
    assert status["step"] == 2 and status["progress"]["step"] == 3
    job.patch({"spec": {"runPolicy": {"suspend": False}}})
    job.running_pods(4)
    wait_for(lambda: job.events("Resumed") and job.phase() == "Running", what="resumed")
    assert job.status().get("failures", 0) == 0
    assert len(job.events("Created")) == 1, "a resume is not a second creation"


def test_active_deadline_fails_the_job(operator, api, kubectl, namespace):
    job = Job(api, kubectl, namespace, named("deadline", runPolicy={"activeDeadlineSeconds": 3}))
    wait_for(lambda: job.phase() == "Failed", timeout=30, what="Failed by deadline")
    assert next(c for c in job.status()["conditions"] if c["type"] == "Failed")["reason"] == "DeadlineExceeded"
    wait_for(lambda: not job.pods(), what="pods deleted")


def test_invalid_spec_gets_invalid_and_no_pods_and_a_fix_recovers(operator, api, kubectl, namespace):
    body = named("broken", template={"shmSize": "lots"})  # an int-or-string the schema accepts, not a quantity
    job = Job(api, kubectl, namespace, body)
    wait_for(lambda: job.phase() == "Invalid", what="Invalid")
    invalid = next(c for c in job.status()["conditions"] if c["type"] == "Invalid")
    assert "spec.template.shmSize" in invalid["message"]
    assert any("spec.template.shmSize" in e["message"] for e in job.events("InvalidSpec"))
    time.sleep(2)
    assert job.pods() == {}
    job.patch({"spec": {"template": {"shmSize": "2Gi"}}})
    job.running_pods(4)


def test_job_deletion_garbage_collects_children_without_waiting_for_the_operator(operator, api, kubectl, namespace):
    job = Job(api, kubectl, namespace, JOB)
    job.running_pods(4)
    operator.stop()  # deletion must not depend on the operator
    try:
        kubectl("delete", "rlj", "demo", "-n", namespace, "--timeout=30s")
        wait_for(lambda: not job.pods(), what="pods garbage-collected")
        for kind in ("serviceaccount", "configmap", "service", "role", "rolebinding"):
            wait_for(lambda: not json.loads(kubectl("get", kind, "-n", namespace, "-l", "tlt.dev/job=demo", "-o", "json").stdout)["items"],
                     what=f"{kind} garbage-collected")
    finally:
        operator.start()


def test_role_watcher_in_a_pod_switches_roles_with_the_job_service_account(operator, api, kubectl, namespace, controlplane,
                                                                          tmp_path):
    job = Job(api, kubectl, namespace, JOB)
    job.running_pods(4)
    account = service_account_kubeconfig(controlplane.kubeconfig, namespace, "demo-rollout-0", tmp_path / "worker.kubeconfig",
                                         kubectl=str(kubectl_path()))
    roles: list[str] = []
    watcher = RoleWatcher(roles.append, pod_name="demo-rollout-0", namespace=namespace,
                          api_client=kube_config.new_client_from_config(str(account))).start()
    try:
        wait_for(lambda: roles == ["rollout"], what="initial role")
        job.report({"progress": {"step": 1, "phase": "rollout", "shards": [
            {"shard": 0, "finished": 32}, {"shard": 1, "running": 20}, {"shard": 2, "running": 20}]}})
        wait_for(lambda: roles == ["rollout", "drafter"], what="the watcher applying the loan")
        shown = wait_for(lambda: "drafter" in kubectl("get", "pods", "demo-rollout-0", "-n", namespace, "-L", "tlt.dev/active-role").stdout
                         and kubectl("get", "pods", "-n", namespace, "-L", "tlt.dev/active-role").stdout, what="active-role label")
        assert "demo-rollout-1" in shown
    finally:
        watcher.stop()


class JobWrites:
    """Every write to one job (spec, metadata or status) while it is watched: one MODIFIED event each."""

    def __init__(self, job: Job):
        self.job = job
        self.events: list[dict] = []
        self.stream = watch.Watch()
        start = job.get()["metadata"]["resourceVersion"]
        self.thread = threading.Thread(target=self._watch, args=(start,), daemon=True)
        self.thread.start()

    def _watch(self, resource_version: str) -> None:
        try:
            for event in self.stream.stream(self.job.custom.list_namespaced_custom_object, GROUP, VERSION, self.job.namespace,
                                            PLURAL, field_selector=f"metadata.name={self.job.name}",
                                            resource_version=resource_version, timeout_seconds=120):
                if event["type"] == "MODIFIED":
                    meta = event["object"]["metadata"]
                    last = max(meta.get("managedFields") or [], key=lambda m: m.get("time") or "", default={})
                    self.events.append({"resourceVersion": meta["resourceVersion"], "last writer": last.get("manager")})
        except Exception:  # the connection closes when the test stops watching
            pass

    def stop(self) -> list[dict]:
        self.stream.stop()
        return self.events


def test_a_progress_report_costs_one_write_the_report_itself(operator, api, kubectl, namespace):
    job = Job(api, kubectl, namespace, JOB)
    job.running_pods(4)
    wait_for(lambda: job.phase() == "Running" and job.status().get("rolloutText") == "3/3", what="Running")
    reports = 5
    busy = [{"shard": i, "running": 8, "finished": 0} for i in range(3)]  # nothing for the operator to do
    job.report({"progress": {"step": 1, "phase": "rollout", "shards": busy, "updatedAt": "warm-up"}})
    time.sleep(3)
    reconciles = operator.reconciles()
    writes = JobWrites(job)
    for i in range(reports):
        job.report({"progress": {"step": 1, "phase": "rollout", "shards": busy, "updatedAt": f"report {i}"}})
        time.sleep(1.5)
    time.sleep(2)
    seen = writes.stop()
    print(f"\n[writes] {len(seen)} writes to the job for {reports} progress reports: {seen}")
    assert operator.reconciles() >= reconciles + reports, "every report was reconciled"
    assert len(seen) == reports, f"{len(seen)} writes for {reports} progress reports"


def test_spec_change_rolls_pods_with_one_event_and_lifecycle_changes_do_not(operator, api, kubectl, namespace):
    job = Job(api, kubectl, namespace, JOB)
    before = {n: (p.metadata.uid, p.metadata.annotations["tlt.dev/pod-hash"]) for n, p in job.running_pods(4).items()}
    wait_for(lambda: job.phase() == "Running", what="Running")

    job.patch({"spec": {"runPolicy": {"ttlSecondsAfterFinished": 3600, "backoffLimit": 2}}})
    wait_for(lambda: job.status().get("observedGeneration") == job.get()["metadata"]["generation"], what="generation 2 observed")
    time.sleep(3)  # a resync: still nothing to roll
    assert {n: (p.metadata.uid, p.metadata.annotations["tlt.dev/pod-hash"]) for n, p in job.pods().items()} == before
    assert not job.events("SpecChanged")
    config = yaml.safe_load(json.loads(kubectl("get", "configmap", "demo-config", "-n", namespace, "-o", "json").stdout)["data"]["job.yaml"])
    assert config["spec"]["runPolicy"]["ttlSecondsAfterFinished"] == 3600  # the ConfigMap follows every spec change

    job.patch({"spec": {"rollout": {"maxBatchSize": 64}}})
    generation = job.get()["metadata"]["generation"]

    def rolled():
        pods = job.pods()
        return len(pods) == 4 and all(p.metadata.uid != before[n][0] for n, p in pods.items()) and pods

    pods = wait_for(rolled, what="every pod recreated")
    assert all(p.metadata.annotations["tlt.dev/pod-hash"] != before[n][1] for n, p in pods.items())
    config = yaml.safe_load(json.loads(kubectl("get", "configmap", "demo-config", "-n", namespace, "-o", "json").stdout)["data"]["job.yaml"])
    assert config["spec"]["rollout"]["maxBatchSize"] == 64
    job.running_pods(4)
    wait_for(lambda: job.phase() == "Running" and not any(
        c["type"] == "Updating" and c["status"] == "True" for c in job.status()["conditions"]), what="roll finished")
    events = job.events("SpecChanged")
    assert len(events) == 1 and "spec changed (rollout)" in events[0]["message"], events
    status = job.status()
    assert status["observedGeneration"] == generation and status.get("failures", 0) == 0
    assert not job.events("PodFailed") and not job.events("PodReplaced") and len(job.events("Created")) == 1


def test_a_job_reapplied_under_its_name_ignores_the_deleted_jobs_terminating_pods(operator, api, kubectl, namespace):
    core, _ = api
    old_job = Job(api, kubectl, namespace, JOB)
    old = old_job.running_pods(4)
    old_uid = old_job.get()["metadata"]["uid"]
    for name in old:  # they terminate for a while, as pods do on a slow kubelet
        core.patch_namespaced_pod(name, namespace, {"metadata": {"finalizers": ["test.tlt.dev/terminating"]}})
    kubectl("delete", "rlj", "demo", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(lambda: all(p.metadata.deletion_timestamp for p in core.list_namespaced_pod(namespace).items),
             what="the old pods terminating")
    # The old coordinator even reports success as it goes, as a kubelet would write it.
    core.patch_namespaced_pod_status("demo-trainer-0", namespace, {"status": {"phase": "Succeeded"}})

    job = Job(api, kubectl, namespace, JOB)
    uid = job.get()["metadata"]["uid"]
    assert uid != old_uid
    blocked = wait_for(lambda: next((c for c in job.status().get("conditions") or [] if c["type"] == "Blocked"
                                     and c["status"] == "True"), None), what="the Blocked condition")
    assert "Pod demo-trainer-0" in blocked["message"] and old_uid in blocked["message"]
    time.sleep(3)  # resyncs: nothing changes while the old pods terminate
    status = job.status()
    assert status["phase"] == "Created" and status.get("failures", 0) == 0, "never finished or failed by another job's pods"
    assert all(p.metadata.owner_references[0].uid == old_uid for p in core.list_namespaced_pod(namespace).items), "not adopted"
    events = job.events("ForeignChildren")
    assert len(events) == 1 and events[0]["count"] == 1, "said once"

    for name in old:
        core.patch_namespaced_pod(name, namespace, {"metadata": {"finalizers": None}})
    pods = job.running_pods(4)
    assert all(p.metadata.owner_references[0].uid == uid for p in pods.values())
    wait_for(lambda: job.phase() == "Running" and not any(
        c["type"] == "Blocked" and c["status"] == "True" for c in job.status()["conditions"]), what="the new job running")
    assert job.status().get("failures", 0) == 0 and len(job.events("Created")) == 1


def test_a_pod_the_api_server_refuses_is_a_reconcile_error_event_and_condition_until_fixed(operator, api, kubectl, namespace):
    # A label key the schema lets through but Kubernetes rejects on the pod: 422 at each create.
    job = Job(api, kubectl, namespace, named("refused", template={"labels": {"bad key!": "x"}}))
    condition = wait_for(lambda: next((c for c in job.status().get("conditions") or [] if c["type"] == "ReconcileError"
                                       and c["status"] == "True"), None), what="the ReconcileError condition")
    assert condition["reason"] == "APIError" and "creating Pod refused-" in condition["message"]
    assert "bad key!" in condition["message"], "the API server's own words name the field"
    event = wait_for(lambda: job.events("ReconcileError"), what="the ReconcileError event")
    assert event[0]["type"] == "Warning"
    job.patch({"spec": {"template": {"labels": None}}})
    job.running_pods(4)
    assert job.status().get("failures", 0) == 0, "pods that could not be created are no failures"
    wait_for(lambda: any(c["type"] == "ReconcileError" and c["status"] == "False" and c["reason"] == "Reconciled"
                         for c in job.status()["conditions"]), what="the condition cleared")
