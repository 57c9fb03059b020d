"""`tlt worker` without a cluster: the job-status writer, the pod's identity, Ray command and
metrics endpoint, its exit codes on bad configuration, role switching and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from specs import manifest, with_fields
from tlt.api.crd import build_crd
from tlt.api.model import ReasoningRLJobStatus, ShardProgress
from tlt.cli import main
from tlt.net import free_port
from tlt.worker.pod import PodIdentity, PodMetrics, ray_start_command, serve_metrics
from tlt.worker.role_watcher import RoleWatcher
from tlt.worker.status import ProgressWriter

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------
# The job-status writer


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A patch function that records bodies; fails while `failing` is set."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.failing = False

    def __call__(self, body: dict) -> None:
        if self.failing:
            raise ConnectionError("API server away")
        self.bodies.append(body)


def shard(index: int, tokens: int = 0, **fields) -> ShardProgress:
    return ShardProgress(shard=index, generated_tokens=tokens, **fields)


def test_progress_reports_within_the_interval_coalesce_into_one_write_of_the_latest():
    clock, patch = FakeClock(), Recorder()
    writer = ProgressWriter(patch, interval=2.0, clock=clock)
    writer.progress(1, "rollout", [shard(0, 10)])
    assert len(patch.bodies) == 1, "the first report goes out at once"
    for dt, tokens in [(0.5, 20), (1.0, 30), (1.5, 40)]:
        clock.now = 100.0 + dt
        writer.progress(1, "rollout", [shard(0, tokens)])
    assert len(patch.bodies) == 1, "reports within 2 s of the last write wait"
    clock.now = 102.1
    writer.progress(1, "reward", [shard(0, 50)])
    assert len(patch.bodies) == 2
    latest = patch.bodies[-1]["progress"]
    assert latest["phase"] == "reward" and latest["shards"][0]["generatedTokens"] == 50


def test_an_unforced_flush_waits_for_the_interval_then_writes_the_latest():
    clock, patch = FakeClock(), Recorder()
    writer = ProgressWriter(patch, interval=2.0, clock=clock)
    writer.progress(1, "rollout", [shard(0, 10)])
    clock.now += 1.0
    writer.progress(1, "rollout", [shard(0, 20)])
    assert writer.flush(force=False) is False
    clock.now += 1.5
    assert writer.flush(force=False) is True
    assert [b["progress"]["shards"][0]["generatedTokens"] for b in patch.bodies] == [10, 20]
    assert writer.flush(force=False) is False, "nothing pending, nothing written"


def test_the_background_thread_delivers_the_last_report_without_further_calls():
    patch = Recorder()
    writer = ProgressWriter(patch, interval=0.05).start()
    try:
        writer.progress(2, "rollout", [shard(0, 1)])
        writer.progress(2, "train", [shard(0, 99)])  # within the interval: pending
        deadline = time.monotonic() + 5
        while len(patch.bodies) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(patch.bodies) == 2, "the pending report never went out"
        assert patch.bodies[-1]["progress"]["phase"] == "train"
        assert patch.bodies[-1]["progress"]["shards"][0]["generatedTokens"] == 99
    finally:
        writer.close()
    assert len(patch.bodies) == 2, "close writes nothing when nothing is pending"


def test_close_writes_what_is_still_pending():
    clock, patch = FakeClock(), Recorder()
    writer = ProgressWriter(patch, interval=2.0, clock=clock)
    writer.progress(3, "rollout", [shard(0)])
    writer.progress(3, "sync", [shard(0)])
    writer.close()
    assert [b["progress"]["phase"] for b in patch.bodies] == ["rollout", "sync"]


def test_a_completed_step_is_written_at_once_with_the_pending_progress():
    clock, patch = FakeClock(), Recorder()
    writer = ProgressWriter(patch, interval=2.0, clock=clock)
    writer.progress(5, "rollout", [shard(0)])
    clock.now += 0.1
    writer.progress(5, "sync", [shard(0, 7)])
    writer.step_completed(5, drafter_version=3, acceptance_length=2.5)
    assert len(patch.bodies) == 2
    body = patch.bodies[-1]
    assert body["step"] == 5
    assert body["drafter"] == {"version": 3, "acceptanceLength": 2.5}
    assert body["progress"]["phase"] == "sync" and body["progress"]["shards"][0]["generatedTokens"] == 7


def test_a_negative_acceptance_length_is_written_as_zero():
    patch = Recorder()
    ProgressWriter(patch).step_completed(1, drafter_version=0, acceptance_length=-1.0)
    assert patch.bodies[0]["drafter"]["acceptanceLength"] == 0.0


def test_a_failed_write_is_kept_and_the_next_flush_writes_it():
    clock, patch = FakeClock(), Recorder()
    writer = ProgressWriter(patch, interval=2.0, clock=clock)
    patch.failing = True
    writer.step_completed(4, drafter_version=1, acceptance_length=1.5)
    assert patch.bodies == [] and writer.writes == 0
    patch.failing = False
    assert writer.flush() is True
    assert patch.bodies[0]["step"] == 4 and patch.bodies[0]["drafter"]["version"] == 1


def test_a_report_newer_than_a_failed_write_wins_and_the_failed_step_is_kept():
    clock, patch = FakeClock(), Recorder()
    writer = ProgressWriter(patch, interval=2.0, clock=clock)
    patch.failing = True
    writer.progress(4, "rollout", [shard(0, 1)])
    writer.step_completed(4, drafter_version=1, acceptance_length=1.5)
    patch.failing = False
    clock.now += 0.5
    writer.progress(5, "rollout", [shard(0, 2)])  # within the interval: pending, merged with the failed body
    assert writer.flush() is True
    body = patch.bodies[-1]
    assert body["step"] == 4 and body["progress"]["step"] == 5


def test_an_older_report_never_lands_after_a_newer_one():
    """A slow background write must not overtake the write of a completed step that came later."""
    clock = FakeClock()
    written: list[dict] = []
    first_started, release = threading.Event(), threading.Event()

    def patch(body):
        if not written and not first_started.is_set():
            first_started.set()
            release.wait(5)  # the API server is slow on this one
        written.append(body)

    writer = ProgressWriter(patch, interval=2.0, clock=clock)
    slow = threading.Thread(target=writer.progress, args=(6, "rollout", [shard(0, 1)]))
    slow.start()
    assert first_started.wait(5)
    clock.now += 0.1
    writer.progress(6, "sync", [shard(0, 2)])
    done = threading.Thread(target=writer.step_completed, args=(6, 2, 1.0))
    done.start()
    time.sleep(0.1)
    release.set()
    slow.join(5)
    done.join(5)
    assert [b["progress"]["phase"] for b in written] == ["rollout", "sync"]
    assert written[-1]["step"] == 6


def crd_status_schema() -> dict:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]


def test_status_bodies_are_camel_case_and_valid_against_the_crd():
    clock, patch = FakeClock(), Recorder()
    writer = ProgressWriter(patch, interval=2.0, clock=clock)
    writer.progress(7, "rollout", [shard(1, 300, running=2, waiting=1, finished=4, speculating=True, role="rollout"),
                                   shard(0, 100, role="drafter")])
    writer.step_completed(7, drafter_version=2, acceptance_length=1.75)
    progress = patch.bodies[0]["progress"]
    assert set(progress) == {"step", "phase", "shards", "updatedAt"}
    assert progress["updatedAt"].endswith("Z")
    assert [s["shard"] for s in progress["shards"]] == [0, 1], "shards in index order"
    assert progress["shards"][1] == {"shard": 1, "running": 2, "waiting": 1, "finished": 4, "generatedTokens": 300,
                                     "speculating": True, "role": "rollout"}
    assert patch.bodies[1]["drafter"] == {"version": 2, "acceptanceLength": 1.75}
    schema = crd_status_schema()
    for body in patch.bodies:
        jsonschema.validate(body, schema)
        parsed = ReasoningRLJobStatus.model_validate(body)  # the operator's typed view of the status
        assert parsed.step == body.get("step", 0)
    assert ReasoningRLJobStatus.model_validate(patch.bodies[0]).progress.shards[1].generated_tokens == 300


def test_the_report_written_into_the_progress_config_map_is_what_the_operator_copies_into_the_status():
    from tlt.worker.status import progress_map_name, report_data
    from tlt_operator.reconcile import read_report

    clock, patch = FakeClock(), Recorder()
    writer = ProgressWriter(patch, interval=2.0, clock=clock)
    writer.progress(3, "rollout", [shard(0, 50, running=1, finished=2)])
    writer.step_completed(2, drafter_version=1, acceptance_length=2.5)
    body = {**patch.bodies[0], **patch.bodies[1]}
    data = report_data(body)
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap data holds strings"
    owned = {"metadata": {"name": progress_map_name("j"), "ownerReferences": [{"uid": "u1", "controller": True}]}, "data": data}
    assert read_report(owned, "u1") == body
    assert read_report(owned, "another-uid") == {}


# ---------------------------------------------------------------------------------
# The pod's identity and Ray node


def test_pod_identity_reads_the_pod_environment():
    env = {"POD_NAME": "j-rollout-1-x", "POD_NAMESPACE": "team", "TLT_RAY_HEAD": "j-trainer-0.j-workers.team.svc:6379"}
    pod = PodIdentity.from_env("j", "default", "rollout", 1, False, env=env)
    assert (pod.pod_name, pod.namespace, pod.ray_head) == ("j-rollout-1-x", "team", "j-trainer-0.j-workers.team.svc:6379")
    assert pod.node == "rollout-1" and pod.ray_namespace == "tlt-j"


def test_pod_identity_defaults_without_the_pod_environment():
    member = PodIdentity.from_env("j", "ns", "rollout", 2, False, env={})
    assert member.pod_name == "j-rollout-2" and member.namespace == "ns"
    assert member.ray_head == "j-trainer-0.j-workers.ns.svc:6379", "a member joins the head pod, not its own role's first pod"
    colocated = PodIdentity.from_env("j", "ns", "worker", 3, False, env={})
    assert colocated.ray_head == "j-worker-0.j-workers.ns.svc:6379"
    drafter = PodIdentity.from_env("j", "ns", "drafter", 0, False, env={}, head_node="worker-0")
    assert drafter.ray_head == "j-worker-0.j-workers.ns.svc:6379"
    head = PodIdentity.from_env("j", "ns", "trainer", 0, True, env={})
    assert head.ray_head == "127.0.0.1:6379"


def test_the_namespace_of_the_pod_names_the_default_head_address():
    pod = PodIdentity.from_env("j", "default", "rollout", 0, False, env={"POD_NAMESPACE": "team"})
    assert pod.ray_head == "j-trainer-0.j-workers.team.svc:6379"


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_head_starts_ray_on_the_port_of_tlt_ray_head_offering_its_pod_resource():
    pod = PodIdentity.from_env("j", "ns", "trainer", 0, True, env={"TLT_RAY_HEAD": "j-trainer-0.j-workers.ns.svc:7100"})
    command = ray_start_command(pod, env={})
    assert "--head" in command and "--address" not in command
    assert option(command, "--port") == "7100"
    assert json.loads(option(command, "--resources")) == {"tlt.pod.trainer-0": 1}
    assert "--block" in command


def test_a_member_joins_the_head_offering_its_pod_resource():
    pod = PodIdentity.from_env("j", "ns", "rollout", 3, False, env={"TLT_RAY_HEAD": "head.svc:7100"})
    command = ray_start_command(pod, env={"TLT_RAY_OBJECT_STORE_BYTES": "1000000"})
    assert "--head" not in command
    assert option(command, "--address") == "head.svc:7100"
    assert json.loads(option(command, "--resources")) == {"tlt.pod.rollout-3": 1}
    assert option(command, "--object-store-memory") == "1000000"


# ---------------------------------------------------------------------------------
# /metrics and /healthz


def actor_text() -> str:
    """What a pod's actor exposes: its engine families, and one that the pod's own process has too."""
    registry = CollectorRegistry()
    Counter("tlt_engine_tokens", "generated tokens", ["shard"], registry=registry).labels("0").inc(42)
    Histogram("tlt_engine_step_seconds", "engine step time", registry=registry).observe(0.3)
    Counter("tlt_test_local_steps", "the same family as this process's", registry=registry).inc(999)
    return generate_latest(registry).decode()


@pytest.fixture
def metrics_server():
    servers = []

    def start(collector, **kw):
        server = serve_metrics(collector, free_port(), **kw)
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def local_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("tlt_test_local_steps", "steps of this process", registry=registry).inc(3)
    return registry


def test_one_scrape_serves_the_pods_families_and_the_actors_each_once(metrics_server):
    base = metrics_server(PodMetrics(local_registry(), actor_text))
    status, text = get(base + "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["tlt_engine_tokens"].samples[0].value == 42.0
    assert families["tlt_engine_step_seconds"].type == "histogram"
    local = [s for s in families["tlt_test_local_steps"].samples if s.name == "tlt_test_local_steps_total"]
    assert [s.value for s in local] == [3.0], "this process's family wins over the actor's copy"
    # Prometheus rejects a whole scrape that declares a metric twice.
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), sorted(t for t in types if types.count(t) > 1)
    samples = [line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")]
    assert samples.count("tlt_test_local_steps_total") == 1 and samples.count("tlt_test_local_steps_created") == 1


def test_healthz_answers_ok_and_other_paths_are_not_found(metrics_server):
    base = metrics_server(PodMetrics(local_registry()))
    assert get(base + "/healthz") == (200, "ok\n")
    assert get(base + "/nothing")[0] == 404


def test_healthz_fails_while_the_pods_ray_node_is_not_in_the_cluster(metrics_server):
    """The pod's probes (readiness, liveness) read /healthz: it answers 503 once the node is lost."""
    alive = [True]
    base = metrics_server(PodMetrics(local_registry()), healthy=lambda: alive[0])
    assert get(base + "/healthz")[0] == 200
    alive[0] = False
    assert get(base + "/healthz")[0] == 503
    assert get(base + "/metrics")[0] == 200, "metrics are still served"


