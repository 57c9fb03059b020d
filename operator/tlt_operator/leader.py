"""Leader election through a coordination.k8s.io Lease, as controller-runtime does it.

Several operator replicas may run (the chart's `replicaCount: 2`); one holds the
Lease and reconciles, the others wait. The holder renews the Lease every
`renew` seconds; a replica takes it over when the record has not changed for
`duration` seconds by its own clock (no clock comparison across machines). A
leader that cannot renew within `duration` exits at once, so two replicas never
act on the same jobs for longer than one lease; the kubelet restarts it as a
candidate. The Lease is read and written through `Kube` (kube.py), as a plain dict.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from tlt_operator.kube import ApiError, Conflict, Kube, NotFound

log = logging.getLogger("tlt_operator.leader")


def _micro_time() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElection:
    def __init__(self, kube: Kube, namespace: str, name: str = "tlt-operator", identity: str | None = None,
                 duration: float = 15.0, renew: float = 10.0, retry: float = 2.0, clock=time.monotonic):
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        self.duration, self.renew, self.retry = duration, renew, retry
        self.clock = clock
        self._observed: tuple | None = None  # (holder, renewTime, transitions) last seen
        self._observed_at = 0.0
        self.leading = False

    @classmethod
    def from_env(cls, kube: Kube, env=os.environ) -> "LeaderElection":
        namespace = env.get("TLT_LEADER_ELECTION_NAMESPACE") or env.get("TLT_OPERATOR_NAMESPACE") or "default"
        duration = float(env.get("TLT_LEASE_SECONDS", "15"))
        return cls(kube, namespace, env.get("TLT_LEADER_ELECTION_ID", "tlt-operator"), identity=env.get("POD_NAME") or None,
                   duration=duration, renew=duration * 2 / 3, retry=max(0.5, duration / 7))

    def try_acquire(self) -> bool:
        """One attempt: create the Lease, renew it, or take it over once it expired. True while leading."""
        now = self.clock()
        try:
            lease = self.kube.read_lease(self.namespace, self.name)
        except NotFound:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(transitions=0)}
            try:
                self.kube.create_lease(body)
            except Conflict:  # another replica was faster
                return False
            self._observed_at = now
            return self._lead()
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        record = (holder, str(spec.get("renewTime")), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        mine = holder == self.identity
        if not mine and holder and now - self._observed_at < (spec.get("leaseDurationSeconds") or self.duration):
            return False  # held by a live leader
        transitions = (spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        lease["spec"] = self._spec(transitions, acquired=spec.get("acquireTime") if mine else None)
        try:
            self.kube.replace_lease(lease)  # resourceVersion: one writer wins
        except Conflict:
            return False
        self._observed_at = now
        return self._lead()

    def _spec(self, transitions: int, acquired: str | None = None) -> dict:
        now = _micro_time()
        return {"holderIdentity": self.identity, "leaseDurationSeconds": int(round(self.duration)),
                "acquireTime": acquired or now, "renewTime": now, "leaseTransitions": transitions}

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
            lease = self.kube.read_lease(self.namespace, self.name)
            spec = lease.get("spec")
            if (spec.get("holderIdentity") if spec else None) != self.identity:
                return
            del spec["holderIdentity"]
            spec["leaseDurationSeconds"] = 1
            self.kube.replace_lease(lease)
            log.info("%s released the lease %s/%s", self.identity, self.namespace, self.name)
        except ApiError as err:  # it expires by itself
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
