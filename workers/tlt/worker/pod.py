"""What `tlt worker` does in a job's pod: join the job's Ray cluster, serve metrics, follow roles.

Every pod runs one Ray node that offers the resource `tlt.pod.<role>-<index>`, so
the coordinator pins each actor to its own pod. The head pod (trainer-0, or
worker-0 colocated) starts the Ray head and runs the coordinator; the others join
it and host their actor. In every pod a role watcher follows the operator's
`tlt.dev/assigned-role` annotation and switches the pod's actor (found by name).
Port 8080 serves `/metrics` (the pod's actor's engine metrics, plus the
coordinator's in the head pod) and `/healthz`.

Exit codes: 0 done, 1 retriable failure (the operator replaces the pod), 2 bad
configuration (permanent: a retry cannot fix it).
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tlt.api.topology import default_head_node, node_name
from tlt.coordinator.actors import NODE_RESOURCE
from tlt.worker import kube

log = logging.getLogger("tlt.worker")

RAY_PORT = 6379
METRICS_PORT = 8080
JOIN_TIMEOUT = 900.0  # seconds a pod waits for the head (image pulls, model downloads)
HEAD_LOST_SECONDS = 30.0  # a member whose head stops answering this long restarts


@dataclass(frozen=True)
class PodIdentity:
    job: str
    namespace: str
    role: str
    index: int
    head: bool
    pod_name: str
    ray_head: str  # host:port of the Ray head

    @property
    def node(self) -> str:
        """This pod's Ray node and actor name."""
        return node_name(self.role, self.index)

    @property
    def ray_namespace(self) -> str:
        return f"tlt-{self.job}"

    @classmethod
    def from_env(cls, job: str, namespace: str, role: str, index: int, head: bool, env=os.environ,
                 head_node: str | None = None) -> "PodIdentity":
        """`head_node` (`<role>-<index>`, default the trainer's or worker's first pod) names the
        head pod when TLT_RAY_HEAD (which the operator always sets) is missing."""
        namespace = env.get("POD_NAMESPACE") or namespace
        pod_name = env.get("POD_NAME") or f"{job}-{node_name(role, index)}"
        head_node = head_node or default_head_node(role)
        ray_head = env.get("TLT_RAY_HEAD") or f"{job}-{head_node}.{job}-workers.{namespace}.svc:{RAY_PORT}"
        if head and not env.get("TLT_RAY_HEAD"):
            ray_head = f"127.0.0.1:{RAY_PORT}"
        return cls(job, namespace, role, index, head, pod_name, ray_head)


# ---------------------------------------------------------------------------------
# Ray


def ray_start_command(pod: PodIdentity, env=os.environ) -> list[str]:
    """`ray start --block` for this pod's node (a child process: its exit tells the pod it lost the cluster)."""
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats",
               "--resources", json.dumps({NODE_RESOURCE.format(pod.node): 1})]
    if pod.head:
        command += ["--head", "--port", pod.ray_head.rsplit(":", 1)[1], "--include-dashboard", "false"]
    else:
        command += ["--address", pod.ray_head]
    if env.get("TLT_NUM_GPUS"):  # the pod's GPUs, as the operator set them (Ray would detect the node's)
        command += ["--num-gpus", env["TLT_NUM_GPUS"]]
    if env.get("TLT_RAY_OBJECT_STORE_BYTES"):
        command += ["--object-store-memory", env["TLT_RAY_OBJECT_STORE_BYTES"]]
    return command


def cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The container's CPU limit in whole cores (cgroup v2 `cpu.max`), or None without one."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, int(int(quota) // int(period)))


def ray_env(env=os.environ) -> dict:
    out = dict(env)
    limit = cpu_limit()
    if limit is not None:
        # torch would otherwise start a thread per core of the node, not of the pod.
        out.setdefault("OMP_NUM_THREADS", str(limit))
    out.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A job's pods carry its Ray token (RAY_AUTH_TOKEN_PATH, from the job's Secret): Ray then refuses
    # anyone without it. Without a token (a local run) there is nothing to check against.
    out.setdefault("RAY_AUTH_MODE", "token" if out.get("RAY_AUTH_TOKEN_PATH") or out.get("RAY_AUTH_TOKEN") else "disabled")
    out.setdefault("TOKENIZERS_PARALLELISM", "false")
    return out