def test_ray_runs_with_the_jobs_token_when_the_pod_has_one():
    from tlt.worker.pod import ray_env

    assert ray_env({"RAY_AUTH_TOKEN_PATH": "/etc/tlt-ray/token"})["RAY_AUTH_MODE"] == "token"
    assert ray_env({})["RAY_AUTH_MODE"] == "disabled", "a local run has no token to check"


def test_an_unreachable_actor_still_leaves_the_pods_own_metrics(metrics_server):
    def gone():
        raise TimeoutError("actor busy")

    base = metrics_server(PodMetrics(local_registry(), gone))
    status, text = get(base + "/metrics")
    assert status == 200
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "tlt_test_local_steps" in names and "tlt_engine_tokens" not in names


def test_garbled_actor_metrics_still_leave_the_pods_own_metrics(metrics_server):
    base = metrics_server(PodMetrics(local_registry(), lambda: "tlt_engine_tokens_total{shard=\"0\" 42\nnot a metric line\n"))
    status, text = get(base + "/metrics")
    assert status == 200
    assert {f.name for f in text_string_to_metric_families(text)} >= {"tlt_test_local_steps"}


# ---------------------------------------------------------------------------------
# Exit codes of `tlt worker` on bad configuration (2: a retry cannot fix it)


def write(tmp_path: Path, body) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump_all(body) if isinstance(body, list) else yaml.safe_dump(body))
    return str(path)


