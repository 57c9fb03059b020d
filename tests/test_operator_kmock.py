"""The real operator (kopf, handlers, kube I/O) against kmock, an in-process Kubernetes API emulator.

kmock stores objects as sent and does not filter by label or field selectors, run
controllers or garbage-collect: those behaviours are covered by the control-plane
tier (tests/controlplane/). Here: handlers, watches, the I/O layer and the pure core
wired together over real HTTP, and the leader election over the I/O layer's Lease calls.
"""

import asyncio
import threading
import copy
import datetime
import itertools
import json
import time
import uuid

import aiohttp.web
import kmock
import pytest
import yaml
from kmock._internal import enums, k8s
from kopf.testing import KopfRunner
from kubernetes import client, config

from specs import manifest
from tlt.worker.status import report_data
from tlt_operator import handlers

NS = "default"
GROUP, VERSION, PLURAL = "tlt.dev", "v1alpha1", "reasoningrljobs"

JOB = manifest("demo", {
    "algorithm": {"groupSize": 4, "steps": 3},
    "rollout": {"replicas": 3, "gpusPerReplica": 1, "engine": "torch", "maxBatchSize": 32},
    "speculative": {"batchThreshold": 16},
    "elasticity": {"consolidateTail": {"threshold": 4}},
    "runPolicy": {"backoffLimit": 2},
}, namespace=NS)


class Emulator(kmock.KubernetesEmulator):
    """kmock plus the server-filled metadata kopf and ownerReferences rely on, and replace (PUT) with its 409."""

    _versions = itertools.count(1)

    async def _handle(self, request):
        if request.resource is not None and request.method == enums.method.PUT and request.name and isinstance(request.data, dict):
            return await self._replace(request)
        if request.resource is not None and request.action == enums.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
            meta.setdefault("generation", 1)
            if request.namespace:
                meta.setdefault("namespace", request.namespace)
            meta["resourceVersion"] = str(next(self._versions))
        return await super()._handle(request)

    async def _replace(self, request):
        """kmock serves no PUT: a replace, refused (409) when the object changed since the sender read it."""
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                raise k8s.KubernetesObjectNotFoundError()
            if request.data.get("metadata", {}).get("resourceVersion") != self._objects[key].raw["metadata"].get("resourceVersion"):
                raise k8s.KubernetesObjectConflictError(reason="Conflict", message="the object has been modified")
            data = copy.deepcopy(request.data)
            data["metadata"]["resourceVersion"] = str(next(self._versions))
            self._objects[key].create(data)
            return aiohttp.web.json_response(self._objects[key].raw)


class KmockThread:
    """kmock serving from its own thread and event loop, so tests and kopf's threads may block freely."""

    def __init__(self):
        self.ready = threading.Event()
        self.url = None
        self.loop = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self):
        self.loop = asyncio.get_running_loop()
        self.main = asyncio.current_task()
        self.done = asyncio.Event()
        async with Emulator() as emulator, kmock.Server(emulator) as server:
            emulator.resources.load_bundled()
            emulator.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = kmock.ResourceInfo(
                kind="ReasoningRLJob", namespaced=True, verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                subresources={"status"},
            )
            self.url = str(server.url).rstrip("/")
            self.ready.set()
            await self.done.wait()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10), "kmock did not start"
        return self

    def __exit__(self, *exc):
        def stop():
            # Open watch streams never end on their own: cancel them, then leave the server.
            for task in asyncio.all_tasks(self.loop):
                if task is not self.main:
                    task.cancel()
            self.done.set()

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(10)


@pytest.fixture
def api(tmp_path, monkeypatch):
    with KmockThread() as server:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": server.url}}],
            "users": [{"name": "test", "user": {"token": "test"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
        }))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        config.load_kube_config(config_file=str(kubeconfig))
        monkeypatch.setattr(handlers, "RUNTIME", handlers.Runtime(backoff_base=0.3, resync_seconds=2.0))
        yield Api(client.ApiClient())
        handlers.RUNTIME.shutdown()


