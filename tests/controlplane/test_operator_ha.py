"""Two operator replicas on the real control plane: one leads through a Lease, the other takes over
when the leader dies (the chart's `replicaCount: 2`)."""

from __future__ import annotations

import json

from jobs import Job, wait_for
from specs import manifest
from tlt_operator.local import OperatorProcess

JOB = {"rollout": {"replicas": 1, "gpusPerReplica": 0, "maxBatchSize": 8}, "trainer": {"gpusPerReplica": 0},
       "algorithm": {"groupSize": 2}}


def test_of_two_replicas_one_reconciles_and_the_other_takes_over_when_it_is_killed(crd, kubeconfig, api, kubectl,
                                                                                   namespace, tmp_path):
    env = {"TLT_LEADER_ELECTION_NAMESPACE": namespace, "TLT_LEADER_ELECTION_ID": "ha", "TLT_LEASE_SECONDS": "4",
           "TLT_RESYNC_SECONDS": "2", "TLT_BACKOFF_SECONDS": "0.5"}
    first = OperatorProcess(kubeconfig, tmp_path / "first.log", env, namespaces=[namespace]).start()
    second = None
    try:
        lease = lambda: json.loads(kubectl("get", "lease", "ha", "-n", namespace, "-o", "json", check=False).stdout or "{}")  # noqa: E731
        wait_for(lambda: lease().get("spec", {}).get("holderIdentity") == first.identity, what="the first replica leading")
        second = OperatorProcess(kubeconfig, tmp_path / "second.log", env, namespaces=[namespace]).start()
        job = Job(api, kubectl, namespace, manifest("ha", JOB))
        job.running_pods(2)
        assert second.reconciles() == 0 and "waits to lead" in second.logs(), "the standby does nothing"
        assert lease()["spec"]["holderIdentity"] == first.identity
        # The pods run as soon as they exist; the leader's reconcile posts its Created event just after.
        wait_for(lambda: len(job.events("Created")) == 1, what="the leader's Created event")

        first.kill()  # no release: the standby takes over once the lease is not renewed
        wait_for(lambda: lease().get("spec", {}).get("holderIdentity") == second.identity, timeout=30,
                 what="the second replica leading")
        assert lease()["spec"]["leaseTransitions"] >= 1
        other = Job(api, kubectl, namespace, manifest("ha-2", JOB))
        other.running_pods(2)
        assert second.reconciles() > 0
        assert len(job.events("Created")) == 1, "the new leader took the running job over without creating it again"
    finally:
        first.stop()
        if second is not None:
            second.stop()