class RayNode:
    """This pod's Ray node, and this process's connection to the job's Ray cluster."""

    def __init__(self, pod: PodIdentity, join_timeout: float = JOIN_TIMEOUT):
        self.pod = pod
        self.join_timeout = join_timeout
        self.process: subprocess.Popen | None = None
        self._head_lost_at: float | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"tlt-ray-{pod.job}-{pod.node}.log"

    def start(self) -> None:
        """Start (or join) the cluster, retrying while the head is not up yet; then connect."""
        deadline = time.monotonic() + self.join_timeout
        attempt = 0
        while True:
            attempt += 1
            with open(self.log_path, "w") as out:  # a file, not a pipe: nobody drains a pipe for days
                self.process = subprocess.Popen(ray_start_command(self.pod), env=ray_env(), stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True)
            if self._node_up(timeout=60):
                break
            err = self._stop_process()
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not join the Ray cluster at {self.pod.ray_head} after {attempt} tries: {err}")
            log.info("waiting for the Ray head at %s (try %d): %s", self.pod.ray_head, attempt, err.strip()[-300:])
            time.sleep(min(10.0, 1.0 * attempt))
        log.info("%s joined the Ray cluster at %s", self.pod.node, self.pod.ray_head)

    def _node_up(self, timeout: float) -> bool:
        """True once this pod's node is in the cluster (and this process connected to it);
        False if `ray start` gave up or the node never showed."""
        import ray

        deadline = time.monotonic() + timeout
        resource = NODE_RESOURCE.format(self.pod.node)
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if not ray.is_initialized():
                    os.environ.update({k: v for k, v in ray_env().items() if k.startswith("RAY_")})
                    ray.init(address=self.pod.ray_head, namespace=self.pod.ray_namespace, log_to_driver=False,
                             configure_logging=False, include_dashboard=False)
                if resource in ray.cluster_resources():
                    return True
            except Exception as err:  # the GCS is not up yet
                log.debug("connecting to %s: %s", self.pod.ray_head, err)
            time.sleep(1.0)
        if ray.is_initialized():
            ray.shutdown()
        return False

    def _stop_process(self) -> str:
        if self.process is None:
            return ""
        # `ray start` runs the GCS, raylet and workers in its own session: stop all of them.
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)
        self.process.wait()
        try:
            tail = self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            tail = ""
        return tail or f"exit code {self.process.returncode}"

    def _signal_group(self, sig) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def alive(self) -> bool:
        """This pod's node runs, and the head answers (a member whose head is gone must restart)."""
        if self.process is None or self.process.poll() is not None:
            return False
        if self.pod.head:
            return True
        host, port = self.pod.ray_head.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=5):
                self._head_lost_at = None
        except OSError:
            self._head_lost_at = self._head_lost_at or time.monotonic()
            return time.monotonic() - self._head_lost_at < HEAD_LOST_SECONDS
        return True

    def stop(self) -> None:
        import ray

        # Disconnecting can hang when the head is already gone: give it a few seconds only.
        done = threading.Thread(target=lambda: ray.shutdown() if ray.is_initialized() else None, daemon=True)
        done.start()
        done.join(timeout=10)
        self._stop_process()
        if done.is_alive():
            # Ray's exit hook would retry the stopped GCS for ever (seen under `tlt dev pods`, whose GCS
            # advertises the pod's fake IP): this pod's work is done and its files are closed.
            exit_now_at_end()


_EXIT_NOW = False


def exit_now_at_end() -> None:
    """Ask `tlt worker` to leave with os._exit once it has its exit code (skipping hung exit hooks)."""
    global _EXIT_NOW
    _EXIT_NOW = True


def must_exit_now() -> bool:
    return _EXIT_NOW