def worker(config: str, role: str, index: int, *extra: str) -> int:
    return main(["worker", "--config", config, "--role", role, "--index", str(index), "--metrics-port", "0", *extra])


@pytest.fixture
def no_kubernetes(tmp_path, monkeypatch):
    """No in-cluster service account and no kubeconfig: the worker cannot reach the API."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))


def test_a_missing_config_file_is_a_configuration_error(tmp_path, caplog, no_kubernetes):
    assert worker(str(tmp_path / "absent.yaml"), "trainer", 0, "--head") == 2
    assert "cannot read the job config" in caplog.text and "absent.yaml" in caplog.text


def test_an_invalid_job_is_a_configuration_error_naming_the_field(tmp_path, caplog, no_kubernetes):
    config = write(tmp_path, with_fields(manifest("j"), **{"rollout.replicas": 0}))
    assert worker(config, "trainer", 0, "--head") == 2
    assert "spec.rollout.replicas" in caplog.text


def test_a_config_with_several_jobs_is_a_configuration_error(tmp_path, caplog, no_kubernetes):
    config = write(tmp_path, [manifest("a"), manifest("b")])
    assert worker(config, "trainer", 0, "--head") == 2
    assert "2 jobs" in caplog.text


def test_a_role_the_placement_lacks_is_a_configuration_error_naming_the_pods(tmp_path, caplog, no_kubernetes):
    config = write(tmp_path, with_fields(manifest("j"), **{"rollout.replicas": 2}))
    assert worker(config, "worker", 0, "--head") == 2
    assert "trainer-0, rollout-0, rollout-1" in caplog.text


def test_an_index_beyond_the_replicas_is_a_configuration_error(tmp_path, caplog, no_kubernetes):
    config = write(tmp_path, manifest("j"))
    assert worker(config, "rollout", 5) == 2
    assert "--index 5" in caplog.text and "its pods are trainer-0, rollout-0" in caplog.text


def test_head_on_a_pod_that_is_not_the_head_is_a_configuration_error(tmp_path, caplog, no_kubernetes):
    config = write(tmp_path, manifest("j"))
    assert worker(config, "rollout", 0, "--head") == 2
    assert "head pod is trainer-0, not rollout-0" in caplog.text


def test_the_head_pod_without_head_is_a_configuration_error(tmp_path, caplog, no_kubernetes):
    config = write(tmp_path, manifest("j"))
    assert worker(config, "trainer", 0) == 2
    assert "trainer-0 is the job's head pod" in caplog.text


def test_a_valid_pod_without_kubernetes_access_is_a_configuration_error(tmp_path, caplog, no_kubernetes):
    config = write(tmp_path, yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text()))
    assert worker(config, "rollout", 1) == 2
    assert "no access to the Kubernetes API" in caplog.text


# ---------------------------------------------------------------------------------
# Role switching in the pod


class FakeApi:
    """The worker's API I/O (`tlt.worker.kube.WorkerApi`) as far as the role watcher uses it."""

    def __init__(self):
        self.patches: list[tuple[str, str, dict]] = []

    def label_pod(self, namespace, name, labels):
        self.patches.append((name, namespace, labels))


