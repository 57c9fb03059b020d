"""Leader election through a coordination.k8s.io Lease, as controller-runtime does it.

Several operator replicas may run (the chart's `replicaCount: 2`); one holds the
Lease and reconciles, the others wait. The holder renews the Lease every
`renew` seconds; a replica takes it over when the record has not changed for
`duration` seconds by its own clock (no clock comparison across machines). A
leader that cannot renew within `duration` exits at once, so two replicas never
act on the same jobs for longer than one lease; the kubelet restarts it as a
candidate.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger("tlt_operator.leader")


def _micro_time() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElection:
    def __init__(self, api_client, namespace: str, name: str = "tlt-operator", identity: str | None = None,
                 duration: float = 15.0, renew: float = 10.0, retry: float = 2.0, clock=time.monotonic):
        self.leases = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        self.duration, self.renew, self.retry = duration, renew, retry
        self.clock = clock
        self._observed: tuple | None = None  # (holder, renewTime, transitions) last seen
        self._observed_at = 0.0
        self.leading = False

    @classmethod
    def from_env(cls, api_client, env=os.environ) -> "LeaderElection":
        namespace = env.get("TLT_LEADER_ELECTION_NAMESPACE") or env.get("TLT_OPERATOR_NAMESPACE") or "default"
        duration = float(env.get("TLT_LEASE_SECONDS", "15"))
        return cls(api_client, namespace, env.get("TLT_LEADER_ELECTION_ID", "tlt-operator"), identity=env.get("POD_NAME") or None,
                   duration=duration, renew=duration * 2 / 3, retry=max(0.5, duration / 7))

    def try_acquire(self) -> bool:
        """One attempt: create the Lease, renew it, or take it over once it expired. True while leading."""
        now = self.clock()
        try:
            lease = self.leases.read_namespaced_lease(self.name, self.namespace)
        except ApiException as err:
            if err.status != 404:
                raise
            body = client.V1Lease(metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                                  spec=self._spec(transitions=0))
            try:
                self.leases.create_namespaced_lease(self.namespace, body)
            except ApiException as create_err:
                if create_err.status == 409:  # another replica was faster
                    return False
                raise
            self._observed_at = now
            return self._lead()
        spec = lease.spec or client.V1LeaseSpec()
        record = (spec.holder_identity, str(spec.renew_time), spec.lease_transitions)
        if record != self._observed:
            self._observed, self._observed_at = record, now
        mine = spec.holder_identity == self.identity
        if not mine and spec.holder_identity and now - self._observed_at < (spec.lease_duration_seconds or self.duration):
            return False  # held by a live leader
        transitions = (spec.lease_transitions or 0) + (0 if mine else 1)
        lease.spec = self._spec(transitions, acquired=spec.acquire_time if mine else None)
        try:
            self.leases.replace_namespaced_lease(self.name, self.namespace, lease)  # resourceVersion: one writer wins
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        self._observed_at = now
        return self._lead()

    def _spec(self, transitions: int, acquired=None) -> client.V1LeaseSpec:
        now = _micro_time()
        return client.V1LeaseSpec(holder_identity=self.identity, lease_duration_seconds=int(round(self.duration)),
                                  acquire_time=acquired or now, renew_time=now, lease_transitions=transitions)

    def _lead(self) -> bool:
        if not self.leading:
            log.info("%s leads (lease %s/%s)", self.identity, self.namespace, self.name)
        self.leading = True
        return True

    def release(self) -> None:
        """Give the Lease up (a clean shutdown): a waiting replica takes over at once, not after a lease."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = self.leases.read_namespaced_lease(self.name, self.namespace)
            if (lease.spec.holder_identity if lease.spec else None) != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            self.leases.replace_namespaced_lease(self.name, self.namespace, lease)
            log.info("%s released the lease %s/%s", self.identity, self.namespace, self.name)
        except ApiException as err:  # it expires by itself
            log.warning("releasing the lease: %s", err.reason)

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this replica leads (True) or `stop` is set (False)."""
        said = False
        while not stop.is_set():
            try:
                if self.try_acquire():
                    return True
            except Exception as err:  # the API server is away: keep trying
                log.warning("leader election: %s", err)
            if not said:
                log.info("%s waits to lead (lease %s/%s is held)", self.identity, self.namespace, self.name)
                said = True
            stop.wait(self.retry)
        return False

    def keep(self, on_lost) -> threading.Thread:
        """Renew in the background; `on_lost()` once renewing failed for a whole lease duration."""
        def run():
            last = self.clock()
            while True:
                time.sleep(self.renew)
                try:
                    if self.try_acquire():
                        last = self.clock()
                        continue
                except Exception as err:
                    log.warning("renewing the lease: %s", err)
                if self.clock() - last >= self.duration:
                    self.leading = False
                    log.error("%s lost the lease %s/%s", self.identity, self.namespace, self.name)
                    on_lost()
                    return

        thread = threading.Thread(target=run, name="lease", daemon=True)
        thread.start()
        return thread
