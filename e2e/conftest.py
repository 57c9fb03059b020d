"""Fixtures of the end-to-end suite: a real cluster, the images built from this checkout,
the chart installed. Not collected by the default test run (testpaths = tests); run it
with `.venv/bin/pytest e2e` (see e2e/README.md).

Modes (environment):
- default: a kind cluster named $E2E_CLUSTER (default tlt-e2e), created when missing
  and deleted at the end if this run created it; the images are loaded into its nodes.
- E2E_CONTEXT=current: the current kube context, images pushed to $E2E_REGISTRY.

Everything skips, with the reason, when Docker, kind or the cluster is not there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".cache" / "tools" / "bin"
RELEASE = "tlt"
RELEASE_NS = "tlt-system"
JOB_NS = "tlt-e2e"


def which(tool: str) -> str | None:
    local = TOOLS / tool
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(tool)


def run(*cmd: str, check: bool = True, timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@dataclass
class Cluster:
    mode: str  # kind | current
    name: str
    kubeconfig: str | None
    registry: str
    kubectl: str
    helm: str

    def k(self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None):
        extra = ["--kubeconfig", self.kubeconfig] if self.kubeconfig else []
        return run(self.kubectl, *extra, *args, check=check, timeout=timeout, input=input)

    def kj(self, *args: str):
        return json.loads(self.k(*args, "-o", "json").stdout)

    def helm_run(self, *args: str, check: bool = True, timeout: float = 600):
        extra = ["--kubeconfig", self.kubeconfig] if self.kubeconfig else []
        return run(self.helm, *extra, *args, check=check, timeout=timeout)


def _requirements() -> tuple[str, str, str]:
    """(kubectl, helm, docker) or a skip saying what is missing."""
    docker = shutil.which("docker")
    if not docker:
        pytest.skip("e2e: no docker client installed (the suite builds the images)")
    info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        pytest.skip("e2e: no Docker daemon (`docker info` fails): the images cannot be built here")
    kubectl, helm = which("kubectl"), which("helm")
    if not kubectl or not helm:
        pytest.skip("e2e: kubectl/helm missing: run scripts/install-tools.sh")
    return kubectl, helm, docker


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    kubectl, helm, _ = _requirements()
    mode = os.environ.get("E2E_CONTEXT", "kind")
    registry = os.environ.get("E2E_REGISTRY", "")
    if mode == "current":
        if not registry:
            pytest.skip("e2e: E2E_CONTEXT=current needs E2E_REGISTRY (where the cluster pulls the images from)")
        probe = subprocess.run([kubectl, "cluster-info"], capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            pytest.skip("e2e: the current kube context does not answer (`kubectl cluster-info` fails)")
        yield Cluster("current", "", None, registry, kubectl, helm)
        return
    kind = shutil.which("kind")
    if not kind:
        pytest.skip("e2e: kind is not installed (or set E2E_CONTEXT=current with E2E_REGISTRY)")
    name = os.environ.get("E2E_CLUSTER", "tlt-e2e")
    existing = run(kind, "get", "clusters", check=False).stdout.split()
    created = name not in existing
    if created:
        run(kind, "create", "cluster", "--name", name, "--wait", "180s", timeout=600)
    kubeconfig = ROOT / ".cache" / "e2e" / f"{name}.kubeconfig"
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    kubeconfig.write_text(run(kind, "get", "kubeconfig", "--name", name).stdout)
    kubeconfig.chmod(0o600)
    try:
        yield Cluster("kind", name, str(kubeconfig), "", kubectl, helm)
    finally:
        if created and os.environ.get("E2E_KEEP") != "1":
            run(kind, "delete", "cluster", "--name", name, check=False, timeout=300)


@pytest.fixture(scope="session")
def images(cluster: Cluster) -> dict[str, str]:
    """Build the operator and CPU worker images from this checkout and make them pullable."""
    tag = os.environ.get("E2E_TAG", "e2e")
    prefix = f"{cluster.registry.rstrip('/')}/" if cluster.registry else ""
    out = {"operator": f"{prefix}tlt/operator:{tag}", "worker-cpu": f"{prefix}tlt/worker-cpu:{tag}"}
    build_args = []
    if os.environ.get("TORCH_INDEX_URL"):
        build_args = ["--build-arg", f"TORCH_INDEX_URL={os.environ['TORCH_INDEX_URL']}"]
    for name, ref in out.items():
        run("docker", "build", "-f", str(ROOT / "images" / f"{name}.Dockerfile"), *(build_args if name != "operator" else []),
            "-t", ref, str(ROOT), timeout=3600)
        # The image runs as the non-root user the chart and the operator expect.
        user = run("docker", "image", "inspect", ref, "--format", "{{.Config.User}}").stdout.strip()
        assert user and user.split(":")[0] not in ("0", "root"), f"{ref} runs as {user!r}"
    if cluster.mode == "kind":
        run("kind", "load", "docker-image", "--name", cluster.name, *out.values(), timeout=1200)
    else:
        for ref in out.values():
            run("docker", "push", ref, timeout=1800)
    return out


@pytest.fixture(scope="session")
def release(cluster: Cluster, images: dict[str, str]):
    tag = images["operator"].rsplit(":", 1)[1]
    cluster.helm_run(
        "upgrade", "--install", RELEASE, str(ROOT / "helm" / "tlt-operator"), "-n", RELEASE_NS, "--create-namespace",
        "--wait", "--timeout", "5m",
        "--set", f"imageRegistry={cluster.registry}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=IfNotPresent",
        "--set", f"workerImages.cpu.tag={tag}", "--set", f"workerImages.cuda.tag={tag}",
    )
    yield RELEASE
    if os.environ.get("E2E_KEEP") != "1":
        cluster.helm_run("uninstall", RELEASE, "-n", RELEASE_NS, "--wait", check=False)
        cluster.k("delete", "namespace", JOB_NS, "--ignore-not-found", "--wait=false", check=False)

