"""`tlt worker`: the program of every pod of a ReasoningRLJob (the operator starts it).

    tlt worker --config /etc/tlt/job.yaml --role R --index N [--head]

The head pod runs the Ray head and the coordinator (`tlt.coordinator.cluster`);
the other pods join and host their actor. See `tlt.worker.pod` for what a pod does
and its exit codes.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from contextlib import contextmanager

log = logging.getLogger("tlt.worker")

EXIT_RETRY = 1
EXIT_CONFIG = 2
EXIT_TERMINATED = 143
ROLES = ("trainer", "rollout", "worker", "drafter")


def register(subparsers) -> None:
    worker = subparsers.add_parser(
        "worker",
        help="run one pod of a ReasoningRLJob on a cluster (the operator starts this in each pod)",
        description="Run one pod of a ReasoningRLJob: the head pod (--head) starts the Ray head and the coordinator, "
        "which reports progress into the job's status; the other pods join the Ray cluster and host their rollout, "
        "trainer or drafter worker, switching roles as the operator assigns them. Serves /metrics and /healthz. "
        "Exit codes: 0 done, 1 retriable failure, 2 bad configuration.",
    )
    worker.add_argument("--config", default=os.environ.get("TLT_CONFIG", "/etc/tlt/job.yaml"),
                        help="the rendered job (the operator mounts it from the job's ConfigMap)")
    worker.add_argument("--role", required=True, choices=ROLES, help="the role this pod was created for")
    worker.add_argument("--index", required=True, type=int, help="the pod's index within its role")
    worker.add_argument("--head", action="store_true", help="run the Ray head and the coordinator here")
    worker.add_argument("--run-dir", help="checkpoints, metrics and the report (default: spec.output.path)")
    worker.add_argument("--metrics-port", type=int, default=int(os.environ.get("TLT_METRICS_PORT", "8080")),
                        help="port of /metrics and /healthz (0: none)")
    worker.set_defaults(func=run_worker)


def placement_error(spec, role: str, index: int, head: bool) -> str | None:
    """Why this pod's role and index are not a pod of the job, or None."""
    from tlt.api.topology import node_name, node_names, pod_nodes

    node = node_name(role, index)
    if node not in node_names(spec):
        return (f"--role {role} --index {index}: the job has no such pod (placement {spec.placement}; "
                f"its pods are {', '.join(node_names(spec))})")
    head_node = pod_nodes(spec).head
    if head and node != head_node:
        return f"--head: the job's head pod is {head_node}, not {node}"
    if not head and node == head_node:
        return f"{node} is the job's head pod: it runs with --head"
    return None


def run_worker(args) -> int:
    from tlt.api.load import load_jobs
    from tlt.api.errors import SpecError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not os.path.isfile(args.config):
        log.error("cannot read the job config %s: no such file (the operator mounts it at /etc/tlt/job.yaml)", args.config)
        return EXIT_CONFIG
    try:
        jobs = load_jobs(args.config)
    except SpecError as err:
        log.error("%s is not a valid ReasoningRLJob:\n  %s", args.config, "\n  ".join(map(str, err.errors)))
        return EXIT_CONFIG
    except OSError as err:
        log.error("cannot read the job config %s: %s (the operator mounts it at /etc/tlt/job.yaml)", args.config, err)
        return EXIT_CONFIG
    if len(jobs) != 1:
        log.error("%s holds %d jobs; a pod runs exactly one", args.config, len(jobs))
        return EXIT_CONFIG
    job = jobs[0]
    problem = placement_error(job.spec, args.role, args.index, args.head)
    if problem is None:
        from tlt.coordinator.shard import preflight

        # Rollout shards (and colocated workers) decode: they need what the rollout engine needs.
        problem = preflight(job.spec, decodes=args.role in ("rollout", "worker"))
    if problem:
        log.error("%s", problem)
        return EXIT_CONFIG

    from tlt.api.topology import pod_nodes
    from tlt.worker.pod import PodIdentity, install_sigterm, kube_api_client

    pod = PodIdentity.from_env(job.metadata.name, job.metadata.namespace or "default", args.role, args.index, args.head,
                               head_node=pod_nodes(job.spec).head)
    try:
        api = kube_api_client()
    except Exception as err:
        log.error("no access to the Kubernetes API (%s): run in the job's pod, or set KUBECONFIG", err)
        return EXIT_CONFIG
    install_sigterm()
    code = (run_head if args.head else run_member)(job, pod, api, args)
    from tlt.worker.pod import must_exit_now

    if must_exit_now():
        log.info("leaving without Ray's exit hooks (its disconnect hung), exit code %d", code)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _set_role_of(pod, actor):
    import ray

    def set_role(role: str) -> bool:
        handle = actor()
        if handle is None:
            return role == pod.role  # not created yet: it will start in its own role
        try:
            return bool(ray.get(handle.set_role.remote(role)))
        except ray.exceptions.RayActorError:  # a dead predecessor's actor: look again, asked again soon
            actor.forget()
            return False

    return set_role


