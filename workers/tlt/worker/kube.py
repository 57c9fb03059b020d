"""The worker's Kubernetes API I/O: the only module of the worker that talks to the API server.

A job's pod may do three things there (its Role allows no more): patch the job's progress
ConfigMap (`tlt.worker.status` decides what goes in it), watch and label its own pod
(`tlt.worker.role_watcher`), and read its job (`tlt.worker.pod`: whether every step is done).
The API's errors leave this module as `ApiError` (its HTTP status and reason), so the callers
import nothing of the Kubernetes client. The client itself is imported on first use: the
operator and embedded runs import the callers without ever talking to a cluster.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

GONE = 410  # a watch's resource version is too old: list again from now


class ApiError(Exception):
    """A refused or failed API call: `status` is its HTTP status (None when the call got no answer)."""

    def __init__(self, status: int | None, reason: str | None):
        super().__init__(f"({status}) {reason}" if status else (reason or "API call failed"))
        self.status = status
        self.reason = reason


@contextmanager
def _translated():
    from kubernetes.client.rest import ApiException

    try:
        yield
    except ApiException as err:
        raise ApiError(err.status or None, err.reason) from err


def api_client():
    """In a pod its ServiceAccount; elsewhere (local runs, tests) the kubeconfig."""
    from kubernetes import client

    from tlt.kubeconfig import load_kube_config

    load_kube_config()
    return client.ApiClient()


class WorkerApi:
    """What a job's pod does with the API, on one client (`api_client`; None: the default one)."""

    def __init__(self, api_client=None):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(self.core.api_client)

    def patch_config_map_data(self, namespace: str, name: str, data: dict[str, str]) -> None:
        with _translated():
            self.core.patch_namespaced_config_map(name, namespace, {"data": data})

    def label_pod(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        with _translated():
            self.core.patch_namespaced_pod(name, namespace, {"metadata": {"labels": labels}})

    def read_job(self, namespace: str, name: str) -> dict:
        """The job (a ReasoningRLJob) as a plain manifest."""
        from tlt.api.model import API_GROUP, API_VERSION, PLURAL

        with _translated():
            return self.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)

    def watch_pod(self, namespace: str, name: str, resource_version: str | None = None,
                  timeout_seconds: int = 60) -> Iterator[dict]:
        """The pod's metadata at each ADDED or MODIFIED event (field selector `metadata.name=<name>`),
        until the server ends the watch; from `resource_version` when given. Close it (or leave the
        loop) to stop watching. A resource version too old raises `ApiError` with status `GONE`."""
        from kubernetes import watch

        stream = watch.Watch()
        kwargs = {"field_selector": f"metadata.name={name}", "timeout_seconds": timeout_seconds}
        if resource_version:
            kwargs["resource_version"] = resource_version
        try:
            with _translated():
                for event in stream.stream(self.core.list_namespaced_pod, namespace, **kwargs):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        pod = event["raw_object"] if "raw_object" in event else self.core.api_client.sanitize_for_serialization(event["object"])
                        yield pod["metadata"]
        finally:
            stream.stop()
