"""kopf handlers (thin) and the operator's background work.

kopf watches ReasoningRLJobs. It is not used for pods (it filters labels on the
client side): each namespace with jobs gets one pod watch and one ConfigMap watch
(`Kube.watch_children`, a thread each) with a server-side label selector on
`tlt.dev/job`; a pod event, or a new report in a job's progress ConfigMap, queues a
reconcile of its job. kopf daemons and timers would put a finalizer on every job
(deletion would hang while the operator is down), so periodic resyncs and backoff
requeues run on plain threads here. Every path ends in `reconcile_job`: read the
job, its pods and its report, run the pure `reconcile`, carry out the outcome;
writes the API server refuses become a `ReconcileError` event and condition. All
API I/O goes through `Kube` (kube.py).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import kopf

from tlt.api.model import API_GROUP, API_VERSION, PLURAL
from tlt_operator import metrics
from tlt_operator.builders import (
    ANNOTATION_ASSIGNED_ROLE,
    GPU_RESOURCE,
    LABEL_INDEX,
    LABEL_JOB,
    LABEL_ROLE,
    OperatorDefaults,
    pod_name,
    progress_map_name,
)
from tlt_operator.kube import Kube, WriteError
from tlt_operator.reconcile import RECONCILE_ERROR, Event, Observed, Outcome, pod_phase, reconcile, rfc3339

log = logging.getLogger("tlt_operator")

Key = tuple[str, str]  # (namespace, job name)


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass
class Runtime:
    """The operator's state between handler calls: known jobs, locks, watches, timers."""

    kube: Kube | None = None
    defaults: OperatorDefaults = field(default_factory=OperatorDefaults.from_env)
    backoff_base: float = field(default_factory=lambda: _env_float("TLT_BACKOFF_SECONDS", 10.0))
    resync_seconds: float = field(default_factory=lambda: _env_float("TLT_RESYNC_SECONDS", 30.0))
    jobs: set = field(default_factory=set)
    phases: dict = field(default_factory=dict)
    gpus: dict = field(default_factory=dict)
    reports: dict = field(default_factory=dict)
    locks: dict = field(default_factory=dict)
    queued: dict = field(default_factory=dict)
    timers: dict = field(default_factory=dict)
    watchers: dict = field(default_factory=dict)
    progress: dict = field(default_factory=dict)  # (namespace, job) -> its progress ConfigMap, as last watched
    mu: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    pool: ThreadPoolExecutor | None = None
    on_shutdown: list = field(default_factory=list)  # called once the operator stops (the leader's lease release)

    # Lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self.kube is None:
            self.kube = Kube.login()
        self.stop.clear()
        self.pool = ThreadPoolExecutor(max_workers=int(_env_float("TLT_RECONCILE_WORKERS", 8)), thread_name_prefix="reconcile")
        threading.Thread(target=self._resync_loop, name="resync", daemon=True).start()

    def shutdown(self) -> None:
        self.stop.set()
        with self.mu:
            for timer in self.timers.values():
                timer.cancel()
            self.timers.clear()
        if self.pool:
            self.pool.shutdown(wait=False, cancel_futures=True)
        for call in self.on_shutdown:
            call()

    def track(self, key: Key) -> None:
        with self.mu:
            self.jobs.add(key)
            namespace = key[0]
            if namespace not in self.watchers:
                self.watchers[namespace] = [
                    threading.Thread(target=self.kube.watch_children, name=f"{kind}-{namespace}", daemon=True,
                                     args=(namespace, kind, functools.partial(self._on_child, namespace, kind), self.stop))
                    for kind in ("pods", "configmaps")
                ]
                for thread in self.watchers[namespace]:
                    thread.start()

    def forget(self, key: Key) -> None:
        with self.mu:
            self.jobs.discard(key)
            self.phases.pop(key, None)
            self.gpus.pop(key, None)
            self.reports.pop(key, None)
            self.progress.pop(key, None)
            timer = self.timers.pop(key, None)
        if timer:
            timer.cancel()
        self._publish_gauges()

    # Reconcile ---------------------------------------------------------------------

    def _lock(self, key: Key) -> threading.Lock:
        with self.mu:
            return self.locks.setdefault(key, threading.Lock())

    def reconcile_job(self, key: Key, full: bool = True) -> Outcome | None:
        """Reconcile one job now (serialized per job). Raises on API errors so kopf retries."""
        namespace, name = key
        started = time.perf_counter()
        result = "error"
        try:
            with self._lock(key):
                body = self.kube.get_job(namespace, name)
                if body is None:
                    self.forget(key)
                    result = "gone"
                    return None
                body.setdefault("metadata", {}).setdefault("namespace", namespace)
                # A spec not acted on yet needs every child seen: its ConfigMap is re-rendered before pods roll.
                full = full or (body.get("status") or {}).get("observedGeneration") != body["metadata"].get("generation")
                pods = self.kube.list_pods(namespace, name)
                supporting = self.kube.list_supporting(namespace, name) if full else None
                with self.mu:
                    report = self.progress.get(key)
                if report is None:
                    report = self.kube.get_progress(namespace, name)
                compute = time.perf_counter()
                outcome = reconcile(body, Observed(pods, supporting, report), datetime.now(timezone.utc), self.defaults, self.backoff_base)
                metrics.COMPUTE_SECONDS.observe(time.perf_counter() - compute)
                errors = self.kube.apply(body, outcome)
                self._report_errors(body, outcome, errors)
                self._record(key, body, pods, outcome)
                result = "changed" if not outcome.empty else "unchanged"
                return outcome
        finally:
            metrics.RECONCILES.labels(result).inc()
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    def _report_errors(self, body: dict, outcome: Outcome, errors: list[WriteError]) -> None:
        """Writes the API server refused: a Warning event and the ReconcileError condition while they
        last (the condition goes False at the next reconcile whose writes all pass)."""
        status = {**(body.get("status") or {}), **(outcome.status or {})}
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != RECONCILE_ERROR]
        previous = next((c for c in status.get("conditions") or [] if c.get("type") == RECONCILE_ERROR), None)
        if errors:
            message = "; ".join(map(str, errors))[:1024]
            for error in errors:
                log.warning("%s/%s: %s", body["metadata"]["namespace"], body["metadata"]["name"], error)
            wanted = {"type": RECONCILE_ERROR, "status": "True", "reason": "APIError", "message": message}
        elif previous is not None and previous.get("status") == "True":
            wanted = {"type": RECONCILE_ERROR, "status": "False", "reason": "Reconciled", "message": "the last writes passed"}
        else:
            return
        # A pod that could not be created waits in `replacing` (uncounted): missing, it is no deleted pod.
        unmade = {_slot(e.obj) for e in errors if e.obj and e.obj.get("kind") == "Pod"} - {None}
        replacing = sorted(set(status.get("replacing") or []) | unmade)
        if previous is not None and all(previous.get(k) == v for k, v in wanted.items()) and replacing == sorted(
                status.get("replacing") or []):
            return
        if errors and not (previous is not None and all(previous.get(k) == v for k, v in wanted.items())):
            self.kube.post_event(body, Event("ReconcileError", wanted["message"], "Warning"))
        wanted["lastTransitionTime"] = rfc3339(datetime.now(timezone.utc))
        patch = {"conditions": [*conditions, wanted]}
        if unmade:
            patch["replacing"] = replacing
        try:
            self.kube.patch_status(body["metadata"]["namespace"], body["metadata"]["name"], patch)
        except Exception as err:  # the next reconcile tries again
            log.warning("could not set the ReconcileError condition: %s", err)

    def note_report(self, key: Key, config_map: dict | None) -> bool:
        """Remember a job's progress ConfigMap; whether its content (or owner) differs from the last one seen."""
        meta = (config_map or {}).get("metadata") or {}
        report = json.dumps([(config_map or {}).get("data"), meta.get("ownerReferences")], sort_keys=True, default=str)
        with self.mu:
            self.progress[key] = config_map
            if self.reports.get(key) == report:
                return False
            self.reports[key] = report
        return True

    def kick(self, key: Key, full: bool = False) -> None:
        """Queue a reconcile; kicks that arrive while one is queued are merged into it."""
        if self.stop.is_set() or self.pool is None:
            return
        with self.mu:
            if key in self.queued:
                self.queued[key] |= full
                return
            self.queued[key] = full
        self.pool.submit(self._run_queued, key)

    def _run_queued(self, key: Key) -> None:
        with self.mu:
            full = self.queued.pop(key, False)
        try:
            self.reconcile_job(key, full)
        except Exception as err:  # the resync loop retries; say what failed
            log.warning("reconcile of %s/%s failed: %s", key[0], key[1], err)

    def _record(self, key: Key, body: dict, pods: list[dict], outcome: Outcome) -> None:
        status = {**(body.get("status") or {}), **(outcome.status or {})}
        gpus: dict[tuple[str, str], int] = {}
        for pod in pods:
            if pod_phase(pod) not in ("Pending", "Running") or pod["metadata"]["name"] in outcome.delete_pods:
                continue
            role = (pod["metadata"].get("labels") or {}).get(LABEL_ROLE, "")
            annotations = dict((pod["metadata"].get("annotations") or {}))
            for patch in outcome.annotate:
                if patch.pod == pod["metadata"]["name"]:
                    annotations.update(patch.annotations)
            activity = annotations.get(ANNOTATION_ASSIGNED_ROLE) or role
            for container in pod["spec"].get("containers") or []:
                limits = (container.get("resources") or {}).get("limits") or {}
                count = int(limits.get(GPU_RESOURCE, 0) or 0)
                if count:
                    gpus[(role, activity)] = gpus.get((role, activity), 0) + count
        for event in outcome.events:
            metrics.EVENTS.labels(event.reason).inc()
            if event.reason == "GPULent":
                metrics.LENDS.inc()
            elif event.reason == "GPUReturned":
                metrics.RETURNS.inc()
            elif event.reason == "PodReplaced":
                metrics.REPLACEMENTS.inc()
            elif event.reason == "TailConsolidated":
                metrics.CONSOLIDATIONS.inc()
        with self.mu:
            self.phases[key] = status.get("phase", "Pending")
            self.gpus[key] = gpus
        if outcome.requeue_after is not None:
            self._requeue(key, outcome.requeue_after)
        if outcome.delete_job:
            self.forget(key)
        self._publish_gauges()

    def _publish_gauges(self) -> None:
        with self.mu:
            phases: dict[str, int] = {}
            for phase in self.phases.values():
                phases[phase] = phases.get(phase, 0) + 1
            gpus: dict[tuple[str, str], int] = {}
            for per_job in self.gpus.values():
                for k, v in per_job.items():
                    gpus[k] = gpus.get(k, 0) + v
        for phase in ("Pending", "Created", "Running", "Suspended", "Succeeded", "Failed", "Invalid"):
            metrics.JOBS.labels(phase).set(phases.get(phase, 0))
        for role in ("trainer", "rollout", "worker", "drafter"):
            for activity in ("trainer", "rollout", "worker", "drafter"):
                metrics.GPUS.labels(role, activity).set(gpus.get((role, activity), 0))

    def _requeue(self, key: Key, seconds: float) -> None:
        if seconds > self.resync_seconds:
            return  # the resync loop comes sooner
        timer = threading.Timer(max(0.05, seconds + 0.05), self.kick, args=(key, True))
        timer.daemon = True
        with self.mu:
            old = self.timers.pop(key, None)
            self.timers[key] = timer
        if old:
            old.cancel()
        timer.start()

    # Background threads ------------------------------------------------------------

    def _resync_loop(self) -> None:
        while not self.stop.wait(self.resync_seconds):
            with self.mu:
                keys = sorted(self.jobs)
            for key in keys:
                self.kick(key, full=True)

    def _on_child(self, namespace: str, kind: str, event_type: str, obj: dict) -> None:
        """A child's watch event (`Kube.watch_children`): a pod event kicks its job; a progress ConfigMap
        event kicks it when the report changed."""
        meta = obj.get("metadata") or {}
        job = (meta.get("labels") or {}).get(LABEL_JOB)
        if not job or (namespace, job) not in self.jobs:
            return
        if kind == "configmaps":
            if meta.get("name") != progress_map_name(job):
                return
            if not self.note_report((namespace, job), None if event_type == "DELETED" else obj):
                return
        self.kick((namespace, job))