class Api:
    def __init__(self, api_client):
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def create_job(self, body):
        self.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, copy.deepcopy(body))

    def job(self, name="demo"):
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)

    def patch_job(self, patch, name="demo"):
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name, patch)

    def report(self, body, name="demo"):
        """What the coordinator does: write its report into the job's progress ConfigMap."""
        self.core.patch_namespaced_config_map(f"{name}-progress", NS, {"data": report_data(body)})

    def pods(self, job="demo"):
        pods = self.core.list_namespaced_pod(NS).items
        return {p.metadata.name: p for p in pods if (p.metadata.labels or {}).get("tlt.dev/job") == job}

    def start_pods(self, *names):
        for name in names:
            status = {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
            self.core.patch_namespaced_pod_status(name, NS, status)

    def events(self):
        return [(e.reason, e.message) for e in self.core.list_namespaced_event(NS).items]

    def reasons(self):
        return [r for r, _ in self.events()]


def eventually(check, timeout=15.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, KeyError, client.ApiException):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {getattr(check, '__name__', check)}")
        time.sleep(interval)


def operator():
    return KopfRunner(["run", "--standalone", "-A", "-m", "tlt_operator.handlers"])


def annotation(pod, key):
    return (pod.metadata.annotations or {}).get(key)


def test_job_gets_children_runs_and_lends_drained_shards(api):
    with operator() as runner:
        api.create_job(JOB)
        pods = eventually(lambda: len(api.pods()) == 4 and api.pods())
        assert sorted(pods) == ["demo-rollout-0", "demo-rollout-1", "demo-rollout-2", "demo-trainer-0"]
        job = api.job()
        assert not job["metadata"].get("finalizers"), "no finalizer: deleting a job never waits for the operator"
        owner = pods["demo-rollout-1"].metadata.owner_references[0]
        assert (owner.kind, owner.name, owner.uid, owner.controller) == ("ReasoningRLJob", "demo", job["metadata"]["uid"], True)
        assert pods["demo-rollout-1"].metadata.labels["tlt.dev/role"] == "rollout"
        cm = api.core.read_namespaced_config_map("demo-config", NS)
        assert yaml.safe_load(cm.data["job.yaml"])["metadata"]["name"] == "demo"
        assert api.core.read_namespaced_service("demo-workers", NS).spec.cluster_ip == "None"

        # Pods become ready: the pod watch brings the job to Running.
        api.start_pods(*pods)
        eventually(lambda: api.job()["status"]["phase"] == "Running")

        # The coordinator reports a drained shard: the operator lends it, with events.
        api.report({"progress": {"step": 1, "phase": "rollout", "shards": [
            {"shard": 0, "running": 0, "waiting": 0, "finished": 32},
            {"shard": 1, "running": 20, "finished": 12},
            {"shard": 2, "running": 18, "finished": 14},
        ]}})
        pods = eventually(lambda: annotation(api.pods()["demo-rollout-0"], "tlt.dev/assigned-role") == "drafter" and api.pods())
        assert annotation(pods["demo-rollout-1"], "tlt.dev/assigned-role") is None
        eventually(lambda: {"GPULent", "ShardDrained"} <= set(api.reasons()))
        eventually(lambda: api.job()["status"]["rolloutText"] == "3/3 (1 lent)")

        # Next step's work arrives on the lent shard: it is returned.
        api.report({"step": 1, "progress": {"step": 2, "phase": "rollout", "shards": [
            {"shard": i, "running": 0, "waiting": 32, "finished": 0} for i in range(3)
        ]}})
        eventually(lambda: annotation(api.pods()["demo-rollout-0"], "tlt.dev/assigned-role") == "rollout")
        eventually(lambda: api.job()["status"]["stepText"] == "1/3")
        assert "GPUReturned" in api.reasons()
        created_events = api.reasons().count("Created")
    assert runner.exception is None

    # A restarted operator resumes the job: no duplicate children, no new Created event, same state.
    before = {n: p.metadata.uid for n, p in api.pods().items()}
    handlers.RUNTIME.shutdown()
    handlers.RUNTIME = handlers.Runtime(backoff_base=0.3, resync_seconds=2.0)
    with operator() as runner:
        eventually(lambda: ("default", "demo") in handlers.RUNTIME.phases)
        time.sleep(1)
        assert {n: p.metadata.uid for n, p in api.pods().items()} == before
        assert api.reasons().count("Created") == created_events
        assert api.job()["status"]["phase"] == "Running"
    assert runner.exception is None


def test_deleted_pod_is_replaced_and_invalid_spec_gets_no_pods(api):
    with operator() as runner:
        api.create_job(JOB)
        pods = eventually(lambda: len(api.pods()) == 4 and api.pods())
        api.start_pods(*pods)
        eventually(lambda: api.job()["status"]["phase"] == "Running")

        api.core.delete_namespaced_pod("demo-rollout-2", NS)
        eventually(lambda: "PodReplaced" in api.reasons() and "demo-rollout-2" in api.pods())
        assert api.job()["status"]["failures"] == 1

        bad = copy.deepcopy(JOB)
        bad["metadata"]["name"] = "broken"
        bad["spec"]["algorithm"]["groupSize"] = 1
        api.create_job(bad)
        job = eventually(lambda: api.job("broken").get("status", {}).get("phase") == "Invalid" and api.job("broken"))
        condition = next(c for c in job["status"]["conditions"] if c["type"] == "Invalid")
        assert "spec.algorithm.groupSize" in condition["message"]
        assert any(r == "InvalidSpec" and "groupSize" in m for r, m in api.events())
        assert api.pods("broken") == {}

        # Fixing the spec recovers.
        api.patch_job({"spec": {"algorithm": {"groupSize": 4}}}, name="broken")
        eventually(lambda: len(api.pods("broken")) == 4)
    assert runner.exception is None


def test_role_watcher_applies_the_assigned_role_and_labels_its_pod(api):
    from tlt.worker.role_watcher import RoleWatcher

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w-rollout-0", "namespace": NS, "labels": {"tlt.dev/role": "rollout"}},
           "spec": {"containers": [{"name": "tlt", "image": "x"}]}}
    other = copy.deepcopy(pod)
    other["metadata"]["name"] = "w-rollout-1"
    api.core.create_namespaced_pod(NS, pod)
    api.core.create_namespaced_pod(NS, other)
    roles, requests = [], []
    watcher = RoleWatcher(roles.append, pod_name="w-rollout-0", namespace=NS, api_client=api.core.api_client, on_consolidate=requests.append)
    watcher.start()

    def active_label():
        return (api.core.read_namespaced_pod("w-rollout-0", NS).metadata.labels or {}).get("tlt.dev/active-role")

    try:
        eventually(lambda: roles == ["rollout"] and active_label() == "rollout")
        api.core.patch_namespaced_pod("w-rollout-1", NS, {"metadata": {"annotations": {"tlt.dev/assigned-role": "drafter"}}})
        api.core.patch_namespaced_pod("w-rollout-0", NS, {"metadata": {"annotations": {
            "tlt.dev/assigned-role": "drafter",
            "tlt.dev/consolidate": json.dumps({"step": 1, "moves": []}),
        }}})
        eventually(lambda: active_label() == "drafter")
        assert roles == ["rollout", "drafter"], "another pod's assignment must not switch this worker"
        assert requests == [{"step": 1, "moves": []}]
    finally:
        watcher.stop()


