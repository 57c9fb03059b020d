"""A real Kubernetes control plane on loopback, for tests and local development.

`DevCluster` starts, from the binaries `scripts/build-controlplane.sh` builds:

1. etcd (single member, no fsync: test data only),
2. kube-apiserver with generated certificates (ECDSA P-256, made with openssl),
   service-account signing keys, RBAC on (`--authorization-mode=Node,RBAC`),
3. kube-controller-manager (all default controllers: garbage collector, namespace,
   service-account and token controllers, deployments, jobs, ...),
4. kube-scheduler,
5. kwok, which plays the kubelet of fake nodes: it keeps their leases and status,
   and marks the pods bound to them Running and Ready,

then creates fake nodes: GPU nodes with `nvidia.com/gpu` capacity, the labels of
NVIDIA's GPU feature discovery and the taint `nvidia.com/gpu=present:NoSchedule`,
and CPU nodes without taints. All ports are free loopback ports picked at start.

Everything lives in a state folder (default `.cache/dev-cluster/`): certificates,
kubeconfigs (`admin.kubeconfig` for people and tests), etcd data, one log per
component under `logs/`, and `state.json` with the process ids, so that
`tlt dev cluster down` can stop a cluster started by another process. Each
component runs in its own process group; `stop()` ends the groups (SIGTERM, then
SIGKILL). A cluster started with `owned=True` (the pytest fixture) also stops at
interpreter exit, and its components get SIGTERM if the starting process dies
(PR_SET_PDEATHSIG), so no process outlives a test session.
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import hashlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from tlt.dev.tools import ToolMissing, cache_dir, kubectl_path, repo_root
from tlt.net import free_port

CONTROLPLANE_SRC = Path("e2e") / "controlplane"
MULTICALL = "tlt-controlplane"
# Stop order: the components that talk to the apiserver first, etcd last.
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.244.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}


class ClusterError(RuntimeError):
    """The control plane could not be started or reached; the message says why."""


class ControlPlaneNotBuilt(ToolMissing):
    """The control-plane binaries are not built for the current sources."""


# --------------------------------------------------------------------------- binaries


def build_key(src: Path | None = None) -> str:
    """`<k8s version>-<hash>`: the folder scripts/build-controlplane.sh builds into.

    Same recipe as the script: sha256 over sha256sum's lines for go.mod, go.sum and
    the sorted .go files under cmd/, first 12 hex digits.
    """
    src = src or repo_root() / CONTROLPLANE_SRC
    version = ""
    for line in (src / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "k8s.io/kubernetes" and parts[1].startswith("v"):
            version = parts[1]
            break
    if not version:
        raise ClusterError(f"no k8s.io/kubernetes requirement in {src / 'go.mod'}")
    files = ["go.mod", "go.sum"] + sorted(
        str(p.relative_to(src)) for p in (src / "cmd").rglob("*.go")
    )
    listing = "".join(f"{hashlib.sha256((src / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    return f"{version}-{hashlib.sha256(listing.encode()).hexdigest()[:12]}"


def controlplane_bin_dir() -> Path:
    """The folder holding `tlt-controlplane` and its component symlinks.

    $TLT_CONTROLPLANE_BIN overrides; otherwise `<cache>/controlplane/<build_key()>/bin`.
    """
    env = os.environ.get("TLT_CONTROLPLANE_BIN")
    if env:
        return Path(env).resolve()
    return cache_dir() / "controlplane" / build_key() / "bin"


def controlplane_binary() -> Path:
    """The multi-call binary; ControlPlaneNotBuilt with the command to run if missing."""
    path = controlplane_bin_dir() / MULTICALL
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ControlPlaneNotBuilt(
            f"the control plane is not built for the current sources ({path} is missing): "
            "run scripts/build-controlplane.sh (cold: about 10 min on an idle 2-core machine, "
            "25 under load; afterwards it reuses the build)"
        )
    return path


# --------------------------------------------------------------------------- helpers


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as err:
        return f"(no log: {err})"
    return "\n".join(text[-lines:]) or "(empty log)"


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if not exe:
        raise ToolMissing("openssl is needed to make the cluster's certificates (apt-get install openssl)")
    result = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------- nodes


@dataclass
class NodePool:
    """Fake nodes of one shape."""

    prefix: str
    count: int
    cpu: str = "32"
    memory: str = "256Gi"
    gpus: int = 0
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    gpu_memory_mib: int = 81559
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict] = field(default_factory=list)  # extra taints, e.g. to fence off a test's nodes

    def manifests(self) -> list[dict]:
        out = []
        for i in range(self.count):
            name = f"{self.prefix}-{i}"
            labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "node.kubernetes.io/instance-type": f"kwok-{self.prefix}",
                **self.labels,
            }
            capacity = {"cpu": self.cpu, "memory": self.memory, "pods": "110", "ephemeral-storage": "1Ti"}
            taints = [dict(t) for t in self.taints]
            if self.gpus:
                labels.update({
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.count": str(self.gpus),
                    "nvidia.com/gpu.product": self.gpu_product,
                    "nvidia.com/gpu.memory": str(self.gpu_memory_mib),
                })
                capacity[GPU_RESOURCE] = str(self.gpus)
                taints.append(dict(GPU_TAINT))
            out.append({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": labels,
                    "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                },
                "spec": {"taints": taints} if taints else {},
                # Nodes keep their status on create (the kubelet registers that way);
                # kwok's node-initialize stage fills in conditions, addresses and info.
                "status": {"capacity": capacity, "allocatable": dict(capacity)},
            })
        return out


def default_pools(gpu_nodes: int = 2, gpus_per_node: int = 4, cpu_nodes: int = 1) -> list[NodePool]:
    return [
        NodePool(prefix="kwok-gpu", count=gpu_nodes, gpus=gpus_per_node),
        NodePool(prefix="kwok-cpu", count=cpu_nodes),
    ]


# --------------------------------------------------------------------------- cluster


@dataclass
class State:
    """What `down` and `env` need to know about a running cluster (state.json)."""

    binary: str
    ports: dict[str, int]
    pids: dict[str, int] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)


class DevCluster:
    """etcd + kube-apiserver + controller-manager + scheduler + kwok in `state_dir`."""

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        pools: list[NodePool] | None = None,
        binary: Path | None = None,
        owned: bool = False,
        log: Callable[[str], None] | None = None,
        start_timeout: float = 180.0,
    ):
        self.state_dir = Path(state_dir) if state_dir else cache_dir() / "dev-cluster"
        self.pools = default_pools() if pools is None else pools
        self._binary = binary
        self.owned = owned
        self.log = log or (lambda msg: None)
        self.start_timeout = start_timeout
        self.procs: dict[str, subprocess.Popen] = {}
        self.state: State | None = None
        self._atexit = False

    # ---- paths

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "admin.kubeconfig"

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def binary(self) -> Path:
        if self._binary is None:
            self._binary = controlplane_binary()
        return self._binary

    @property
    def server(self) -> str:
        assert self.state is not None
        return f"https://127.0.0.1:{self.state.ports['apiserver']}"

    # ---- state of an existing cluster

    @classmethod
    def load(cls, state_dir: Path | str | None = None, **kwargs) -> "DevCluster":
        """The cluster recorded in `state_dir` (for `down` and `env`); state None if none."""
        cluster = cls(state_dir, **kwargs)
        if cluster.state_file.exists():
            data = json.loads(cluster.state_file.read_text())
            cluster.state = State(**data)
            cluster._binary = Path(cluster.state.binary)
        return cluster

    def running(self) -> dict[str, int]:
        """Component -> pid for the recorded processes still alive."""
        if not self.state:
            return {}
        return {n: p for n, p in self.state.pids.items() if _pid_alive(p) and self._is_ours(p)}

    def _is_ours(self, pid: int) -> bool:
        if pid in {p.pid for p in self.procs.values()}:
            return True
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return False
        # " (deleted)": the build was replaced while the cluster ran; still ours.
        exe = exe.removesuffix(" (deleted)")
        return self.state is not None and Path(exe).name == MULTICALL \
            and Path(exe) == Path(self.state.binary).resolve()

    def _save(self) -> None:
        assert self.state is not None
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=2))
        tmp.replace(self.state_file)

    # ---- start

    def start(self) -> "DevCluster":
        """Start everything and wait until it is usable; ClusterError (with log tails) if not."""
        existing = DevCluster.load(self.state_dir)
        if existing.running():
            raise ClusterError(
                f"a cluster is already running from {self.state_dir} "
                f"(pids {existing.running()}); run `tlt dev cluster down --state-dir {self.state_dir}` first"
            )
        binary = self.binary  # raises ControlPlaneNotBuilt early
        t0 = time.monotonic()
        if self.owned and not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        try:
            self._prepare(binary)
            self._start_etcd()
            self._start_apiserver()
            self._start_controllers()
            self._create_nodes()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.log(f"cluster up in {time.monotonic() - t0:.1f}s: KUBECONFIG={self.kubeconfig}")
        return self

    def _prepare(self, binary: Path) -> None:
        for sub in ("etcd", "logs", "pki", "certs"):
            path = self.state_dir / sub
            if sub in ("etcd", "logs", "certs") and path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True, exist_ok=True)
        ports = {name: free_port() for name in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")}
        self.state = State(binary=str(binary), ports=ports)
        self._save()
        self._make_pki()
        self._make_kubeconfigs()
        stages = subprocess.run([str(binary), "kwok-stages"], capture_output=True, text=True)
        if stages.returncode != 0:
            raise ClusterError(f"{binary} kwok-stages failed: {stages.stderr}")
        (self.state_dir / "kwok-stages.yaml").write_text(stages.stdout)

    # certificates: one CA signs the serving certificate and the client certificates.
    def _make_pki(self) -> None:
        pki = self.pki
        # The CA and the service-account key survive a restart in the same state folder
        # (a kubeconfig copied elsewhere keeps working); the rest is made anew.
        if not ((pki / "ca.crt").exists() and (pki / "ca.key").exists() and (pki / "sa.key").exists()):
            for f in pki.glob("*"):
                f.unlink()
            _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ca.key", cwd=pki)
            _openssl(
                "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=tlt-dev-ca", "-days", "3650",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
                "-out", "ca.crt", cwd=pki,
            )
            _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "sa.key", cwd=pki)
            _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
        # Leaf certificates are made fresh each start (the SANs name this start's host).
        self._leaf("apiserver", "/CN=kube-apiserver", "serverAuth", sans=[
            "IP:127.0.0.1", "IP:::1", f"IP:{SERVICE_IP}", "DNS:localhost", "DNS:kubernetes",
            "DNS:kubernetes.default", "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
        ])
        self._leaf("admin", "/O=system:masters/CN=tlt-dev-admin", "clientAuth")
        self._leaf("controller-manager", "/CN=system:kube-controller-manager", "clientAuth")
        self._leaf("scheduler", "/CN=system:kube-scheduler", "clientAuth")
        # kwok plays the kubelet of many nodes; the Node authorizer binds one identity
        # to one node, so it gets cluster-admin like kwokctl gives it.
        self._leaf("kwok", "/O=system:masters/CN=kwok", "clientAuth")

    def _leaf(self, name: str, subject: str, usage: str, sans: list[str] | None = None) -> None:
        pki = self.pki
        ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
               f"extendedKeyUsage={usage}"]
        if sans:
            ext.append("subjectAltName=" + ",".join(sans))
        (pki / f"{name}.ext").write_text("\n".join(ext) + "\n")
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key", cwd=pki)
        _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-set_serial", "0x" + os.urandom(16).hex(), "-days", "365",
            "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki,
        )
        (pki / f"{name}.csr").unlink()
        (pki / f"{name}.ext").unlink()

    def _kubeconfig_text(self, user: str) -> str:
        assert self.state is not None
        pki = self.pki
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "tlt-dev", "cluster": {
                "server": self.server, "certificate-authority-data": _b64(pki / "ca.crt")}}],
            "users": [{"name": user, "user": {
                "client-certificate-data": _b64(pki / f"{user}.crt"),
                "client-key-data": _b64(pki / f"{user}.key")}}],
            "contexts": [{"name": "tlt-dev", "context": {"cluster": "tlt-dev", "user": user, "namespace": "default"}}],
            "current-context": "tlt-dev",
        }
        return json.dumps(config, indent=2)  # JSON is YAML

    def _make_kubeconfigs(self) -> None:
        for user in ("admin", "controller-manager", "scheduler", "kwok"):
            path = self.state_dir / f"{user}.kubeconfig"
            path.write_text(self._kubeconfig_text(user))
            path.chmod(0o600)

    # ---- processes

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        assert self.state is not None
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                [name, *args],
                executable=str(self.binary),  # argv[0] = component name selects it
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                start_new_session=True,  # own process group: stop() ends the whole group
                preexec_fn=_set_pdeathsig if self.owned else None,
                env=self._child_env(),
            )
        self.procs[name] = proc
        self.state.pids[name] = proc.pid
        self._save()
        return proc

    def _child_env(self) -> dict[str, str]:
        env = {**os.environ, "HOME": str(self.state_dir)}  # kwok reads ~/.kwok
        if self.owned:
            # The binary stops itself when this process dies (see e2e/controlplane/.../parent.go).
            env["TLT_PARENT_PID"] = str(os.getpid())
        else:
            env.pop("TLT_PARENT_PID", None)
        return env

    def _wait(self, name: str, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        proc = self.procs.get(name)
        last_err = ""
        while True:
            if proc is not None and proc.poll() is not None:
                raise ClusterError(
                    f"{name} exited with code {proc.returncode} while waiting for {what}; "
                    f"last lines of {self.logs / (name + '.log')}:\n{log_tail(self.logs / (name + '.log'))}"
                )
            try:
                if check():
                    return
            except Exception as err:  # noqa: BLE001 - any failure means "not yet"
                last_err = f"{type(err).__name__}: {err}"
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{name}: {what} not reached within {timeout:.0f}s"
                    + (f" (last error: {last_err})" if last_err else "")
                    + f"; last lines of {self.logs / (name + '.log')}:\n{log_tail(self.logs / (name + '.log'))}"
                )
            time.sleep(0.25)

    def _https_ok(self, port: int, path: str, client: str | None) -> bool:
        if client:
            ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
            ctx.load_cert_chain(str(self.pki / f"{client}.crt"), str(self.pki / f"{client}.key"))
        else:  # controller-manager and scheduler serve self-signed certificates
            ctx = ssl._create_unverified_context()  # noqa: S323 - loopback health check
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=ctx, timeout=5) as resp:
            return resp.status == 200

    def _start_etcd(self) -> None:
        assert self.state is not None
        p = self.state.ports
        self._spawn("etcd", [
            "--name=tlt-dev",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{p['etcd']}",
            f"--listen-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
            "--unsafe-no-fsync",
            "--quota-backend-bytes=4294967296",
            "--log-level=warn",
        ])

        def healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{p['etcd']}/health", timeout=5) as resp:
                return json.loads(resp.read()).get("health") == "true"

        self._wait("etcd", healthy, 60, "/health")
        self.log(f"etcd ready on 127.0.0.1:{p['etcd']}")

    def _start_apiserver(self) -> None:
        assert self.state is not None
        p, pki = self.state.ports, self.pki
        self._spawn("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={p['apiserver']}",
            f"--cert-dir={self.state_dir / 'certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--enable-priority-and-fairness=false",  # fewer moving parts on 2 cores
            "--profiling=false",
            "--v=1",
        ])
        self._wait("kube-apiserver", lambda: self._https_ok(p["apiserver"], "/readyz", "admin"),
                   self.start_timeout, "/readyz")
        self.log(f"kube-apiserver ready on {self.server}")

    def _start_controllers(self) -> None:
        assert self.state is not None
        p, pki, sd = self.state.ports, self.pki, self.state_dir
        kcm_kc = sd / "controller-manager.kubeconfig"
        sched_kc = sd / "scheduler.kubeconfig"
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={kcm_kc}",
            f"--authentication-kubeconfig={kcm_kc}",
            f"--authorization-kubeconfig={kcm_kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['controller-manager']}",
            f"--cert-dir={sd / 'certs'}",
            "--controllers=*",  # the default set: garbage collector, namespace, serviceaccount, token, ...
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ])
        self._spawn("kube-scheduler", [
            f"--kubeconfig={sched_kc}",
            f"--authentication-kubeconfig={sched_kc}",
            f"--authorization-kubeconfig={sched_kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['scheduler']}",
            f"--cert-dir={sd / 'certs'}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ])
        self._spawn("kwok", [
            f"--kubeconfig={sd / 'kwok.kubeconfig'}",
            f"--config={sd / 'kwok-stages.yaml'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            f"--cidr={POD_CIDR}",
            "--node-ip=127.0.0.1",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{p['kwok']}",
        ])
        self._wait("kube-controller-manager", lambda: self._https_ok(p["controller-manager"], "/healthz", None),
                   self.start_timeout, "/healthz")
        self._wait("kube-scheduler", lambda: self._https_ok(p["scheduler"], "/healthz", None),
                   self.start_timeout, "/healthz")
        self.log("kube-controller-manager and kube-scheduler healthy")

    # ---- API access

    def api_client(self):
        """A kubernetes.client.ApiClient with the admin kubeconfig."""
        from kubernetes import config as kconfig

        return kconfig.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess:
        """Run kubectl (from .cache/tools/bin) against this cluster; text output."""
        cmd = [str(kubectl_path()), f"--kubeconfig={self.kubeconfig}",
               f"--cache-dir={self.state_dir / 'kube-cache'}", *args]
        result = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
            )
        return result

    def _create_nodes(self) -> None:
        self.add_nodes(*self.pools, wait=False)

    def _wait_ready(self) -> None:
        assert self.state is not None
        self.wait_nodes_ready(self.state.nodes)
        from kubernetes import client

        with self.api_client() as api:
            core = client.CoreV1Api(api)

            def default_sa() -> bool:
                core.read_namespaced_service_account("default", "default")
                return True

            self._wait("kube-controller-manager", default_sa, 90, "the default ServiceAccount in namespace default")

    def add_nodes(self, *pools: NodePool, wait: bool = True, timeout: float = 90) -> list[str]:
        """Create kwok nodes (e.g. a test's own, fenced off with a taint); their names."""
        from kubernetes import client

        assert self.state is not None
        names = []
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            for pool in pools:
                for node in pool.manifests():
                    try:
                        core.create_node(node)
                    except client.ApiException as err:
                        if err.status != 409:
                            raise ClusterError(f"creating node {node['metadata']['name']}: {err.status} {err.body}")
                    names.append(node["metadata"]["name"])
        self.state.nodes.extend(n for n in names if n not in self.state.nodes)
        self._save()
        if wait:
            self.wait_nodes_ready(names, timeout)
        return names

    def delete_nodes(self, names: list[str]) -> None:
        from kubernetes import client

        assert self.state is not None
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            for name in names:
                try:
                    core.delete_node(name)
                except client.ApiException as err:
                    if err.status != 404:
                        raise
        self.state.nodes = [n for n in self.state.nodes if n not in names]
        self._save()

    def wait_nodes_ready(self, names: list[str], timeout: float = 90) -> None:
        """Wait until kwok reports the nodes Ready and the node controller lifted its taints."""
        from kubernetes import client

        wanted = set(names)
        with self.api_client() as api:
            core = client.CoreV1Api(api)

            def nodes_ready() -> bool:
                ready = set()
                for node in core.list_node().items:
                    if node.metadata.name not in wanted:
                        continue
                    conditions = {c.type: c.status for c in (node.status.conditions or [])}
                    taints = {t.key for t in (node.spec.taints or [])}
                    if conditions.get("Ready") == "True" and not any(
                        t.startswith("node.kubernetes.io/") for t in taints
                    ):
                        ready.add(node.metadata.name)
                return wanted <= ready

            self._wait("kwok", nodes_ready, timeout,
                       f"nodes {sorted(wanted)} Ready and untainted by the node controller")
        self.log(f"nodes ready: {', '.join(sorted(wanted))}")

    # ---- stop

    def stop(self, timeout: float = 15.0) -> list[str]:
        """Stop every component: SIGTERM to its process group, a second SIGTERM after 5s
        (Kubernetes components then exit at once), SIGKILL after `timeout`.

        Works for a cluster started by this object and for one loaded from state.json.
        Returns the names of the components that were running.
        """
        targets: dict[str, int] = {}
        for name, proc in self.procs.items():
            if proc.poll() is None:
                targets[name] = proc.pid
        for name, pid in self.running().items():
            targets.setdefault(name, pid)
        order = [n for n in reversed(COMPONENTS) if n in targets]

        def signal_group(pid: int, sig: int) -> None:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

        def wait_gone(pids: list[int], until: float) -> list[int]:
            left = pids
            while left and time.monotonic() < until:
                for proc in self.procs.values():
                    proc.poll()  # reap our own children
                left = [p for p in left if _pid_alive(p)]
                if left:
                    time.sleep(0.1)
            return left

        # Everything but etcd first (they need etcd to shut down cleanly), then etcd.
        for group in ([n for n in order if n != "etcd"], [n for n in order if n == "etcd"]):
            pids = [targets[n] for n in group]
            for pid in pids:
                signal_group(pid, signal.SIGTERM)
            left = wait_gone(pids, time.monotonic() + min(5.0, timeout))
            # A second SIGTERM makes the Kubernetes components exit at once (the graceful
            # stop of kube-apiserver can wait long on open connections); etcd likewise.
            for pid in left:
                signal_group(pid, signal.SIGTERM)
            left = wait_gone(left, time.monotonic() + max(timeout - 5.0, 1.0))
            if left:
                slow = [n for n in group if targets[n] in left]
                self.log(f"still running {timeout:.0f}s after SIGTERM, killing: {', '.join(slow)}")
            for pid in left:
                signal_group(pid, signal.SIGKILL)
            wait_gone(left, time.monotonic() + 5)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        if self.state is not None:
            self.state.pids = {}
            if self.state_file.exists():
                self._save()
        if self._atexit:
            atexit.unregister(self.stop)
            self._atexit = False
        return order

    def env(self) -> str:
        """Shell lines that point kubectl at this cluster."""
        lines = [f"export KUBECONFIG={self.kubeconfig}"]
        try:
            lines.append(f"export PATH={kubectl_path().parent}:$PATH")
        except ToolMissing:
            pass
        return "\n".join(lines)

    def __enter__(self) -> "DevCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
