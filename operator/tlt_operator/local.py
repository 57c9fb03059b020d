"""Run the operator as a separate process against a kubeconfig (tests, benchmarks, local clusters)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tlt.net import free_port


class OperatorProcess:
    """`python -m tlt_operator`, as the Helm chart's Deployment runs it.

    `namespaces`: the namespaces it serves (none: every namespace). `isolated`: logged in
    only through `kubeconfig` (no KUBERNETES_* variables for an in-cluster login, HOME
    in the log's folder so no ~/.kube/config is read), in a session of its own so that
    stopping it stops whatever it started.
    """

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        namespaces: list[str] | tuple[str, ...] = (),
        isolated: bool = False,
    ):
        self.kubeconfig = Path(kubeconfig)
        self.log_path = Path(log_path)
        self.extra_env = env or {}
        self.namespaces = list(namespaces)
        self.isolated = isolated
        self.proc: subprocess.Popen | None = None
        self.health_port = free_port()
        self.metrics_port = free_port()
        # Its identity in leader election, the same across restarts (as a pod's name across container restarts).
        self.identity = f"operator-{self.health_port}"

    def start(self, timeout: float = 60) -> "OperatorProcess":
        env = {k: v for k, v in os.environ.items() if not (self.isolated and k.startswith("KUBERNETES_"))}
        if self.isolated:
            env["HOME"] = str(self.log_path.parent)
        env.update({
            "KUBECONFIG": str(self.kubeconfig),
            "TLT_WATCH_NAMESPACES": ",".join(self.namespaces),
            "TLT_HEALTH_PORT": str(self.health_port),
            "TLT_METRICS_PORT": str(self.metrics_port),
            "TLT_LOG_LEVEL": "INFO",
            "POD_NAME": self.identity,
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        })
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tlt_operator"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=self.isolated)
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the operator did not become healthy in {timeout:.0f}s; log: {self.log_path}")
            time.sleep(0.2)
        return self

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"the operator is not running (exit {self.proc and self.proc.returncode}):\n{self.logs()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def reconciles(self) -> int:
        """Reconciles done so far, whatever their result."""
        return int(sum(float(line.split()[-1]) for line in self.metrics().splitlines() if line.startswith("tlt_operator_reconciles_total{")))

    def memory_mib(self) -> tuple[float, float]:
        """Resident and peak resident memory of the operator process, MiB."""
        values = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
        return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)

    def kill(self) -> None:
        """SIGKILL, as a crashed or OOM-killed operator pod: no cleanup of any kind."""
        if self.proc and self.proc.poll() is None:
            if self.isolated:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            if self.isolated:
                os.killpg(self.proc.pid, signal.SIGTERM)
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                if self.isolated:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                else:
                    self.proc.kill()
                self.proc.wait(5)
