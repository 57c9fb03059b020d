"""A ReasoningRLJob in a test namespace, as the control-plane tests drive and read it."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import yaml
from kubernetes import client

import waiting
from specs import manifest

ROOT = Path(__file__).resolve().parents[2]

CRD_NAME = "reasoningrljobs.tlt.dev"
GROUP, VERSION, PLURAL = "tlt.dev", "v1alpha1", "reasoningrljobs"

# The API server may answer errors while objects come and go: they count as "not yet".
wait_for = functools.partial(waiting.wait_for, interval=0.3, retry_on=(client.ApiException,))


class Job:
    """One job in a test namespace, with the reads the tests need."""

    def __init__(self, api, kubectl, namespace, body):
        self.core, self.custom = api
        self.kubectl = kubectl
        self.namespace = namespace
        self.name = body["metadata"]["name"]
        body = copy.deepcopy(body)
        body["metadata"]["namespace"] = namespace
        kubectl("apply", "-f", "-", input=yaml.safe_dump(body))

    def get(self) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)

    def status(self) -> dict:
        return self.get().get("status") or {}

    def patch(self, patch: dict) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name, patch)

    def report(self, status: dict) -> None:
        """What the coordinator does: write its report (progress, step, drafter) into the job's progress ConfigMap."""
        from tlt.worker.status import progress_map_name, report_data

        self.core.patch_namespaced_config_map(progress_map_name(self.name), self.namespace, {"data": report_data(status)})

    def pods(self) -> dict[str, client.V1Pod]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"tlt.dev/job={self.name}").items
        return {p.metadata.name: p for p in pods if not p.metadata.deletion_timestamp}

    def running_pods(self, count: int) -> dict[str, client.V1Pod]:
        def ready():
            pods = self.pods()
            ok = len(pods) == count and all(
                p.status.phase == "Running" and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
                for p in pods.values()
            )
            return ok and pods
        return wait_for(ready, what=f"{count} running pods of {self.name}")

    def events(self, reason: str | None = None) -> list[dict]:
        items = json.loads(self.kubectl("get", "events", "-n", self.namespace, "-o", "json").stdout)["items"]
        return [
            e for e in items
            if e["involvedObject"].get("name") == self.name and e["involvedObject"].get("kind") == "ReasoningRLJob"
            and (reason is None or e["reason"] == reason)
        ]

    def phase(self) -> str | None:
        return self.status().get("phase")

    def annotation(self, pod: str, key: str = "tlt.dev/assigned-role") -> str | None:
        return (self.pods()[pod].metadata.annotations or {}).get(key)


# Real jobs: `tlt worker` in every pod, run by `tlt dev pods`' LocalPods.


def small_job(name: str, model: Path, out: Path, steps: int = 2, eval_every: int = 1, prompts: int = 4, samples: int = 2,
              tokens: int = 40) -> dict:
    """The quickstart, shrunk: `steps` steps of `prompts` x `samples` sequences of up to `tokens` tokens on two
    rollout pods and a trainer pod."""
    spec = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())["spec"]
    spec.pop("task", None)
    spec["model"] = {"path": str(model)}
    spec["algorithm"].update(steps=steps, promptsPerStep=prompts, groupSize=samples, maxResponseTokens=tokens, miniBatchSize=8)
    # The quickstart's learning recipe (lr 3e-4, a per-sequence token sum) is tuned for tiny-arith; with it the
    # 40-step fault job on the untrained micro model outran its 600 s in CI; with this recipe it does not.
    spec["algorithm"].update(learningRate=5e-5, lossAggregation="seq-mean-token-mean")
    spec["eval"] = {"everySteps": eval_every, "numPrompts": 6}
    spec["rollout"]["maxBatchSize"] = 8
    spec["speculative"] = {"mode": "adaptive", "batchThreshold": 4, "strategies": ["3_1_3"]}
    spec["elasticity"] = {"lendIdle": True, "consolidateTail": {"enabled": True, "threshold": 2}}
    spec["output"] = {"path": str(out)}
    return manifest(name, {**spec, "task": {"name": "arith"}})


def run_pods(controlplane, namespace: str, job: str, workdir: Path, log: list[str]):
    """`tlt dev pods`' kubelet: each pod runs as a local process, logged in as its own ServiceAccount."""
    from tlt.dev.pods import LocalPods

    env = {"OMP_NUM_THREADS": "1", "TLT_RAY_OBJECT_STORE_BYTES": str(256 * 1024 * 1024)}
    return LocalPods(controlplane.api_client(), namespace, job, workdir=workdir / "pods", env=env, log=log.append).start()
