"""`tlt dev cluster up|down|env|status`: a real control plane on loopback for development;
`tlt dev pods JOB`: run a job's pods on it as local processes (kwok fakes the nodes only)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    dev = subparsers.add_parser("dev", help="development helpers (a local control plane for tests)")
    dev_sub = dev.add_subparsers(dest="dev_command", metavar="SUBCOMMAND")
    cluster = dev_sub.add_parser(
        "cluster",
        help="start or stop a real Kubernetes control plane with fake GPU nodes",
        description=(
            "etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback "
            "ports, built by scripts/build-controlplane.sh; fake GPU nodes made by kwok."
        ),
    )
    cluster_sub = cluster.add_subparsers(dest="cluster_command", metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", type=Path, default=None,
                       help="state folder (default: .cache/dev-cluster)")

    up = cluster_sub.add_parser("up", help="start the control plane and create the fake nodes")
    common(up)
    up.add_argument("--gpu-nodes", type=int, default=2, help="fake GPU nodes (default 2)")
    up.add_argument("--gpus-per-node", type=int, default=4, help="nvidia.com/gpu per GPU node (default 4)")
    up.add_argument("--cpu-nodes", type=int, default=1, help="fake CPU-only nodes (default 1)")
    up.set_defaults(func=_up)

    down = cluster_sub.add_parser("down", help="stop every component of the control plane")
    common(down)
    down.set_defaults(func=_down)

    env = cluster_sub.add_parser("env", help="print `export KUBECONFIG=...` for the running cluster")
    common(env)
    env.set_defaults(func=_env)

    status = cluster_sub.add_parser("status", help="which components are running")
    common(status)
    status.set_defaults(func=_status)

    def no_action(args) -> int:
        cluster.print_help()
        return 2

    cluster.set_defaults(func=no_action)

    pods = dev_sub.add_parser(
        "pods",
        help="run a job's pods as local processes on the dev cluster until the job finishes",
        description=(
            "On the dev cluster (`tlt dev cluster up`) kwok fakes the nodes, so the pods the operator creates are "
            "scheduled and reported Running, but nothing runs. This runs each pod's container command "
            "(`tlt worker ...`) as a local process, logged in as the job's ServiceAccount, as a kubelet would, "
            "and reports exit codes into the pods' status; deleted pods are stopped, replacement pods started. "
            "It prints the job's phase, steps and pods every few seconds, and stops every process when the job "
            "is Succeeded or Failed, or on Ctrl-C. The operator must be running (`python -m tlt_operator`)."
        ),
    )
    pods.add_argument("job", metavar="JOB", help="the ReasoningRLJob's name")
    pods.add_argument("-n", "--namespace", default="default", help="the job's namespace (default: default)")
    pods.add_argument("--workdir", type=Path, default=None,
                      help="one folder per pod: its ConfigMap, container.log and run folder "
                           "(default: <cache>/dev-pods/NAMESPACE/JOB)")
    pods.add_argument("--interval", type=float, default=5.0, help="seconds between progress lines (default 5)")
    pods.add_argument("--pods-timeout", type=float, default=120.0,
                      help="seconds to wait for the operator to create the job's pods (default 120)")
    pods.add_argument("--threads", type=int, default=1,
                      help="torch/OpenMP threads per local pod (default 1: pods share this machine's cores)")
    common(pods)
    pods.set_defaults(func=_pods)

    dev.set_defaults(func=lambda args: (dev.print_help(), 2)[1])


def _err(message: str):
    from tlt.cli import CommandError

    return CommandError(message)


def _up(args) -> int:
    from tlt.dev.cluster import ClusterError, DevCluster, default_pools
    from tlt.dev.tools import ToolMissing

    cluster = DevCluster(
        args.state_dir,
        pools=default_pools(args.gpu_nodes, args.gpus_per_node, args.cpu_nodes),
        log=lambda msg: print(f"[dev cluster] {msg}", file=sys.stderr),
    )
    try:
        cluster.start()
    except (ClusterError, ToolMissing) as err:
        raise _err(str(err)) from None
    print(cluster.env())
    print("# stop with: tlt dev cluster down" + (f" --state-dir {args.state_dir}" if args.state_dir else ""),
          file=sys.stderr)
    return 0


def _down(args) -> int:
    from tlt.dev.cluster import DevCluster

    cluster = DevCluster.load(args.state_dir)
    stopped = cluster.stop()
    print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing running in {cluster.state_dir}",
          file=sys.stderr)
    return 0


def _env(args) -> int:
    from tlt.dev.cluster import DevCluster

    cluster = DevCluster.load(args.state_dir)
    if not cluster.running().get("kube-apiserver"):
        raise _err(f"no cluster running in {cluster.state_dir}: run `tlt dev cluster up` first")
    print(cluster.env())
    return 0


def _status(args) -> int:
    from tlt.dev.cluster import COMPONENTS, DevCluster

    cluster = DevCluster.load(args.state_dir)
    running = cluster.running()
    for name in COMPONENTS:
        pid = running.get(name)
        print(f"{name:25} {'running, pid ' + str(pid) if pid else 'stopped'}")
    if cluster.state and running:
        print(f"{'kubeconfig':25} {cluster.kubeconfig}")
    return 0 if running else 1


# ---------------------------------------------------------------------------------
# tlt dev pods

FINISHED = ("Succeeded", "Failed", "Invalid")


def _clock() -> str:
    import time

    return time.strftime("%H:%M:%S")


def progress_line(job: dict, pods: list) -> str:
    """One line: phase, steps, the coordinator's phase, drafter, and each pod with its active role."""
    status = job.get("status") or {}
    total = status.get("totalSteps") or ((job.get("spec") or {}).get("algorithm") or {}).get("steps") or "?"
    parts = [f"{status.get('phase') or 'Pending'}", f"step {status.get('step') or 0}/{total}"]
    progress = status.get("progress") or {}
    if progress.get("phase"):
        parts.append(progress["phase"])
    drafter = status.get("drafter") or {}
    if drafter.get("version"):
        parts.append(f"drafter v{drafter['version']} (acceptance {float(drafter.get('acceptanceLength') or 0):.2f})")
    prefix = f"{(job.get('metadata') or {}).get('name', '')}-"
    described = []
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        labels = pod.metadata.labels or {}
        role = labels.get("tlt.dev/active-role") or "-"
        phase = "Terminating" if pod.metadata.deletion_timestamp else (pod.status.phase or "?")
        described.append(f"{pod.metadata.name.removeprefix(prefix)}={role}/{phase}")
    return " | ".join([", ".join(parts), " ".join(described) or "no pods"])