def pod_metadata(assigned: str | None = None, active: str | None = None, name: str = "j-rollout-0") -> dict:
    labels = {"tlt.dev/role": "rollout", **({"tlt.dev/active-role": active} if active else {})}
    return {"name": name, "labels": labels, "annotations": {"tlt.dev/assigned-role": assigned} if assigned else {}}


def active_labels(core: FakeApi) -> list[str]:
    return [labels["tlt.dev/active-role"] for _, _, labels in core.patches]


def test_a_refused_role_switch_keeps_the_old_role_and_label_and_is_applied_on_the_next_event():
    asked, accept = [], {"drafter": False}

    def set_role(role):
        asked.append(role)
        return accept.get(role, True)

    watcher = RoleWatcher(set_role, pod_name="j-rollout-0", namespace="ns")
    watcher.api = core = FakeApi()
    watcher.handle(pod_metadata())
    assert watcher.active == "rollout" and active_labels(core) == ["rollout"]

    watcher.handle(pod_metadata(assigned="drafter", active="rollout"))
    assert asked == ["rollout", "drafter"]
    assert watcher.active == "rollout", "a refused switch keeps the role the worker still runs"
    assert active_labels(core) == ["rollout"], "the label must not claim a role the worker refused"

    accept["drafter"] = True
    watcher.handle(pod_metadata(assigned="drafter", active="rollout"))
    assert watcher.active == "drafter"
    assert active_labels(core) == ["rollout", "drafter"]
    assert core.patches[-1][:2] == ("j-rollout-0", "ns")