def _slot(pod: dict) -> str | None:
    """The slot (`<job>-<role>-<index>`) a pod object fills, from its labels."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if not all(k in labels for k in (LABEL_JOB, LABEL_ROLE, LABEL_INDEX)):
        return None
    return pod_name(labels[LABEL_JOB], labels[LABEL_ROLE], int(labels[LABEL_INDEX]))


RUNTIME = Runtime()


# ---------------------------------------------------------------------------------
# kopf handlers: each one tracks the job and reconciles it.


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    settings.peering.standalone = True  # one operator (Deployment with Recreate), no peering objects
    settings.posting.level = logging.WARNING  # our own decisions are Events; kopf's chatter is not
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    settings.execution.max_workers = int(_env_float("TLT_HANDLER_WORKERS", 16))
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="operator.tlt.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="operator.tlt.dev", key="last-handled-configuration"
    )
    RUNTIME.start()


@kopf.on.login()
def login(**kwargs):
    # kopf's own kubeconfig login reads KUBECONFIG now (the client library's reads it at import).
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
def cleanup(**_) -> None:
    RUNTIME.shutdown()


def _handle(namespace: str, name: str, full: bool) -> None:
    key = (namespace, name)
    RUNTIME.track(key)
    RUNTIME.reconcile_job(key, full=full)


@kopf.on.create(API_GROUP, API_VERSION, PLURAL, backoff=2)
@kopf.on.resume(API_GROUP, API_VERSION, PLURAL, backoff=2)
def on_job(namespace: str, name: str, **_) -> None:
    _handle(namespace, name, full=True)


@kopf.on.update(API_GROUP, API_VERSION, PLURAL, field="spec", backoff=2)
def on_spec(namespace: str, name: str, **_) -> None:
    _handle(namespace, name, full=True)


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL, optional=True)  # optional: no finalizer, deletion never waits
def on_delete(namespace: str, name: str, **_) -> None:
    RUNTIME.forget((namespace, name))
