"""`tlt dev cluster up|down|env|status`: a real control plane on loopback for development."""

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
    print(f"# stop with: tlt dev cluster down" + (f" --state-dir {args.state_dir}" if args.state_dir else ""),
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