def test_a_refused_role_switch_is_asked_again_without_a_new_event(monkeypatch):
    import tlt.worker.role_watcher as role_watcher

    monkeypatch.setattr(role_watcher, "RETRY_SECONDS", 0.05)
    asked, accept = [], {"drafter": False}

    def set_role(role):
        asked.append(role)
        return accept.get(role, True)

    watcher = RoleWatcher(set_role, pod_name="j-rollout-0", namespace="ns")
    watcher.api = core = FakeApi()
    watcher.handle(pod_metadata(assigned="drafter", active="rollout"))
    assert watcher.active is None and active_labels(core) == []
    accept["drafter"] = True  # the shard drained meanwhile; no pod event follows
    deadline = time.monotonic() + 5
    while watcher.active != "drafter" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert watcher.active == "drafter" and active_labels(core) == ["drafter"]
    watcher.stop()


def test_an_accepted_role_is_not_asked_for_again():
    asked = []
    watcher = RoleWatcher(lambda role: asked.append(role), pod_name="j-rollout-0", namespace="ns")
    watcher.api = core = FakeApi()
    watcher.handle(pod_metadata(assigned="drafter"))
    watcher.handle(pod_metadata(assigned="drafter", active="drafter"))
    assert asked == ["drafter"] and active_labels(core) == ["drafter"]