def _metrics(port: int, actor, healthy) -> None:
    if not port:
        return
    import ray

    from tlt.engine.metrics import REGISTRY
    from tlt.worker.pod import PodMetrics, serve_metrics

    def actor_text() -> str:
        handle = actor()
        if handle is None:
            return ""
        try:
            return ray.get(handle.metrics_text.remote(), timeout=2)
        except ray.exceptions.RayActorError:
            actor.forget()
            return ""

    serve_metrics(PodMetrics(REGISTRY, actor_text), port, healthy=healthy)


@contextmanager
def _joined(pod, args, spec=None):
    """This pod's Ray node started (or joined) and its metrics served; the node stopped on the way out.
    Yields the node and the pod's `PodActor`."""
    from tlt.worker.pod import PodActor, RayNode, install_sigterm

    node = RayNode(pod)
    try:
        node.start()
        install_sigterm()  # again: connecting to Ray replaces the handler
        actor = PodActor(pod)
        # /healthz (the pod's probes) answers 200 while this pod's Ray node is in the job's cluster.
        _metrics(args.metrics_port, actor, healthy=node.alive)
        if spec is not None:  # the trainer ranks this pod hosts: logged once running, in /metrics
            from tlt.engine.metrics import REGISTRY
            from tlt.trainer.pod_ranks import serve_pod_ranks

            serve_pod_ranks(spec, pod.node, pod.ray_namespace, REGISTRY, alive=node.alive)
        yield node, actor
    finally:
        node.stop()


def run_head(job, pod, api, args) -> int:
    from tlt.api.topology import node_names
    from tlt.coordinator.cluster import ClusterRun, ConfigurationError
    from tlt.worker.pod import Terminated, wait_for_nodes
    from tlt.worker.role_watcher import RoleWatcher
    from tlt.worker.status import ProgressWriter

    status = ProgressWriter.for_job(pod.namespace, pod.job, api).start()
    watcher = None
    try:
        try:
            run = ClusterRun(job, status=status, run_dir=args.run_dir, progress=False)
        except OSError as err:  # the run folder cannot be made: spec.output.path is not writable here
            raise ConfigurationError(f"spec.output.path: {err}") from err
        # Before anything else: what the spec gets wrong is the only permanent failure (exit 2).
        run.check_configuration()
        with _joined(pod, args, job.spec) as (_, actor):
            watcher = RoleWatcher(_set_role_of(pod, actor), pod.pod_name, pod.namespace, api,
                                  on_consolidate=run.request_consolidation).start()
            wait_for_nodes(node_names(job.spec))
            summary = run.run()
            log.info("job %s finished: %s", pod.job, summary)
            return 0
    except Terminated:
        log.info("terminated (the pod is being deleted)")
        return EXIT_TERMINATED
    except ConfigurationError as err:
        log.error("%s", err)
        return EXIT_CONFIG
    except Exception:
        # Everything after the configuration check is retried: the operator restarts the job from its checkpoint.
        log.exception("the coordinator failed; the operator restarts the job from its last checkpoint")
        return EXIT_RETRY
    finally:
        if watcher is not None:
            watcher.stop()
        status.close()


def run_member(job, pod, api, args) -> int:
    from tlt.api.topology import actor_nodes
    from tlt.worker.pod import Terminated, job_finished
    from tlt.worker.role_watcher import RoleWatcher

    watcher = None
    try:
        with _joined(pod, args, job.spec) as (node, actor):
            if pod.node not in actor_nodes(job.spec):
                # Only a Ray node here (e.g. a second trainer pod while lending is off): it keeps its role.
                set_role = lambda role: role == pod.role  # noqa: E731
            elif actor.wait(alive=node.alive) is None:
                log.error("the Ray cluster went away before this pod's worker was created")
                return EXIT_RETRY
            else:
                set_role = _set_role_of(pod, actor)
            watcher = RoleWatcher(set_role, pod.pod_name, pod.namespace, api).start()
            while node.alive():
                time.sleep(2.0)
            if job_finished(api, pod):
                log.info("the job finished; waiting to be deleted")
                while True:
                    signal.pause()
            log.error("lost the Ray cluster before the job finished")
            return EXIT_RETRY
    except Terminated:
        log.info("terminated (the pod is being deleted)")
        return 0
    except Exception:
        log.exception("the pod's worker failed")
        return EXIT_RETRY
    finally:
        if watcher is not None:
            watcher.stop()