def test_replicas_elect_a_leader_through_a_lease(api):
    """leader.py over kube.py's Lease calls against a server: create, hold, take over an expired
    lease by its own clock, and hand it over at once on release."""
    from tlt_operator.kube import Conflict, Kube, NotFound
    from tlt_operator.leader import LeaderElection

    now = [0.0]
    a, b = (LeaderElection(Kube(), NS, "lease-test", identity=who, duration=15, clock=lambda: now[0]) for who in "ab")
    leases = client.CoordinationV1Api(api.core.api_client)

    def holder():
        spec = leases.read_namespaced_lease("lease-test", NS).spec
        return spec.holder_identity, spec.lease_transitions, spec.lease_duration_seconds

    with pytest.raises(NotFound):
        Kube().read_lease(NS, "lease-test")
    assert a.try_acquire() and a.leading
    assert holder() == ("a", 0, 15)
    # A 409 from the server leaves kube as its own Conflict: a create of an existing Lease, a replace of a stale one.
    with pytest.raises(Conflict):
        Kube().create_lease({"metadata": {"name": "lease-test", "namespace": NS}, "spec": {"holderIdentity": "b"}})
    stale = Kube().read_lease(NS, "lease-test")
    assert a.try_acquire()  # renewed: a new resourceVersion
    stale["spec"]["holderIdentity"] = "b"
    with pytest.raises(Conflict):
        Kube().replace_lease(stale)
    assert holder() == ("a", 0, 15)

    assert not b.try_acquire() and not b.leading  # held by a live leader
    now[0] = 14.0
    assert not b.try_acquire()  # unchanged for 14 s of b's clock: still live
    now[0] = 16.0
    assert b.try_acquire() and b.leading  # unchanged for a whole lease: taken over
    assert holder() == ("b", 1, 15)
    assert not a.try_acquire()  # a sees the new holder

    b.release()
    assert not b.leading
    assert holder() == (None, 1, 1)
    assert a.try_acquire()  # no holder: taken at once, no lease to wait out
    assert holder() == ("a", 2, 15)
    b.release()  # not leading: nothing written
    assert holder() == ("a", 2, 15)