def wait_for_nodes(names: list[str], timeout: float = JOIN_TIMEOUT, say=log.info) -> None:
    """Block until every pod's Ray node has joined (progress said every 10 s)."""
    import ray

    deadline = time.monotonic() + timeout
    last = 0.0
    while True:
        present = ray.cluster_resources()
        missing = [n for n in names if NODE_RESOURCE.format(n) not in present]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"pods never joined the Ray cluster: {', '.join(missing)}")
        if time.monotonic() - last > 10:
            say(f"waiting for pods to join the Ray cluster: {len(names) - len(missing)}/{len(names)} (missing {', '.join(missing)})")
            last = time.monotonic()
        time.sleep(1.0)


class PodActor:
    """This pod's actor, looked up by name when asked (the coordinator creates it after every
    pod joined); calling it gives the handle, or None while it does not exist yet. A replacement
    pod may first find its predecessor's dead actor under the name: a call that fails with it
    `forget()`s the handle, and the next lookup finds the one the coordinator re-created."""

    def __init__(self, pod: PodIdentity):
        self.pod = pod
        self._handle = None

    def forget(self) -> None:
        self._handle = None

    def __call__(self):
        if self._handle is None:
            import ray

            try:
                self._handle = ray.get_actor(self.pod.node, namespace=self.pod.ray_namespace)
            except ValueError:
                return None
        return self._handle

    def wait(self, alive=lambda: True, timeout: float = JOIN_TIMEOUT):
        """The handle once the actor exists; None if the cluster went away (or time ran out) first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            if self() is not None:
                return self._handle
            time.sleep(1.0)
        return None


# ---------------------------------------------------------------------------------
# Metrics


class PodMetrics:
    """A Prometheus collector: this process's registry, then the pod actor's engine families."""

    def __init__(self, registry, actor_text=lambda: ""):
        self.registry = registry
        self.actor_text = actor_text

    def collect(self):
        from prometheus_client.parser import text_string_to_metric_families

        # Names already exposed: families, and their samples' names, since the text parser reads
        # a counter's or histogram's `_created` line back as a family of its own.
        seen = set()
        for family in self.registry.collect():
            seen.add(family.name)
            seen.update(sample.name for sample in family.samples)
            yield family
        try:
            text = self.actor_text() or ""
        except Exception:  # the actor is busy starting or gone: its metrics are missing from this scrape
            text = ""
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:  # garbled text must not cost the scrape this process's own families
            log.warning("ignoring unparsable metrics from this pod's worker")
            families = []
        for family in families:
            if family.name not in seen and not any(sample.name in seen for sample in family.samples):
                seen.add(family.name)
                seen.update(sample.name for sample in family.samples)
                yield family


def serve_metrics(collector: PodMetrics, port: int, healthy=lambda: True) -> http.server.ThreadingHTTPServer:
    """/metrics, and /healthz for the pod's probes: 200 while `healthy()`, else 503."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path.startswith("/metrics"):
                body, kind = generate_latest(registry), CONTENT_TYPE_LATEST
            elif self.path.startswith("/healthz"):
                try:
                    ok = bool(healthy())
                except Exception:
                    ok = False
                if not ok:
                    self.send_error(503, "this pod's Ray node is not in the job's Ray cluster")
                    return
                body, kind = b"ok\n", "text/plain"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # scrapes every few seconds would flood the pod's log
            pass

    server = http.server.ThreadingHTTPServer(("", port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


# ---------------------------------------------------------------------------------
# Kubernetes


def kube_api_client():
    """In a pod its ServiceAccount; elsewhere (local runs, tests) the kubeconfig."""
    return kube.api_client()


def job_finished(api_client, pod: PodIdentity) -> bool:
    """Whether the job's status counts every step done (a member pod then waits to be deleted)."""
    body = kube.WorkerApi(api_client).read_job(pod.namespace, pod.job)
    status, spec = body.get("status") or {}, body.get("spec") or {}
    return int(status.get("step") or 0) >= int((spec.get("algorithm") or {}).get("steps") or 1)


class Terminated(Exception):
    """SIGTERM: the pod is being deleted (job finished, suspended or replaced)."""


def install_sigterm() -> None:
    """The first SIGTERM raises `Terminated` (clean shutdown follows); later ones are ignored,
    so a kubelet or supervisor repeating the signal does not cut the shutdown short."""
    def on_sigterm(*_):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    signal.signal(signal.SIGTERM, on_sigterm)