def test_events_of_other_pods_are_ignored():
    asked = []
    watcher = RoleWatcher(asked.append, pod_name="j-rollout-0", namespace="ns")
    watcher.api = core = FakeApi()
    watcher.handle(pod_metadata(assigned="drafter", name="j-rollout-1"))
    assert asked == [] and core.patches == []


def test_the_api_s_refusals_reach_the_worker_as_its_own_error_and_a_member_reads_whether_its_job_finished():
    from kubernetes.client.rest import ApiException

    from tlt.worker.kube import ApiError, WorkerApi
    from tlt.worker.pod import job_finished

    class RefusingCore:
        def patch_namespaced_pod(self, name, namespace, body):
            raise ApiException(status=403, reason="Forbidden")

    class Jobs:
        def __init__(self, step):
            self.step, self.asked = step, []

        def get_namespaced_custom_object(self, group, version, namespace, plural, name):
            self.asked.append((group, version, namespace, plural, name))
            return {"spec": {"algorithm": {"steps": 3}}, "status": {"step": self.step}}

    api = WorkerApi()
    api.core = RefusingCore()
    with pytest.raises(ApiError) as refused:
        api.label_pod("ns", "j-rollout-0", {"tlt.dev/active-role": "drafter"})
    assert (refused.value.status, refused.value.reason) == (403, "Forbidden")

    pod = PodIdentity("j", "team", "rollout", 0, False, "j-rollout-0-x", "h:6379")
    for step, finished in ((2, False), (3, True)):
        jobs = Jobs(step)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(WorkerApi, "__init__", lambda self, api_client=None: setattr(self, "custom", jobs))
            assert job_finished(None, pod) is finished
        assert jobs.asked == [("tlt.dev", "v1alpha1", "team", "reasoningrljobs", "j")]


# ---------------------------------------------------------------------------------
# SIGTERM


SIGTERM_CHILD = """
import signal, sys, time
from tlt.worker.pod import Terminated, install_sigterm

install_sigterm()
try:
    print("ready", flush=True)  # inside the try: the signal may arrive as soon as the parent reads this
    time.sleep(30)
    print("no signal", flush=True)
    sys.exit(3)
except Terminated:
    print("terminated", flush=True)
    time.sleep(1.0)  # the shutdown; a second SIGTERM arrives here
    print("shut down", flush=True)
sys.exit(0)
"""


def test_the_first_sigterm_starts_a_clean_shutdown_that_a_second_one_does_not_cut_short():
    child = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGTERM)
        assert child.stdout.readline().strip() == "terminated"
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert out.strip() == "shut down"


def test_the_pods_cpu_limit_bounds_torch_threads(tmp_path):
    from tlt.worker.pod import cpu_limit

    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cpu_limit(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_limit(tmp_path) is None
    assert cpu_limit(tmp_path / "nowhere") is None
