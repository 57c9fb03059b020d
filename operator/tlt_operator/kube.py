"""All Kubernetes API I/O of the operator: reads, creates (409 = success), patches, deletes, events,
the watches of the jobs' children, and the leader-election Lease.

Objects travel as plain dicts in API (camelCase) form, the same shape the pure
builders and reconcile use. No other operator module imports the client library:
the errors a caller must tell apart reach it as kube's own (`ApiError`, `NotFound`,
`Conflict`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tlt.api.model import API_GROUP, API_VERSION, KIND, PLURAL
from tlt.kubeconfig import load_kube_config as load_config  # the operator's login, as the pods'
from tlt_operator.builders import LABEL_JOB, RAY_TOKEN_FILE, progress_map_name
from tlt_operator.reconcile import Event, Outcome

log = logging.getLogger("tlt_operator.kube")

SUPPORTING_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "NetworkPolicy")
EVENT_CACHE = 4096  # aggregated events remembered (name -> count), as client-go's recorder keeps an LRU
WATCH_SECONDS = 60  # one child watch request; the next resumes where it ended


def _labelled(obj: dict, job: str) -> bool:
    """The server selected by label already; checked again so a lax server cannot mix jobs up."""
    return ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_JOB) == job


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WriteError:
    """A write of an outcome the API server refused (not a 404 or 409, which are expected)."""

    what: str
    status: int | None
    reason: str
    obj: dict | None = None  # the object being created, if it was a create

    def __str__(self) -> str:
        return f"{self.what}: {self.status} {self.reason}".strip()


class ApiError(Exception):
    """A request the API server refused, for modules that do not import the client library: its
    HTTP status (None: no answer) and reason; its text is the client's exception's."""

    def __init__(self, text: str, status: int | None = None, reason: str | None = None):
        super().__init__(text)
        self.status, self.reason = status, reason


class NotFound(ApiError):
    """404: the object does not exist."""


class Conflict(ApiError):
    """409: the object exists already (a create), or changed since it was read (a replace)."""


def _translated(err: ApiException) -> ApiError:
    kind = {404: NotFound, 409: Conflict}.get(err.status, ApiError)
    return kind(str(err), err.status, err.reason)


def _reason(err: ApiException) -> str:
    """The API server's message (a 422 names the invalid field), else the HTTP reason."""
    try:
        return json.loads(err.body or "{}").get("message") or err.reason or ""
    except (TypeError, ValueError):
        return err.reason or ""


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None):
        self.api = api_client or client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.rbac = client.RbacAuthorizationV1Api(self.api)
        self.networking = client.NetworkingV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.coordination = client.CoordinationV1Api(self.api)
        self.calls = 0  # API requests made, for the metrics
        self._event_counts: OrderedDict[str, int] = OrderedDict()
        self._event_lock = threading.Lock()

    @classmethod
    def login(cls) -> "Kube":
        """Log in as the job pods do (in-cluster, else KUBECONFIG) and connect."""
        load_config()
        return cls()

    def _plain(self, obj) -> dict:
        return self.api.sanitize_for_serialization(obj)

    # Reads -----------------------------------------------------------------------

    def get_job(self, namespace: str, name: str) -> dict | None:
        self.calls += 1
        try:
            return self.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list_pods(self, namespace: str, job: str) -> list[dict]:
        """Every pod labelled with the job's name (reconcile tells the job's own from others by owner uid)."""
        self.calls += 1
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"{LABEL_JOB}={job}")
        return [p for p in map(self._plain, pods.items) if _labelled(p, job)]

    def get_progress(self, namespace: str, job: str) -> dict | None:
        """The job's progress ConfigMap (the coordinator's report), or None."""
        self.calls += 1
        try:
            return self._plain(self.core.read_namespaced_config_map(progress_map_name(job), namespace))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list_supporting(self, namespace: str, job: str) -> dict[tuple[str, str], dict]:
        selector = f"{LABEL_JOB}={job}"
        lists = {
            "ServiceAccount": self.core.list_namespaced_service_account,
            "Role": self.rbac.list_namespaced_role,
            "RoleBinding": self.rbac.list_namespaced_role_binding,
            "ConfigMap": self.core.list_namespaced_config_map,
            "Service": self.core.list_namespaced_service,
            "NetworkPolicy": self.networking.list_namespaced_network_policy,
        }
        found = {}
        for kind, call in lists.items():
            self.calls += 1
            for item in call(namespace, label_selector=selector).items:
                plain = self._plain(item)
                if not _labelled(plain, job):
                    continue
                found[(kind, plain["metadata"]["name"])] = plain
        return found

    # Writes ----------------------------------------------------------------------

    def create(self, obj: dict) -> bool:
        """Create; an object that already exists counts as created (False is returned)."""
        ns, kind = obj["metadata"]["namespace"], obj["kind"]
        calls = {
            "Pod": self.core.create_namespaced_pod,
            "ServiceAccount": self.core.create_namespaced_service_account,
            "ConfigMap": self.core.create_namespaced_config_map,
            "Service": self.core.create_namespaced_service,
            "Secret": self.core.create_namespaced_secret,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
            "NetworkPolicy": self.networking.create_namespaced_network_policy,
        }
        if kind == "Secret" and not obj.get("data"):
            # The job's Ray token: random, made here, never kept by the operator (it may not read Secrets).
            obj = {**obj, "stringData": {RAY_TOKEN_FILE: secrets.token_hex(32)}}
        self.calls += 1
        try:
            calls[kind](ns, obj)
            return True
        except ApiException as err:
            if err.status == 409:
                return False
            raise

    def replace_drifted(self, obj: dict) -> None:
        """Patch the fields reconcile compares back to the desired ones."""
        ns, name, kind = obj["metadata"]["namespace"], obj["metadata"]["name"], obj["kind"]
        self.calls += 1
        if kind == "ConfigMap":
            self.core.patch_namespaced_config_map(name, ns, {"data": obj["data"]})
        elif kind == "Role":
            self.rbac.patch_namespaced_role(name, ns, {"rules": obj["rules"]})
        elif kind == "RoleBinding":
            self.rbac.patch_namespaced_role_binding(name, ns, {"subjects": obj["subjects"]})
        elif kind == "ServiceAccount":
            self.core.patch_namespaced_service_account(name, ns, {"imagePullSecrets": obj.get("imagePullSecrets")})
        elif kind == "NetworkPolicy":
            self.networking.patch_namespaced_network_policy(name, ns, {"spec": obj["spec"]})

    def delete_pod(self, namespace: str, name: str) -> None:
        self.calls += 1
        try:
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=30)
        except ApiException as err:
            if err.status != 404:
                raise

    def annotate_pod(self, namespace: str, name: str, annotations: dict) -> None:
        self.calls += 1
        try:
            self.core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": annotations}})
        except ApiException as err:
            if err.status != 404:  # gone meanwhile: the next reconcile sees it
                raise

    def patch_status(self, namespace: str, name: str, status: dict) -> None:
        self.calls += 1
        self.custom.patch_namespaced_custom_object_status(API_GROUP, API_VERSION, namespace, PLURAL, name, {"status": status})

    def delete_job(self, namespace: str, name: str) -> None:
        self.calls += 1
        try:
            self.custom.delete_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, PLURAL, name, body=client.V1DeleteOptions(propagation_policy="Background")
            )
        except ApiException as err:
            if err.status != 404:
                raise

    def post_event(self, job: dict, event: Event) -> None:
        """One Event object per series of the job (its name is a digest of the job's uid and the series):
        the first occurrence creates it, repeats raise its count (or set it, for an Event with a `count`) and
        update its message and lastTimestamp."""
        meta = job["metadata"]
        now = _stamp(datetime.now(timezone.utc))
        digest = hashlib.sha1(f"{meta.get('uid')}/{event.key}".encode()).hexdigest()[:12]
        name = f"{meta['name']}.{digest}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "reason": event.reason,
            "message": event.message[:1024],
            "type": event.type,
            "source": {"component": "tlt-operator"},
            "reportingComponent": "tlt-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": event.count or 1,
        }
        try:
            self.calls += 1
            try:
                self.core.create_namespaced_event(meta["namespace"], body)
                self._remember(name, body["count"])
                return
            except ApiException as err:
                if err.status != 409:
                    raise
            with self._event_lock:
                count = self._event_counts.get(name)
            if count is None and event.count is None:  # not seen by this process (restarted, or another replica's)
                self.calls += 1
                count = int(self.core.read_namespaced_event(name, meta["namespace"]).count or 1)
            count = event.count if event.count is not None else count + 1
            self.calls += 1
            self.core.patch_namespaced_event(name, meta["namespace"],
                                             {"count": count, "message": body["message"], "lastTimestamp": now})
            self._remember(name, count)
        except ApiException as err:  # events are best effort: never fail a reconcile over one
            log.warning("could not post event %s: %s", event.reason, err.reason)

    def _remember(self, name: str, count: int) -> None:
        with self._event_lock:
            self._event_counts[name] = count
            self._event_counts.move_to_end(name)
            while len(self._event_counts) > EVENT_CACHE:
                self._event_counts.popitem(last=False)

    def apply(self, job: dict, outcome: Outcome) -> list[WriteError]:
        """Carry out an outcome: creates, patches, the status, deletes, annotations, events, job deletion.

        The status goes before the deletes, so a pod the operator deletes is already listed as
        its own (replacing, Updating) when the deletion is seen, even across an operator restart.
        A write the API server refuses (a 422 on a pod) does not stop the rest: the refusals are
        returned (the caller posts an Event and sets the ReconcileError condition)."""
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        errors: list[WriteError] = []

        def attempt(what: str, call, *args, obj: dict | None = None) -> None:
            try:
                call(*args)
            except ApiException as err:
                if err.status in (401, 403) or err.status is None or err.status >= 500:
                    raise  # no access, or the server is away: the reconcile is retried as a whole
                errors.append(WriteError(what, err.status, _reason(err), obj))

        for obj in outcome.create:
            attempt(f"creating {obj['kind']} {obj['metadata']['name']}", self.create, obj, obj=obj)
        for obj in outcome.patch:
            attempt(f"updating {obj['kind']} {obj['metadata']['name']}", self.replace_drifted, obj)
        if outcome.status:
            self.patch_status(namespace, name, outcome.status)
        for pod in outcome.delete_pods:
            attempt(f"deleting Pod {pod}", self.delete_pod, namespace, pod)
        for patch in outcome.annotate:
            attempt(f"annotating Pod {patch.pod}", self.annotate_pod, namespace, patch.pod, patch.annotations)
        for event in outcome.events:
            self.post_event(job, event)
        if outcome.delete_job:
            self.delete_job(namespace, name)
        return errors

    # Watches ---------------------------------------------------------------------

    def watch_children(self, namespace: str, kind: str, on_event: Callable[[str, dict], None],
                       stop: threading.Event) -> None:
        """Watch the jobs' children of one kind ("pods" or "configmaps") in a namespace until `stop` is set,
        selected on the server (any `tlt.dev/job` label): `on_event(type, obj)` for each change, the
        object in API form. Each request lasts WATCH_SECONDS; the next resumes from the last
        resourceVersion seen (a bookmark's too); one the server no longer has (410 Gone) starts over
        from a fresh list. Other failures, the callback's included, are logged and retried after 1 s."""
        lister = self.core.list_namespaced_pod if kind == "pods" else self.core.list_namespaced_config_map
        resource_version = None
        while not stop.is_set():
            stream = watch.Watch()
            try:
                kwargs = {"label_selector": LABEL_JOB, "timeout_seconds": WATCH_SECONDS, "allow_watch_bookmarks": True}
                if resource_version:
                    kwargs["resource_version"] = resource_version
                for event in stream.stream(lister, namespace, **kwargs):
                    if stop.is_set():
                        break
                    obj = event["object"]
                    if event["type"] == "BOOKMARK":  # the client leaves it undeserialized: a dict, only a resourceVersion
                        meta = obj.get("metadata") if isinstance(obj, dict) else None
                        resource_version = (meta or {}).get("resourceVersion") or resource_version
                        continue
                    meta = obj.metadata if hasattr(obj, "metadata") else None
                    if meta is None:
                        continue
                    resource_version = meta.resource_version or resource_version
                    on_event(event["type"], self._plain(obj))
            except ApiException as err:
                if err.status == 410:
                    resource_version = None  # too old: start over from a fresh list
                else:
                    log.warning("%s watch in %s: %s", kind, namespace, err.reason)
                    stop.wait(1.0)
            except Exception as err:  # connection drops: reconnect
                log.warning("%s watch in %s: %s", kind, namespace, err)
                stop.wait(1.0)
            finally:
                stream.stop()

    # The leader-election Lease (errors as kube's own: leader.py imports no client) --------------

    def read_lease(self, namespace: str, name: str) -> dict:
        """The Lease, or NotFound."""
        self.calls += 1
        try:
            return self._plain(self.coordination.read_namespaced_lease(name, namespace))
        except ApiException as err:
            raise _translated(err) from err

    def create_lease(self, lease: dict) -> None:
        """Create the Lease; Conflict when it exists (another replica was faster)."""
        self.calls += 1
        try:
            self.coordination.create_namespaced_lease(lease["metadata"]["namespace"], lease)
        except ApiException as err:
            raise _translated(err) from err

    def replace_lease(self, lease: dict) -> None:
        """Write a Lease read before back; Conflict when it changed meanwhile (its resourceVersion: one writer wins)."""
        meta = lease["metadata"]
        self.calls += 1
        try:
            self.coordination.replace_namespaced_lease(meta["name"], meta["namespace"], lease)
        except ApiException as err:
            raise _translated(err) from err
