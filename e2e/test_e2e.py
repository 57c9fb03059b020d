"""End-to-end: the chart installed on a real cluster runs the CPU quickstart to Succeeded.

The same path as e2e/run.sh: images built from this checkout, `helm install`, the job
applied, and checks along the way: the operator's pod is up and locked down, the job's
pods carry their role labels and owner, the pods run `tlt worker` (the head pod to exit
code 0), the workers label their active role, the head pod serves /metrics and /healthz
on 8080, events explain the operator's decisions (Created, StepCompleted, Succeeded),
the coordinator's report reaches status.progress and status.drafter (through the job's
progress ConfigMap: only the operator writes the status), the status counts every
step, and uninstalling
leaves no operator behind. Skips (with the reason) without Docker, kind or a cluster.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RELEASE, RELEASE_NS, JOB_NS = "tlt", "tlt-system", "tlt-e2e"  # as in conftest.py
MANIFEST = ROOT / "e2e" / "manifests" / "quickstart-cpu.yaml"
JOB = "quickstart-cpu"
TIMEOUT = float(os.environ.get("E2E_TIMEOUT", "1800"))


def wait_for(predicate, timeout: float, interval: float = 3.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def job(cluster) -> dict:
    return cluster.kj("-n", JOB_NS, "get", "reasoningrljob", JOB)


def job_pods(cluster) -> list[dict]:
    return cluster.kj("-n", JOB_NS, "get", "pods", "-l", f"tlt.dev/job={JOB}")["items"]


def test_operator_is_running_locked_down(cluster, release):
    deployment = cluster.kj("-n", RELEASE_NS, "get", "deployment", f"{RELEASE}-tlt-operator")
    assert deployment["status"].get("readyReplicas") == 1
    pods = cluster.kj("-n", RELEASE_NS, "get", "pods", "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
    assert len(pods) == 1
    container = pods[0]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pods[0]["spec"]["securityContext"]["runAsNonRoot"] is True
    # The CRD came with the chart.
    cluster.k("get", "crd", "reasoningrljobs.tlt.dev")


def test_quickstart_job_runs_to_succeeded(cluster, release):
    cluster.k("create", "namespace", JOB_NS, check=False)
    body = yaml.safe_load(MANIFEST.read_text())
    assert body["metadata"]["namespace"] == JOB_NS
    cluster.k("apply", "-f", str(MANIFEST))

    # Children: 1 trainer + 2 rollout pods with fixed role labels, owned by the job.
    pods = wait_for(lambda: p if len(p := job_pods(cluster)) >= 3 else None, 300, what="the job's pods")
    roles = sorted(p["metadata"]["labels"]["tlt.dev/role"] for p in pods)
    assert roles == ["rollout", "rollout", "trainer"], roles
    for pod in pods:
        owner = pod["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "ReasoningRLJob" and owner["name"] == JOB and owner.get("controller") is True
        assert pod["spec"]["containers"][0]["image"].endswith(f"tlt/worker-cpu:{os.environ.get('E2E_TAG', 'e2e')}")
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    for kind in ("serviceaccount", "role", "rolebinding", "configmap", "service"):
        items = cluster.kj("-n", JOB_NS, "get", kind, "-l", f"tlt.dev/job={JOB}")["items"]
        assert items, f"no {kind} for the job"

    # Running, with progress, then Succeeded with every step counted. Along the way: the
    # role each worker labels itself with (tlt.dev/active-role; member pods are deleted at
    # the end), the coordinator's progress, and the head pod's /metrics on port 8080.
    seen_phases, active_roles, progress_phases, scraped = set(), {}, set(), {}
    head = f"{JOB}-trainer-0"

    def finished():
        status = job(cluster).get("status") or {}
        seen_phases.add(status.get("phase"))
        if (status.get("progress") or {}).get("phase"):
            progress_phases.add(status["progress"]["phase"])
        for pod in job_pods(cluster):
            role = pod["metadata"]["labels"].get("tlt.dev/active-role")
            if role:
                active_roles.setdefault(pod["metadata"]["name"], set()).add(role)
        if "metrics" not in scraped and status.get("phase") == "Running":
            for path in ("healthz", "metrics"):
                got = cluster.k("get", "--raw", f"/api/v1/namespaces/{JOB_NS}/pods/{head}:8080/proxy/{path}", check=False)
                if got.returncode == 0:
                    scraped[path] = got.stdout
        if status.get("phase") in ("Failed", "Invalid"):
            raise AssertionError(f"the job ended {status['phase']}: {status.get('conditions')}")
        return status if status.get("phase") == "Succeeded" else None

    status = wait_for(finished, TIMEOUT, interval=5, what="phase Succeeded")
    assert "Running" in seen_phases or status.get("startTime"), seen_phases
    assert status["step"] == status["totalSteps"] == body["spec"]["algorithm"]["steps"]
    assert status["stepText"] == f"{status['step']}/{status['totalSteps']}"
    assert status.get("completionTime") and status.get("startTime")
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    assert conditions.get("Succeeded") == "True", conditions
    # Written by the coordinator in the head pod: the drafter it pushed, and its phases.
    assert "version" in (status.get("drafter") or {}), status.get("drafter")
    assert progress_phases, "the coordinator never reported status.progress"

    # The head pod ran `tlt worker --head` to exit code 0 (and is kept for its logs).
    pod = cluster.kj("-n", JOB_NS, "get", "pod", head)
    assert pod["spec"]["containers"][0]["command"][:2] == ["tlt", "worker"] and "--head" in pod["spec"]["containers"][0]["command"]
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0, terminated

    # Every worker labelled the role it ran (tlt.dev/active-role) next to the fixed one.
    assert set(active_roles) >= {f"{JOB}-trainer-0", f"{JOB}-rollout-0", f"{JOB}-rollout-1"}, active_roles
    assert all(roles <= {"trainer", "rollout", "drafter"} for roles in active_roles.values()), active_roles

    # /healthz and /metrics on 8080 (engine and coordinator metrics in the head pod).
    assert scraped.get("healthz", "").strip() == "ok", scraped
    assert "tlt_coordinator_steps_total" in scraped.get("metrics", ""), scraped.get("metrics", "")[:2000]

    # Every operator decision is an Event on the job, each completed step too.
    events = cluster.kj("-n", JOB_NS, "get", "events", "--field-selector",
                        f"involvedObject.kind=ReasoningRLJob,involvedObject.name={JOB}")["items"]
    reasons = {e["reason"] for e in events}
    assert {"Created", "StepCompleted", "Succeeded"} <= reasons, reasons
    for event in events:
        assert "token" not in event.get("message", "").lower()


def test_operator_had_enough_rbac(cluster, release):
    logs = cluster.k("-n", RELEASE_NS, "logs", f"deployment/{RELEASE}-tlt-operator", "--tail=-1").stdout
    assert "forbidden" not in logs.lower(), [l for l in logs.splitlines() if "forbidden" in l.lower()][:5]


def test_uninstall_removes_the_operator_and_keeps_the_crd(cluster, release):
    if os.environ.get("E2E_KEEP") == "1":
        pytest.skip("E2E_KEEP=1: the release stays installed")
    cluster.helm_run("uninstall", RELEASE, "-n", RELEASE_NS, "--wait")
    left = cluster.kj("-n", RELEASE_NS, "get", "deployments,serviceaccounts,services", "-l", f"app.kubernetes.io/instance={RELEASE}")
    assert not left["items"], [i["metadata"]["name"] for i in left["items"]]
    assert not cluster.kj("get", "clusterroles", "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
    # Helm never deletes CRDs from crds/: the jobs (and their data) survive an uninstall.
    cluster.k("get", "crd", "reasoningrljobs.tlt.dev")
