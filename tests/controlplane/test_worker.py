"""Whole jobs through the operator with real workers: `tlt worker` in every pod.

Real: kube-apiserver, etcd, scheduler and kwok nodes; the operator (kopf); the job's
ServiceAccount and Role (the workers log in with its token); Ray across the pods;
the torch engine, trainer and drafter on the built-in micro model.
Faked: the containers. kwok has no container runtime, so `tlt.dev.pods.LocalPods`
runs each pod's command as a local process and reports its exit code into the
pod's status, as a kubelet would.
"""

from __future__ import annotations

import threading
import urllib.request

import pytest
from kubernetes import watch

from jobs import Job, run_pods, small_job, wait_for
from tlt.report import read_records

pytestmark = pytest.mark.slow


class PodLabels:
    """Every value of `tlt.dev/active-role` each pod of the job showed, in order (a watch sees each write)."""

    def __init__(self, core, namespace: str, job: str):
        self.seen: dict[str, list[str]] = {}
        self.stream = watch.Watch()
        self.thread = threading.Thread(target=self._watch, args=(core, namespace, job), daemon=True)
        self.thread.start()

    def _watch(self, core, namespace, job):
        try:
            for event in self.stream.stream(core.list_namespaced_pod, namespace, label_selector=f"tlt.dev/job={job}",
                                            timeout_seconds=600):
                pod = event["object"]
                role = (pod.metadata.labels or {}).get("tlt.dev/active-role")
                history = self.seen.setdefault(pod.metadata.name, [])
                if role and (not history or history[-1] != role):
                    history.append(role)
        except Exception:  # stop() closes the stream under the reader
            pass

    def stop(self) -> dict[str, list[str]]:
        self.stream.stop()
        return self.seen


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as reply:
            return reply.read().decode()
    except OSError:
        return ""


def test_a_job_runs_to_succeeded_with_workers_in_its_pods(operator, api, kubectl, namespace, controlplane, micro_model, tmp_path):
    out = tmp_path / "run"
    job = Job(api, kubectl, namespace, small_job("rl", micro_model, out))
    job.running_pods(3)
    labels = PodLabels(api[0], namespace, "rl")
    log: list[str] = []
    pods = run_pods(controlplane, namespace, "rl", tmp_path, log)
    scraped = {}
    try:
        def finished():
            for name, local in list(pods.pods.items()):
                if "rollout" in name and name not in scraped and "tlt_engine_generated_tokens_total" in scrape(local.metrics_port):
                    scraped[name] = True
            return job.phase() in ("Succeeded", "Failed") and job.phase()

        phase = wait_for(finished, timeout=480, interval=1.0, what="the job to finish")
        if phase != "Succeeded":
            tails = "\n".join(f"--- {n}\n{pods.logs(n)}" for n in sorted(pods.pods))
            pytest.fail(f"the job ended {phase}: {job.status().get('conditions')}\n{tails}")
        # The operator deletes the other pods once the head has succeeded; they stop on SIGTERM.
        wait_for(lambda: all(local.process.poll() is not None for local in pods.pods.values()), timeout=90,
                 what="every pod's process to stop")
    finally:
        pods.stop()
        seen = labels.stop()
    print("\n" + "\n".join(log))

    assert pods.exits["rl-trainer-0"] == 0, "the head (coordinator) pod exits 0 after the last step"
    assert all(code == 0 for code in pods.exits.values()), pods.exits

    status = job.status()
    steps = [r for r in read_records(out / "metrics.jsonl") if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2]
    assert status["step"] == 2
    assert status["drafter"]["version"] == steps[-1]["drafter_version"], "the coordinator reports the drafter it pushed"
    assert status["progress"]["step"] == 2 and {s["shard"] for s in status["progress"]["shards"]} == {0, 1}
    assert (out / "policy" / "config.json").is_file(), "the trained policy is exported"

    steps_event = job.events("StepCompleted")
    assert len(steps_event) == 1 and steps_event[0]["count"] == 2, "one Event object per series, its count raised"
    assert steps_event[0]["message"] == "step 2/2 completed"
    assert len(job.events("Succeeded")) == 1 and len(job.events("Created")) == 1

    # Each pod's own role watcher, with the job's ServiceAccount, labelled the pod with its role.
    for pod, role in (("rl-trainer-0", "trainer"), ("rl-rollout-0", "rollout"), ("rl-rollout-1", "rollout")):
        assert seen.get(pod, [None])[0] == role, seen
    # The idle trainer is lent during every rollout; loans reach the pods: a lent pod's worker
    # switched and said so in its label.
    lent = {e["message"].split()[0] for e in job.events("GPULent")}
    assert "rl-trainer-0" in lent, job.events("GPULent")
    assert any("drafter" in seen.get(p, []) for p in lent), (lent, seen)
    assert scraped, "a rollout pod served its engine's metrics on its metrics port"


def test_a_model_path_missing_in_the_pods_fails_the_job_without_retries(operator, api, kubectl, namespace, controlplane, tmp_path):
    body = small_job("broken", tmp_path / "no-such-model", tmp_path / "run")
    body["spec"]["runPolicy"] = {"backoffLimit": 3}
    job = Job(api, kubectl, namespace, body)
    job.running_pods(3)
    log: list[str] = []
    pods = run_pods(controlplane, namespace, "broken", tmp_path, log)
    try:
        wait_for(lambda: job.phase() == "Failed", timeout=300, interval=1.0, what="the job to fail")
    finally:
        pods.stop()
    print("\n" + "\n".join(log))
    assert pods.exits["broken-trainer-0"] == 2, "a configuration error is exit code 2"
    failed = next(c for c in job.status()["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "exit code 2" in failed["message"], failed
    assert job.status().get("failures", 0) <= 1, "a permanent failure is not retried"
    assert "no-such-model" in pods.logs("broken-trainer-0")
