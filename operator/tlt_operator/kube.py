"""All Kubernetes API I/O of the operator: reads, creates (409 = success), patches, deletes, events.

Objects travel as plain dicts in API (camelCase) form, the same shape the pure
builders and reconcile use.
"""

from __future__ import annotations

import hashlib
import os
import logging
import time
from datetime import datetime, timezone

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tlt.api.model import API_GROUP, API_VERSION, KIND, PLURAL
from tlt_operator.builders import LABEL_JOB
from tlt_operator.reconcile import Event, Outcome

log = logging.getLogger("tlt_operator.kube")

SUPPORTING_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service")


def load_config() -> None:
    """In-cluster credentials in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # KUBECONFIG is read now, not when the kubernetes package was imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)


def _labelled(obj: dict, job: str) -> bool:
    """The server selected by label already; checked again so a lax server cannot mix jobs up."""
    return ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_JOB) == job


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None):
        self.api = api_client or client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.rbac = client.RbacAuthorizationV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.calls = 0  # API requests made, for the metrics

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
        self.calls += 1
        pods = self.core.list_namespaced_pod(namespace, label_selector=f"{LABEL_JOB}={job}")
        return [p for p in map(self._plain, pods.items) if _labelled(p, job)]

    def list_supporting(self, namespace: str, job: str) -> dict[tuple[str, str], dict]:
        selector = f"{LABEL_JOB}={job}"
        lists = {
            "ServiceAccount": self.core.list_namespaced_service_account,
            "Role": self.rbac.list_namespaced_role,
            "RoleBinding": self.rbac.list_namespaced_role_binding,
            "ConfigMap": self.core.list_namespaced_config_map,
            "Service": self.core.list_namespaced_service,
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
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
        }
        self.calls += 1
        try:
            calls[kind](ns, obj)
            return True
        except ApiException as err:
            if err.status == 409:
                return False
            raise

    def replace_drifted(self, obj: dict) -> None:
        """Patch the fields reconcile compares (ConfigMap data, Role rules) back to the desired ones."""
        ns, name, kind = obj["metadata"]["namespace"], obj["metadata"]["name"], obj["kind"]
        self.calls += 1
        if kind == "ConfigMap":
            self.core.patch_namespaced_config_map(name, ns, {"data": obj["data"]})
        elif kind == "Role":
            self.rbac.patch_namespaced_role(name, ns, {"rules": obj["rules"]})

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
        meta = job["metadata"]
        now = datetime.now(timezone.utc)
        digest = hashlib.sha1(f"{event.reason}{event.message}{time.time_ns()}".encode()).hexdigest()[:10]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{digest}", "namespace": meta["namespace"]},
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
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        self.calls += 1
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as err:  # events are best effort: never fail a reconcile over one
            log.warning("could not post event %s: %s", event.reason, err.reason)

    def apply(self, job: dict, outcome: Outcome) -> None:
        """Carry out an outcome: creates, patches, deletes, annotations, status, events, job deletion."""
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        for obj in outcome.create:
            self.create(obj)
        for obj in outcome.patch:
            self.replace_drifted(obj)
        for pod in outcome.delete_pods:
            self.delete_pod(namespace, pod)
        for patch in outcome.annotate:
            self.annotate_pod(namespace, patch.pod, patch.annotations)
        if outcome.status:
            self.patch_status(namespace, name, outcome.status)
        for event in outcome.events:
            self.post_event(job, event)
        if outcome.delete_job:
            self.delete_job(namespace, name)
