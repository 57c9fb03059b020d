"""Run the operator as a separate process against a kubeconfig (tests, benchmarks, local clusters)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """`python -m tlt_operator`, as the Helm chart's Deployment runs it."""

    def __init__(self, kubeconfig: Path, log_path: Path, env: dict[str, str] | None = None):
        self.kubeconfig = Path(kubeconfig)
        self.log_path = Path(log_path)
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self.health_port = free_port()
        self.metrics_port = free_port()

    def start(self, timeout: float = 60) -> "OperatorProcess":
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "TLT_WATCH_NAMESPACES": "",
            "TLT_HEALTH_PORT": str(self.health_port),
            "TLT_METRICS_PORT": str(self.metrics_port),
            "TLT_LOG_LEVEL": "INFO",
            **self.extra_env,
        }
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "tlt_operator"], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the operator did not become healthy in {timeout:.0f}s; log: {self.log_path}")
            time.sleep(0.2)
        return self

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            tail = self.log_path.read_text()[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"the operator is not running (exit {self.proc and self.proc.returncode}):\n{tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def memory_mib(self) -> tuple[float, float]:
        """Resident and peak resident memory of the operator process, MiB."""
        values = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
        return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
