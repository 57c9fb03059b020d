"""Run a job's pods as local processes: kwok fakes the kubelet's nodes, this fakes its containers.

On the dev control plane (`tlt dev cluster up`) pods are scheduled onto kwok nodes
and reported Running, but nothing runs. `LocalPods` runs each pod's container
command (`tlt worker ...`) on this machine, the way a kubelet would:
- the environment of the pod spec, with `fieldRef`s resolved, and its ConfigMap and
  Secret volumes (the job's config, its Ray token) written to local folders, paths
  in the command and environment pointing there;
- logged in as the pod's own ServiceAccount (a TokenRequest token, as the kubelet
  projects one), so the pod's RBAC is what the worker really has;
- the Ray head address and the trainer's rendezvous (MASTER_ADDR/PORT) rewritten to
  loopback, a free metrics port per pod;
- a pod deleted (or being deleted) gets SIGTERM; a process that exits has its
  pod's status written as a kubelet would (phase, container exit code: 128 + the
  signal for a killed process), so the operator sees real exit codes; a
  replacement pod is started when it appears.
This is how the test suite runs whole jobs through the operator without Docker.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from tlt.net import free_port

CONFIG_DIR = "/etc/tlt"


def service_account_kubeconfig(admin_kubeconfig: Path, namespace: str, account: str, path: Path, kubectl: str = "kubectl") -> Path:
    """A kubeconfig that logs in as `account`, with a one-day TokenRequest token."""
    token = subprocess.run([kubectl, "--kubeconfig", str(admin_kubeconfig), "create", "token", account, "-n", namespace,
                            "--duration=24h"], check=True, capture_output=True, text=True).stdout.strip()
    admin = yaml.safe_load(Path(admin_kubeconfig).read_text())
    cluster = admin["clusters"][0]
    body = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": cluster["name"], "user": account, "namespace": namespace}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(body))
    path.chmod(0o600)
    return path


def exit_code(returncode: int) -> int:
    """A container's exit code as a kubelet reports it: a process killed by signal N exits 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def local_path(value: str, mounts: dict[str, Path]) -> str:
    """`value` with a mount path of the pod (`/etc/tlt/job.yaml`) replaced by its local folder."""
    for mount in sorted(mounts, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(mounts[mount]) + value[len(mount.rstrip("/")):]
    return value


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class LocalPod:
    name: str
    uid: str
    process: subprocess.Popen
    log_path: Path
    metrics_port: int
    started_at: str = field(default_factory=_now)
    reported: bool = False
    terminating_since: float | None = None


class LocalPods:
    """Keeps local processes in step with one job's pods (call `sync()`, or `start()` a thread)."""

    def __init__(self, api_client, namespace: str, job: str, *, workdir: Path, env: dict[str, str] | None = None, log=print):
        from kubernetes import client

        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.job = job
        self.workdir = Path(workdir)
        self.extra_env = env or {}
        self.say = log
        self.grace_seconds = 30.0  # the pod default terminationGracePeriodSeconds
        self.ray_port = free_port()
        self.rendezvous_port = free_port()  # the trainer ranks' (MASTER_PORT), one per job like Ray's
        self.pods: dict[str, LocalPod] = {}
        self.exits: dict[str, int] = {}  # pod name (of the last process run for it) -> exit code
        self.starts: dict[str, int] = {}  # pod name -> processes started for it (a replaced pod's name runs again)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---- one pass ----
    def sync(self) -> None:
        with self._lock:
            listed = self.core.list_namespaced_pod(self.namespace, label_selector=f"tlt.dev/job={self.job}").items
            by_name = {p.metadata.name: p for p in listed}
            for name, local in list(self.pods.items()):
                pod = by_name.get(name)
                gone = pod is None or pod.metadata.uid != local.uid or pod.metadata.deletion_timestamp is not None
                code = local.process.poll()
                if gone and code is None:
                    # As a kubelet: SIGTERM once, SIGKILL after the grace period.
                    if local.terminating_since is None:
                        local.terminating_since = time.monotonic()
                        self.say(f"[pods] {name}: deleted, SIGTERM")
                        local.process.send_signal(signal.SIGTERM)
                    elif time.monotonic() - local.terminating_since > self.grace_seconds:
                        self.say(f"[pods] {name}: still running after {self.grace_seconds:.0f}s, SIGKILL")
                        os.killpg(local.process.pid, signal.SIGKILL)
                elif code is not None and not local.reported:
                    local.reported = True
                    code = exit_code(code)
                    self.exits[name] = code
                    self.say(f"[pods] {name}: exited with {code}")
                    if not gone:
                        self._report_exit(name, local, code)
                if gone and code is not None:
                    del self.pods[name]
            for name, pod in by_name.items():
                if name in self.pods or pod.metadata.deletion_timestamp is not None:
                    continue
                if not pod.spec.node_name or (pod.status.phase not in ("Pending", "Running")):
                    continue
                self.pods[name] = self._start(pod)
                self.starts[name] = self.starts.get(name, 0) + 1

    def crash(self, name: str) -> list[int]:
        """Kill every process of a pod at once (its worker and its Ray node), as a container crash or
        an OOM kill of the whole cgroup does; the pids killed."""
        pids = leftover_pids(self.workdir / name)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return pids

    # ---- starting a container ----
    def _start(self, pod) -> LocalPod:
        name = pod.metadata.name
        folder = self.workdir / name
        (folder / "config").mkdir(parents=True, exist_ok=True)
        mounts = self._write_volumes(pod, folder)
        container = pod.spec.containers[0]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        env.update({k: local_path(v, mounts) for k, v in self._container_env(pod, container).items()})
        metrics_port = free_port()
        env.update({
            "KUBECONFIG": str(self._pod_kubeconfig(pod, folder)),
            "TLT_RAY_HEAD": f"127.0.0.1:{self.ray_port}",
            **({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(self.rendezvous_port)} if "MASTER_ADDR" in env else {}),
            "TLT_METRICS_PORT": str(metrics_port),
            "TLT_CONFIG": str(folder / "config" / "job.yaml"),
            **self.extra_env,
        })
        command = [local_path(a, mounts) for a in container.command]
        if command and command[0] == "tlt":
            command = [sys.executable, "-m", "tlt.cli", *command[1:]]
        log_path = folder / "container.log"
        with open(log_path, "ab") as out:
            process = subprocess.Popen(command, env=env, cwd=str(folder), stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.say(f"[pods] {name}: started `{' '.join(container.command)}` (pid {process.pid}, log {log_path})")
        return LocalPod(name, pod.metadata.uid, process, log_path, metrics_port)

    def _write_volumes(self, pod, folder: Path) -> dict[str, Path]:
        """The pod's ConfigMap and Secret volumes as local folders (the config at `folder/config`):
        mount path -> local folder."""
        mounts = {m.name: m.mount_path for m in pod.spec.containers[0].volume_mounts or []}
        out = {}
        for volume in pod.spec.volumes or []:
            path = mounts.get(volume.name)
            if path is None:
                continue
            if volume.config_map is not None:
                data = self.core.read_namespaced_config_map(volume.config_map.name, self.namespace).data or {}
                files = {k: v.encode() for k, v in data.items()}
            elif volume.secret is not None:
                data = self.core.read_namespaced_secret(volume.secret.secret_name, self.namespace).data or {}
                files = {k: base64.b64decode(v) for k, v in data.items()}
            else:
                continue
            local = folder / "config" if path == CONFIG_DIR else folder / "volumes" / volume.name
            local.mkdir(parents=True, exist_ok=True)
            for key, content in files.items():
                (local / key).write_bytes(content)
                if volume.secret is not None:
                    (local / key).chmod(0o600)
            out[path] = local
        return out

    def _pod_kubeconfig(self, pod, folder: Path) -> Path:
        """A kubeconfig logging in as the pod's ServiceAccount, with a TokenRequest token (what the
        kubelet projects into a pod)."""
        account = pod.spec.service_account_name or "default"
        token = self.core.create_namespaced_service_account_token(
            account, self.namespace, {"spec": {"expirationSeconds": 86400}}).status.token
        config = self.api_client.configuration
        cluster = {"server": config.host}
        if config.ssl_ca_cert:
            cluster["certificate-authority-data"] = base64.b64encode(Path(config.ssl_ca_cert).read_bytes()).decode()
        body = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": cluster}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": account, "context": {"cluster": "cluster", "user": account, "namespace": self.namespace}}],
            "current-context": account,
        }
        path = folder / "pod.kubeconfig"
        path.write_text(yaml.safe_dump(body))
        path.chmod(0o600)
        return path

    @staticmethod
    def _container_env(pod, container) -> dict[str, str]:
        env = {}
        fields = {"metadata.name": pod.metadata.name, "metadata.namespace": pod.metadata.namespace,
                  "status.podIP": pod.status.pod_ip or "127.0.0.1"}
        for var in container.env or []:
            if var.value is not None:
                env[var.name] = var.value
            elif var.value_from is not None and var.value_from.field_ref is not None:
                env[var.name] = fields.get(var.value_from.field_ref.field_path, "")
        return env

    # ---- what a kubelet reports ----
    def _report_exit(self, name: str, local: LocalPod, code: int) -> None:
        status = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
            "containerStatuses": [{
                "name": "tlt", "ready": False, "restartCount": 0, "image": "local", "imageID": "",
                "state": {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                         "startedAt": local.started_at, "finishedAt": _now()}},
            }],
        }
        try:
            self.core.patch_namespaced_pod_status(name, self.namespace, {"status": status})
        except Exception as err:  # deleted meanwhile
            self.say(f"[pods] {name}: could not report the exit: {err}")

    # ---- background ----
    def start(self, interval: float = 0.5) -> "LocalPods":
        def loop():
            while not self._stop.is_set():
                try:
                    self.sync()
                except Exception as err:
                    self.say(f"[pods] sync failed: {err}")
                self._stop.wait(interval)

        self._thread = threading.Thread(target=loop, name="local-pods", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30) -> list[int]:
        """Stop syncing and terminate every process (SIGTERM, then SIGKILL of its session), then
        whatever the pods left running (their Ray nodes): the pids of those leftovers."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for local in self.pods.values():
            if local.process.poll() is None:
                local.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for local in self.pods.values():
            try:
                local.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(local.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return stop_leftovers(self.workdir)

    def logs(self, name: str, tail: int = 4000) -> str:
        local = self.pods.get(name)
        path = local.log_path if local else self.workdir / name / "container.log"
        try:
            return path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""


def leftover_pids(workdir: Path) -> list[int]:
    """Processes started for the local pods in `workdir` that still run.

    A pod's Ray node (`ray start --block`, its raylet, agents and workers) runs in a
    session of its own, so stopping the pod's process group misses it when the pod
    process died without stopping it (killed, or a signal it did not handle). Every
    one of them inherited the pod's environment, whose TLT_CONFIG lies in `workdir`.
    """
    marker = f"TLT_CONFIG={workdir.resolve()}/".encode()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:  # not Linux: nothing to look at
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[-1].split()[0]
        except OSError:  # gone, or not ours to read
            continue
        if state != b"Z" and any(var.startswith(marker) for var in environ.split(b"\0")):
            found.append(int(entry))
    return sorted(found)


def stop_leftovers(workdir: Path, grace: float = 5.0) -> list[int]:
    """SIGTERM what `leftover_pids` finds, SIGKILL what is still there after `grace` seconds."""
    pids = leftover_pids(workdir)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline and set(leftover_pids(workdir)) & set(pids):
        time.sleep(0.2)
    for pid in set(leftover_pids(workdir)) & set(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return pids
