"""The in-pod side of role switching: watch this pod only, apply the assigned role, say so in a label.

The operator sets the annotation `tlt.dev/assigned-role` on a pod; the worker in
that pod sees it through a watch restricted to its own pod (field selector
`metadata.name=$POD_NAME`, which the job's Role allows), calls `set_role(role)`
(the same call the embedded control loop makes), and then sets its own label
`tlt.dev/active-role`, so `kubectl get pods -L tlt.dev/active-role` shows what each
worker does. The label is only written once `set_role` has returned (and not
returned False, which means the worker refused the switch for now).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from contextlib import closing
from typing import Callable

from tlt.worker.kube import GONE, ApiError, WorkerApi

ANNOTATION_ASSIGNED_ROLE = "tlt.dev/assigned-role"
ANNOTATION_CONSOLIDATE = "tlt.dev/consolidate"
LABEL_ROLE = "tlt.dev/role"
LABEL_ACTIVE_ROLE = "tlt.dev/active-role"

log = logging.getLogger("tlt.worker.role_watcher")
RETRY_SECONDS = 2.0  # a refused switch is asked again after this long, if nothing newer came


def wanted_role(pod_metadata: dict) -> str | None:
    """The role the pod should run: its assignment, else the role it was created for."""
    annotations = pod_metadata.get("annotations") or {}
    labels = pod_metadata.get("labels") or {}
    return annotations.get(ANNOTATION_ASSIGNED_ROLE) or labels.get(LABEL_ROLE)


class RoleWatcher:
    """Watches one pod and keeps `set_role` in step with its assigned role.

    `on_consolidate(request)` (optional, used by the coordinator in the head pod)
    receives tail consolidation requests, each once.
    """

    def __init__(
        self,
        set_role: Callable[[str], None],
        pod_name: str | None = None,
        namespace: str | None = None,
        api_client=None,
        on_consolidate: Callable[[dict], None] | None = None,
    ):
        self.set_role = set_role
        self.on_consolidate = on_consolidate
        self.pod_name = pod_name or os.environ["POD_NAME"]
        self.namespace = namespace or os.environ.get("POD_NAMESPACE", "default")
        self.api = WorkerApi(api_client)
        self.active: str | None = None
        self._consolidation: str | None = None
        self._latest: dict | None = None  # the pod's newest observed metadata
        self._retry: threading.Timer | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def handle(self, pod_metadata: dict) -> None:
        """React to one observed state of the pod (idempotent; the watch and a retry may both call it)."""
        with self._lock:
            self._handle(pod_metadata)

    def _handle(self, pod_metadata: dict) -> None:
        if pod_metadata.get("name") != self.pod_name:
            return  # the field selector already picks this pod; a lax server may not
        role = wanted_role(pod_metadata)
        labels = pod_metadata.get("labels") or {}
        self._latest = pod_metadata
        if role and role != self.active:
            if self.set_role(role) is False:
                self._retry_later()  # refused for now (a lend while work remains): ask again soon
            else:
                self.active = role
        if self.active and labels.get(LABEL_ACTIVE_ROLE) != self.active:
            self.api.label_pod(self.namespace, self.pod_name, {LABEL_ACTIVE_ROLE: self.active})
        request = (pod_metadata.get("annotations") or {}).get(ANNOTATION_CONSOLIDATE)
        if self.on_consolidate and request and request != self._consolidation:
            self._consolidation = request
            try:
                self.on_consolidate(json.loads(request))
            except ValueError:
                log.warning("ignoring a malformed %s annotation", ANNOTATION_CONSOLIDATE)

    def _retry_later(self) -> None:
        if self._retry is not None and self._retry.is_alive():
            return
        def again():
            if not self._stop.is_set() and self._latest is not None:
                self.handle(self._latest)
        self._retry = threading.Timer(RETRY_SECONDS, again)
        self._retry.daemon = True
        self._retry.start()

    def run(self) -> None:
        """Watch until `stop()`; reconnects after timeouts and errors."""
        resource_version = None
        while not self._stop.is_set():
            try:
                with closing(self.api.watch_pod(self.namespace, self.pod_name, resource_version, timeout_seconds=60)) as events:
                    for metadata in events:
                        if self._stop.is_set():
                            break
                        resource_version = metadata.get("resourceVersion") or resource_version
                        self.handle(metadata)
            except ApiError as err:
                if err.status == GONE:
                    resource_version = None
                else:
                    log.warning("watching pod %s: %s", self.pod_name, err.reason)
                    self._stop.wait(1.0)
            except Exception as err:
                log.warning("watching pod %s: %s", self.pod_name, err)
                self._stop.wait(1.0)

    def start(self) -> "RoleWatcher":
        self._thread = threading.Thread(target=self.run, name="role-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
