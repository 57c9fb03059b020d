"""Operator at scale on the real control plane with kwok GPU nodes.

Measures:
- lend latency: from the coordinator's progress report of a drained shard (status
  patch sent) to the `tlt.dev/assigned-role: drafter` annotation seen on the pod by
  a watch (p50/p99 over --trials), and the same for the return;
- the operator's own time per reconcile (its Prometheus histograms: whole reconcile
  with API calls, and the pure compute part), reported separately from API and CPU
  contention on this shared machine;
- operator memory (RSS and peak) with --jobs jobs of --pods-per-job pods running.

Run: .venv/bin/python bench/operator_scale.py [--jobs 100 --pods-per-job 16 --trials 50]
Needs the control plane built by scripts/build-controlplane.sh. Last line: JSON.
Goals (issue 8): p99 lend latency under 1 s, operator memory under 300 MB.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client, watch

from tlt.dev.cluster import DevCluster, NodePool
from tlt_operator.local import OperatorProcess

ROOT = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "tlt.dev", "v1alpha1", "reasoningrljobs"
NAMESPACE = "bench"
GPUS_PER_NODE = 8


def job_body(index: int, pods: int) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ReasoningRLJob",
        "metadata": {"name": f"job-{index:03d}", "namespace": NAMESPACE},
        "spec": {
            "model": {"builtin": "tiny-arith"},
            "task": {"name": "arith"},
            "algorithm": {"groupSize": 4, "steps": 1000},
            "rollout": {"replicas": pods - 1, "gpusPerReplica": 1, "engine": "torch", "maxBatchSize": 64},
            "trainer": {"replicas": 1, "gpusPerReplica": 1},
            "speculative": {"batchThreshold": 16},
            "elasticity": {"consolidateTail": {"enabled": False}},
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def histogram(metrics_text: str, name: str) -> tuple[float, float, dict[float, float]]:
    """(sum, count, cumulative buckets) of a Prometheus histogram in exposition text."""
    total, count, buckets = 0.0, 0.0, {}
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_sum"):
            total = float(line.split()[-1])
        elif line.startswith(f"{name}_count"):
            count = float(line.split()[-1])
        elif line.startswith(f"{name}_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.split()[-1])
    return total, count, buckets


def bucket_quantile(before: dict, after: dict, q: float) -> float:
    """Upper bucket bound holding quantile q of the observations between two scrapes."""
    delta = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    total = delta.get(float("inf"), 0)
    if not total:
        return float("nan")
    for le in sorted(delta):
        if delta[le] >= q * total:
            return le
    return float("inf")


def wait_annotation(core, pod: str, value: str, resource_version: str, timeout: float = 30) -> float:
    """Block until the pod carries assigned-role=value; the monotonic time it was seen."""
    stream = watch.Watch()
    try:
        for event in stream.stream(core.list_namespaced_pod, NAMESPACE, field_selector=f"metadata.name={pod}",
                                   resource_version=resource_version, timeout_seconds=int(timeout)):
            annotations = event["object"].metadata.annotations or {}
            if annotations.get("tlt.dev/assigned-role") == value:
                return time.monotonic()
    finally:
        stream.stop()
    raise TimeoutError(f"{pod} did not get assigned-role={value} within {timeout:.0f}s")


def report(custom, job: str, step: int, shards: list[dict]) -> None:
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NAMESPACE, PLURAL, job, {"status": {"progress": {"step": step, "phase": "rollout", "shards": shards}}}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--pods-per-job", type=int, default=16)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--state-dir", help="cluster state folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.pods_per_job < 3:
        parser.error("--pods-per-job must be >= 3 (a trainer and two rollout shards)")

    state = Path(args.state_dir or tempfile.mkdtemp(prefix="tlt-bench-cluster-"))
    gpu_nodes = math.ceil(args.jobs * args.pods_per_job / GPUS_PER_NODE)
    pools = [NodePool(prefix="kwok-gpu", count=gpu_nodes, gpus=GPUS_PER_NODE), NodePool(prefix="kwok-cpu", count=1)]
    print(f"starting the control plane with {gpu_nodes} kwok GPU nodes x {GPUS_PER_NODE} GPUs in {state}", file=sys.stderr)
    cluster = DevCluster(state, pools=pools, owned=True, log=lambda m: print(m, file=sys.stderr)).start()
    operator = None
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        deadline = time.monotonic() + 60
        # `kubectl wait` errors out (instead of waiting) while a new CRD has no status yet.
        while cluster.kubectl("wait", "--for=condition=Established", "crd/reasoningrljobs.tlt.dev", "--timeout=10s",
                              check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError("the CRD was not Established within 60s")
            time.sleep(0.5)
        cluster.kubectl("create", "namespace", NAMESPACE)
        api = cluster.api_client()
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)

        operator = OperatorProcess(cluster.kubeconfig, state / "operator.log", {"TLT_RESYNC_SECONDS": "60"}).start()
        idle_rss, _ = operator.memory_mib()

        t0 = time.monotonic()
        for i in range(args.jobs):
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, job_body(i, args.pods_per_job))
        want = args.jobs * args.pods_per_job
        running = 0
        while running < want:
            pods = core.list_namespaced_pod(NAMESPACE, label_selector="tlt.dev/job").items
            running = sum(1 for p in pods if p.status.phase == "Running")
            if time.monotonic() - t0 > 900:
                raise TimeoutError(f"only {running}/{want} pods running after 15 minutes")
            time.sleep(1)
        all_running_s = time.monotonic() - t0
        time.sleep(5)  # let the operator see the last readiness changes
        print(f"{want} pods running after {all_running_s:.1f}s", file=sys.stderr)

        before = operator.metrics()
        lend, back = [], []
        for t in range(args.trials):
            job = f"job-{t % args.jobs:03d}"
            shard = 1 + (t // args.jobs) % (args.pods_per_job - 2)
            pod = f"{job}-rollout-{shard}"
            shards = [{"shard": s, "running": 0 if s == shard else 8, "finished": 8} for s in range(args.pods_per_job - 1)]
            rv = core.read_namespaced_pod(pod, NAMESPACE).metadata.resource_version
            sent = time.monotonic()
            report(custom, job, 2 * t + 1, shards)
            lend.append(wait_annotation(core, pod, "drafter", rv) - sent)
            rv = core.read_namespaced_pod(pod, NAMESPACE).metadata.resource_version
            sent = time.monotonic()
            report(custom, job, 2 * t + 2, [{"shard": s, "waiting": 8} for s in range(args.pods_per_job - 1)])
            back.append(wait_annotation(core, pod, "rollout", rv) - sent)
        after = operator.metrics()
        rss, peak = operator.memory_mib()

        s0, c0, b0 = histogram(before, "tlt_operator_reconcile_seconds")
        s1, c1, b1 = histogram(after, "tlt_operator_reconcile_seconds")
        cs0, cc0, _ = histogram(before, "tlt_operator_reconcile_compute_seconds")
        cs1, cc1, _ = histogram(after, "tlt_operator_reconcile_compute_seconds")
        result = {
            "bench": "operator_scale",
            "jobs": args.jobs,
            "pods": want,
            "gpu_nodes": gpu_nodes,
            "trials": args.trials,
            "all_pods_running_s": round(all_running_s, 2),
            "lend_latency_p50_s": round(statistics.median(lend), 4),
            "lend_latency_p99_s": round(percentile(lend, 0.99), 4),
            "return_latency_p50_s": round(statistics.median(back), 4),
            "return_latency_p99_s": round(percentile(back, 0.99), 4),
            "operator_reconcile_mean_s": round((s1 - s0) / max(1.0, c1 - c0), 4),
            "operator_reconcile_p99_bucket_s": bucket_quantile(b0, b1, 0.99),
            "operator_compute_mean_s": round((cs1 - cs0) / max(1.0, cc1 - cc0), 5),
            "operator_rss_mib": round(rss, 1),
            "operator_peak_rss_mib": round(peak, 1),
            "operator_idle_rss_mib": round(idle_rss, 1),
        }
        result["goal_p99_under_1s"] = result["lend_latency_p99_s"] < 1.0
        result["goal_memory_under_300mb"] = peak * 1.048576 < 300
        print(f"lend latency p50 {result['lend_latency_p50_s']*1000:.0f} ms, p99 {result['lend_latency_p99_s']*1000:.0f} ms; "
              f"operator reconcile mean {result['operator_reconcile_mean_s']*1000:.1f} ms "
              f"(pure compute {result['operator_compute_mean_s']*1000:.2f} ms); RSS {rss:.0f} MiB (peak {peak:.0f} MiB)")
        print(json.dumps(result))
        return 0
    finally:
        if operator:
            operator.stop()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