def _pods(args) -> int:
    import time

    from tlt.dev.cluster import DevCluster
    from tlt.dev.tools import cache_dir

    cluster = DevCluster.load(args.state_dir)
    if not cluster.running().get("kube-apiserver"):
        raise _err(f"no dev cluster running in {cluster.state_dir}: start one with `tlt dev cluster up`")
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    from tlt.api.model import API_GROUP, API_VERSION, PLURAL
    from tlt.cli import CommandError
    from tlt.dev.pods import LocalPods

    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    ns, name = args.namespace, args.job

    def say(text: str) -> None:
        print(f"[{_clock()}] {text}", flush=True)

    def get_job() -> dict:
        try:
            return custom.get_namespaced_custom_object(API_GROUP, API_VERSION, ns, PLURAL, name)
        except ApiException as err:
            if err.status != 404:
                raise _err(f"reading job {ns}/{name}: {err.status} {err.reason}") from None
        try:
            client.ApiextensionsV1Api(api).read_custom_resource_definition(f"{PLURAL}.{API_GROUP}")
        except ApiException:
            raise _err("the ReasoningRLJob CRD is not installed on the dev cluster: "
                       "`tlt crd | kubectl apply -f -`") from None
        raise _err(f"job {name} not found in namespace {ns} (`kubectl get rlj -A` lists the jobs)")

    def list_pods() -> list:
        return core.list_namespaced_pod(ns, label_selector=f"tlt.dev/job={name}").items

    try:
        job = get_job()
    except Exception as err:
        if isinstance(err, CommandError):
            raise
        raise _err(f"the dev cluster's API server does not answer: {err}") from None
    phase = (job.get("status") or {}).get("phase")
    if phase in FINISHED:
        say(f"job {ns}/{name} has already finished: {phase} (delete and re-apply it to run it again)")
        return 0 if phase == "Succeeded" else 1

    deadline = time.monotonic() + args.pods_timeout
    if not list_pods():
        say(f"waiting for the operator to create the pods of {ns}/{name} (is `python -m tlt_operator` running?)")
    while not list_pods():
        if time.monotonic() > deadline:
            raise _err(f"job {ns}/{name} has no pods after {args.pods_timeout:.0f}s: is the operator running "
                       f"(`python -m tlt_operator` with KUBECONFIG={cluster.kubeconfig})? "
                       f"`kubectl describe rlj {name} -n {ns}` shows its events")
        time.sleep(1.0)
        phase = (get_job().get("status") or {}).get("phase")
        if phase in ("Invalid", "Suspended"):
            raise _err(f"job {ns}/{name} is {phase}: it gets no pods (`kubectl describe rlj {name} -n {ns}`)")

    workdir = (args.workdir or cache_dir() / "dev-pods" / ns / name).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    threads = str(max(1, args.threads))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    local = LocalPods(api, ns, name, workdir=workdir, env=env, log=lambda text: say(text.removeprefix("[pods] ")))
    say(f"running the pods of {ns}/{name} as local processes; their folders and logs are in {workdir}")
    code = 1
    try:
        local.start()
        last, last_at = "", 0.0
        while True:
            try:
                job, pods = get_job(), list_pods()
            except CommandError:
                raise
            except Exception as err:  # a hiccup of the API server: say it, keep going
                say(f"reading the job: {err}")
                time.sleep(args.interval)
                continue
            line = progress_line(job, pods)
            if line != last or time.monotonic() - last_at >= 30:
                say(line)
                last, last_at = line, time.monotonic()
            phase = (job.get("status") or {}).get("phase")
            if phase in FINISHED:
                conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []}
                why = conditions.get(phase) or {}
                say(f"job {ns}/{name} {phase}" + (f": {why.get('reason')}: {why.get('message')}" if phase != "Succeeded" and why else ""))
                code = 0 if phase == "Succeeded" else 1
                break
            time.sleep(args.interval)
    except KeyboardInterrupt:
        say("interrupted: stopping the local pods (the job and its pods stay; run again to go on)")
        code = 130
    finally:
        left = local.stop()
        if left:
            say(f"killed {len(left)} leftover processes of the local pods (Ray nodes): pids {', '.join(map(str, left))}")
        say(f"stopped every local pod; logs: {workdir}/<pod>/container.log")
    return code
