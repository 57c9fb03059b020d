"""The pure reconcile, driven against a small in-memory world that carries out its outcomes."""

import copy
import json
from datetime import datetime, timedelta, timezone

import pytest

from specs import manifest, with_fields
from tlt_operator.builders import OperatorDefaults
from tlt_operator.reconcile import Observed, backoff_seconds, reconcile, rfc3339

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)

BODY = manifest("demo", {
    "algorithm": {"groupSize": 4, "steps": 3},
    "rollout": {"replicas": 3, "gpusPerReplica": 1, "engine": "torch", "maxBatchSize": 32},
    "speculative": {"batchThreshold": 16},
    "elasticity": {"consolidateTail": {"threshold": 4}},
    "runPolicy": {"backoffLimit": 2},
    "storage": [{"name": "runs", "claimName": "runs", "mountPath": "/tlt"}],  # output.path /tlt/output is on it
}, namespace="ns", uid="uid-1", generation=1)


class World:
    """The API server and kubelet, as far as reconcile can tell."""

    def __init__(self, body=None, backoff=10.0):
        self.body = copy.deepcopy(body or BODY)
        self.pods: dict[str, dict] = {}
        self.supporting: dict = {}
        self.secrets: dict[str, dict] = {}
        self.report_map: dict | None = None  # the job's progress ConfigMap as the coordinator wrote it
        self.events = []
        self.job_deleted = False
        self.backoff = backoff
        self.now = T0
        self.status_writes = 0

    def reconcile(self, advance=0.0):
        self.now += timedelta(seconds=advance)
        out = reconcile(self.body, self.observed(), self.now, backoff_base=self.backoff)
        for obj in out.create:
            key = obj["metadata"]["name"]
            if obj["kind"] == "Pod":
                assert key not in self.pods, f"created {key} twice"
                self.pods[key] = {**copy.deepcopy(obj), "status": {"phase": "Pending"}}
                self.pods[key]["metadata"]["creationTimestamp"] = rfc3339(self.now)
            elif obj["kind"] == "Secret":  # created with the pods; the operator cannot read it back (409: exists)
                self.secrets.setdefault(key, copy.deepcopy(obj))
            else:
                assert (obj["kind"], key) not in self.supporting
                self.supporting[(obj["kind"], key)] = copy.deepcopy(obj)
        for obj in out.patch:
            self.supporting[(obj["kind"], obj["metadata"]["name"])] = copy.deepcopy(obj)
        for name in out.delete_pods:
            if self.pods[name]["metadata"].get("finalizers"):  # held (a lost node): it stays, terminating
                self.pods[name]["metadata"]["deletionTimestamp"] = rfc3339(self.now + timedelta(seconds=30))
            else:
                del self.pods[name]
        for patch in out.annotate:
            meta = self.pods[patch.pod]["metadata"]
            meta.setdefault("annotations", {}).update(patch.annotations)
        if out.status:
            self.status_writes += 1
            status = self.body.setdefault("status", {})
            for key, value in out.status.items():
                if value is None:
                    status.pop(key, None)
                else:
                    status[key] = copy.deepcopy(value)
        self.events += [(e.reason, e.message) for e in out.events]
        self.job_deleted |= out.delete_job
        return out

    def observed(self, supporting=True):
        return Observed(list(copy.deepcopy(self.pods).values()), dict(self.supporting) if supporting else None,
                        copy.deepcopy(self.report_map))

    def settle(self):
        """Reconcile until nothing changes; the last outcome must be empty."""
        for _ in range(5):
            if self.reconcile().empty:
                return
        raise AssertionError("reconcile did not settle")

    def start_pods(self, *names):
        for name in names or list(self.pods):
            self.pods[name]["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}

    def finish_pod(self, name, phase="Failed", exit_code=1, reason="Error"):
        self.pods[name]["status"] = {
            "phase": phase,
            "containerStatuses": [{"name": "tlt", "state": {"terminated": {"exitCode": exit_code, "reason": reason}}}],
        }

    def report(self, step, phase, shards, completed=None, updated_at=None, batch_threshold=None):
        """What the coordinator does: write its report into the job's progress ConfigMap."""
        progress = {
            "step": step,
            "phase": phase,
            "shards": [{"shard": i, "running": r, "waiting": 0, "finished": f} for i, (r, f) in enumerate(shards)],
        }
        if batch_threshold is not None:
            progress["batchThreshold"] = batch_threshold
        if updated_at:
            progress["updatedAt"] = updated_at
        cm = self.report_map or copy.deepcopy(self.supporting[("ConfigMap", "demo-progress")])
        cm["data"] = {**(cm.get("data") or {}), "progress": json.dumps(progress)}
        if completed is not None:
            cm["data"]["step"] = str(completed)
        self.report_map = cm

    def reasons(self):
        return [r for r, _ in self.events]

    def condition(self, kind):
        return next(c for c in self.body["status"]["conditions"] if c["type"] == kind)

    def annotation(self, pod, key):
        return (self.pods[pod]["metadata"].get("annotations") or {}).get(key)


def running_world(**kw):
    world = World(**kw)
    world.reconcile()
    world.start_pods()
    world.settle()
    world.events.clear()
    return world


def test_first_reconcile_creates_every_child_and_reports_created():
    world = World()
    out = world.reconcile()
    kinds = [o["kind"] for o in out.create]
    # The Ray token first (pods mount it), one identity per pod, config, progress, Service, NetworkPolicy, pods.
    assert kinds == ["Secret", *["ServiceAccount", "Role", "RoleBinding"] * 4, "ConfigMap", "ConfigMap", "Service",
                     "NetworkPolicy", "Pod", "Pod", "Pod", "Pod"]
    assert sorted(world.pods) == ["demo-rollout-0", "demo-rollout-1", "demo-rollout-2", "demo-trainer-0"]
    assert world.reasons() == ["Created"]
    status = world.body["status"]
    assert status["phase"] == "Created"
    assert world.condition("Created")["status"] == "True"
    assert status["roles"]["rollout"] == {"desired": 3, "ready": 0, "lent": 0}
    assert status["stepText"] == "0/3" and status["rolloutText"] == "0/3" and status["totalSteps"] == 3
    assert status["observedGeneration"] == 1


def test_reconcile_is_idempotent_and_writes_status_only_when_it_changed():
    world = World()
    world.reconcile()
    writes = world.status_writes
    out = world.reconcile(advance=30)
    assert out.empty and world.status_writes == writes


def test_all_pods_ready_means_running():
    world = World()
    world.reconcile()
    world.start_pods()
    world.reconcile()
    assert world.body["status"]["phase"] == "Running"
    assert world.body["status"]["rolloutText"] == "3/3"
    assert world.condition("Running")["status"] == "True"
    assert world.condition("Degraded")["status"] == "False"
    assert world.reconcile().empty


def test_invalid_spec_gets_invalid_condition_an_event_naming_the_field_and_no_pods():
    body = copy.deepcopy(BODY)
    body["spec"]["algorithm"]["groupSize"] = 1  # passes the schema's minimum, fails the cross-field rule
    world = World(body)
    out = world.reconcile()
    assert world.pods == {} and not out.create
    assert world.body["status"]["phase"] == "Invalid"
    reason, message = world.events[0]
    assert reason == "InvalidSpec" and "spec.algorithm.groupSize" in message
    assert world.condition("Invalid")["status"] == "True" and "groupSize" in world.condition("Invalid")["message"]
    assert world.reconcile(advance=10).empty  # the event is not repeated

    world.body["spec"]["algorithm"]["groupSize"] = 4
    world.body["metadata"]["generation"] = 2
    world.reconcile()
    assert len(world.pods) == 4
    assert world.condition("Invalid")["status"] == "False"
    assert world.body["status"]["phase"] == "Created" and world.body["status"]["observedGeneration"] == 2


def test_suspend_deletes_pods_and_keeps_progress_then_resume_recreates_them_without_counting_failures():
    world = running_world()
    world.report(1, "rollout", [(5, 0), (5, 0), (5, 0)], completed=1)
    world.body["spec"]["runPolicy"]["suspend"] = True
    world.reconcile()
    assert world.pods == {}
    assert world.body["status"]["phase"] == "Suspended"
    assert world.body["status"]["progress"]["step"] == 1 and world.body["status"]["step"] == 1
    assert "Suspended" in world.reasons()
    assert world.reconcile().empty

    world.events.clear()
    world.body["spec"]["runPolicy"]["suspend"] = False
    world.reconcile()
    assert len(world.pods) == 4
    assert world.reasons() == ["Resumed"], "a resume is not a second creation"
    assert world.body["status"]["failures"] == 0
    assert world.condition("Suspended")["status"] == "False"


def test_failed_pod_is_replaced_after_backoff_and_the_job_fails_past_backoff_limit():
    world = running_world()
    world.finish_pod("demo-rollout-1", exit_code=137, reason="OOMKilled")
    world.reconcile()
    assert "demo-rollout-1" not in world.pods
    assert world.body["status"]["failures"] == 1
    assert world.body["status"]["replacing"] == ["demo-rollout-1"]
    assert any(r == "PodFailed" and "OOMKilled" in m for r, m in world.events)
    assert world.condition("Degraded")["status"] == "True"

    out = world.reconcile(advance=5)  # backoff is 10 s after the first failure
    assert "demo-rollout-1" not in world.pods and out.requeue_after == pytest.approx(5)
    world.reconcile(advance=6)
    assert "demo-rollout-1" in world.pods and "PodReplaced" in world.reasons()
    assert world.body["status"]["replacing"] == []
    assert world.body["status"]["failures"] == 1  # counted once

    world.start_pods("demo-rollout-1")
    world.finish_pod("demo-rollout-0", exit_code=1)
    world.reconcile()
    world.reconcile(advance=21)
    world.finish_pod("demo-rollout-0", exit_code=1)
    world.reconcile()
    assert world.body["status"]["phase"] == "Failed"
    assert world.condition("Failed")["reason"] == "BackoffLimitExceeded"
    assert not any(p["status"]["phase"] == "Running" for p in world.pods.values()), "GPUs are given back"
    assert world.reconcile(advance=60).empty


def test_backoff_doubles_and_is_capped():
    assert [backoff_seconds(n, 10) for n in range(5)] == [0, 10, 20, 40, 80]
    assert backoff_seconds(20, 10) == 300


def test_permanent_exit_code_fails_the_job_at_once():
    world = running_world()
    world.finish_pod("demo-rollout-2", exit_code=127, reason="Error")
    world.reconcile()
    assert world.body["status"]["phase"] == "Failed"
    assert world.condition("Failed")["reason"] == "PermanentPodFailure"
    assert "command not found" in world.condition("Failed")["message"]


def test_deleted_pod_is_counted_and_recreated():
    world = running_world()
    del world.pods["demo-rollout-0"]
    world.reconcile()
    assert world.body["status"]["failures"] == 1
    assert any(r == "PodFailed" and "deleted" in m for r, m in world.events)
    world.reconcile(advance=10)
    assert "demo-rollout-0" in world.pods


def test_head_failure_restarts_every_pod_from_the_checkpoint():
    world = running_world()
    world.finish_pod("demo-trainer-0", exit_code=1)
    world.reconcile()
    assert world.pods == {} and "JobRestarted" in world.reasons()
    assert world.body["status"]["failures"] == 1  # the workers taken down with it are not failures
    world.reconcile(advance=10)
    assert len(world.pods) == 4


def test_a_restarted_job_is_not_lent_on_the_previous_coordinators_progress():
    world = running_world()
    world.report(1, "rollout", [(0, 32), (20, 12), (18, 14)], updated_at="2026-01-01T00:00:00Z")
    world.finish_pod("demo-trainer-0", exit_code=1)
    world.reconcile()
    world.reconcile(advance=10)
    world.start_pods()
    for pod in world.pods.values():  # the API server stamps the new pods
        pod["metadata"]["creationTimestamp"] = "2026-01-01T00:05:00+00:00"  # as kopf hands it over
    world.events.clear()
    world.reconcile()
    assert "GPULent" not in world.reasons(), "the old report is the previous coordinator's"
    world.report(1, "rollout", [(0, 32), (20, 12), (18, 14)], updated_at="2026-01-01T00:06:00Z")  # the new coordinator
    world.reconcile()
    assert world.annotation("demo-rollout-0", "tlt.dev/assigned-role") == "drafter"


def test_steps_completed_between_two_reconciles_each_get_an_event():
    world = running_world()
    world.report(1, "rollout", [(8, 0), (8, 0), (8, 0)], completed=0)
    world.reconcile()
    world.report(3, "rollout", [(8, 0), (8, 0), (8, 0)], completed=2)
    world.reconcile()
    assert [m for r, m in world.events if r == "StepCompleted"] == ["step 1/3 completed", "step 2/3 completed"]


def test_active_deadline_fails_the_job():
    body = copy.deepcopy(BODY)
    body["spec"]["runPolicy"]["activeDeadlineSeconds"] = 100
    world = running_world(body=body)
    out = world.reconcile(advance=50)
    assert out.requeue_after == pytest.approx(50)
    world.reconcile(advance=51)
    assert world.body["status"]["phase"] == "Failed"
    assert world.condition("Failed")["reason"] == "DeadlineExceeded"


def test_head_success_finishes_the_job_and_ttl_deletes_it():
    body = copy.deepcopy(BODY)
    body["spec"]["runPolicy"]["ttlSecondsAfterFinished"] = 60
    world = running_world(body=body)
    world.finish_pod("demo-trainer-0", phase="Succeeded", exit_code=0, reason="Completed")
    out = world.reconcile()
    assert world.body["status"]["phase"] == "Succeeded"
    assert list(world.pods) == ["demo-trainer-0"], "the head pod stays for its logs, the others give their GPUs back"
    assert world.condition("Succeeded")["status"] == "True" and world.body["status"]["completionTime"]
    assert out.requeue_after == 60
    assert not world.reconcile(advance=30).delete_job
    assert world.reconcile(advance=31).delete_job


def test_drained_shard_is_lent_and_returned_when_the_next_step_starts():
    world = running_world()
    world.report(1, "rollout", [(0, 32), (20, 12), (18, 14)])
    world.reconcile()
    assert world.annotation("demo-rollout-0", "tlt.dev/assigned-role") == "drafter"
    assert world.annotation("demo-trainer-0", "tlt.dev/assigned-role") == "drafter"
    assert world.annotation("demo-rollout-1", "tlt.dev/assigned-role") is None
    assert world.reasons().count("GPULent") == 2 and "ShardDrained" in world.reasons()
    assert world.body["status"]["rolloutText"] == "3/3 (1 lent)"
    assert world.body["status"]["roles"]["trainer"]["lent"] == 1
    world.events.clear()
    assert world.reconcile().empty, "a second reconcile of the same report changes nothing"

    world.report(1, "train", [(0, 32), (0, 32), (0, 32)], completed=0)
    world.reconcile()
    assert world.annotation("demo-trainer-0", "tlt.dev/assigned-role") == "trainer"
    assert ("GPUReturned", "demo-trainer-0 returned to trainer: training needs it") in world.events

    world.events.clear()
    world.report(2, "rollout", [(32, 0), (32, 0), (32, 0)], completed=1)
    world.reconcile()
    assert all(world.annotation(f"demo-rollout-{i}", "tlt.dev/assigned-role") == "rollout" for i in range(3))
    assert world.reasons().count("GPUReturned") == 3 and "StepCompleted" in world.reasons()
    assert world.body["status"]["stepText"] == "1/3"


def test_tail_consolidation_keeps_shards_within_the_threshold_the_coordinator_measured():
    # batchThreshold auto, measured at 3 by the coordinator: 6 sequences go to two shards of 3, not one of 6.
    world = running_world(body=with_fields(BODY, **{"speculative.batchThreshold": "auto"}))
    world.report(1, "rollout", [(3, 29), (2, 30), (1, 31)], batch_threshold=3)
    world.reconcile()
    assert world.body["status"]["progress"]["batchThreshold"] == 3
    request = json.loads(world.annotation("demo-trainer-0", "tlt.dev/consolidate"))
    assert request == {"step": 1, "moves": [{"target": "demo-rollout-1", "sources": ["demo-rollout-2"], "sequences": [1]}]}


def test_tail_consolidation_is_requested_from_the_coordinator_once():
    world = running_world()
    world.report(1, "rollout", [(3, 29), (2, 30), (1, 31)])
    world.reconcile()
    request = json.loads(world.annotation("demo-trainer-0", "tlt.dev/consolidate"))
    assert request == {"step": 1, "moves": [{"target": "demo-rollout-0", "sources": ["demo-rollout-1", "demo-rollout-2"], "sequences": [2, 1]}]}
    assert world.reasons().count("TailConsolidated") == 1
    world.reconcile()
    assert world.reasons().count("TailConsolidated") == 1
    # The coordinator moved them: the emptied shards are lent.
    world.report(1, "rollout", [(6, 29), (0, 30), (0, 31)])
    world.reconcile()
    assert world.annotation("demo-rollout-1", "tlt.dev/assigned-role") == "drafter"
    assert world.annotation("demo-rollout-2", "tlt.dev/assigned-role") == "drafter"


def test_lending_is_off_when_the_spec_says_so():
    body = copy.deepcopy(BODY)
    body["spec"]["elasticity"]["lendIdle"] = False
    world = running_world(body=body)
    world.report(1, "rollout", [(0, 32), (20, 12), (18, 14)])
    world.reconcile()
    assert not any(world.annotation(p, "tlt.dev/assigned-role") for p in world.pods)
    assert "GPULent" not in world.reasons() and "ShardDrained" in world.reasons()


def test_scaling_down_replicas_deletes_the_extra_pods_and_updates_config_and_rbac():
    world = running_world()
    world.body["spec"]["rollout"]["replicas"] = 2
    world.body["metadata"]["generation"] = 2
    out = world.reconcile()
    assert "demo-rollout-2" not in world.pods
    patched = {o["kind"] for o in out.patch}
    assert patched == {"ConfigMap"}, "the config follows; each pod's identity is its own and needs no change"
    assert world.body["status"]["failures"] == 0
    assert world.body["status"]["roles"]["rollout"]["desired"] == 2


def test_colocated_workers_are_lent_when_drained_and_taken_back_for_training():
    body = copy.deepcopy(BODY)
    body["spec"]["placement"] = "colocated"
    world = running_world(body=body)
    assert sorted(world.pods) == ["demo-worker-0", "demo-worker-1", "demo-worker-2"]
    world.report(1, "rollout", [(0, 32), (20, 12), (18, 14)])
    world.reconcile()
    assert world.annotation("demo-worker-0", "tlt.dev/assigned-role") == "drafter"
    assert world.body["status"]["rolloutText"] == "3/3 (1 lent)"
    world.report(1, "train", [(0, 32), (0, 32), (0, 32)])
    world.reconcile()
    assert world.annotation("demo-worker-0", "tlt.dev/assigned-role") == "worker"
    assert not any(world.annotation(p, "tlt.dev/assigned-role") == "drafter" for p in world.pods)


def test_spec_change_rolls_the_pods_once_with_one_event_and_no_failures():
    world = running_world()
    world.report(2, "rollout", [(5, 0), (5, 0), (5, 0)], completed=1)
    world.settle()
    world.events.clear()
    before = {n: world.annotation(n, "tlt.dev/pod-hash") for n in world.pods}
    world.body["spec"]["rollout"]["maxBatchSize"] = 64
    world.body["metadata"]["generation"] = 2
    out = world.reconcile()
    assert sorted(out.delete_pods) == sorted(before), "every pod reads the config: all of them roll"
    assert {o["kind"] for o in out.patch} == {"ConfigMap"}
    assert world.reasons() == ["SpecChanged"]
    assert "spec changed (rollout)" in world.events[0][1]
    assert world.body["status"]["observedGeneration"] == 2
    assert world.condition("Updating")["status"] == "True"

    world.reconcile()  # the old pods are gone: recreated from the new spec
    assert sorted(world.pods) == sorted(before)
    assert all(world.annotation(n, "tlt.dev/pod-hash") != before[n] for n in world.pods)
    assert world.reasons() == ["SpecChanged"], "no failures, replacements or a second Created"
    assert world.body["status"]["failures"] == 0 and world.condition("Updating")["status"] == "False"
    world.start_pods()
    world.settle()
    assert world.body["status"]["phase"] == "Running" and world.body["status"]["step"] == 1


@pytest.mark.parametrize(
    "field, value",
    [("suspend", False), ("ttlSecondsAfterFinished", 600), ("activeDeadlineSeconds", 86400), ("backoffLimit", 5)],
)
def test_lifecycle_fields_do_not_roll_pods(field, value):
    world = running_world()
    world.body["spec"]["runPolicy"][field] = value
    world.body["metadata"]["generation"] = 2
    out = world.reconcile()
    assert not out.delete_pods and not out.create and "SpecChanged" not in world.reasons()
    assert world.body["status"]["observedGeneration"] == 2


def test_changed_operator_defaults_roll_no_pods():
    world = running_world()
    world.reconcile()
    out = reconcile(world.body, world.observed(), world.now, OperatorDefaults(image_cuda="registry.test/worker-cuda:2"))
    assert out.empty, "an operator upgrade (new default images) rolls no pod: only the job's own spec does"


def test_a_spec_change_is_observed_only_by_a_reconcile_that_sees_the_config_map():
    world = running_world()
    world.body["spec"]["rollout"]["maxBatchSize"] = 64
    world.body["metadata"]["generation"] = 2
    out = reconcile(world.body, world.observed(supporting=False), world.now)
    assert not out.delete_pods and (out.status or {}).get("observedGeneration") is None
    assert world.reconcile().delete_pods and world.body["status"]["observedGeneration"] == 2


# ---------------------------------------------------------------------------------
# Failure policy: disruptions, deletions, stuck pods, restarts


def disrupt(world, name, kind="DisruptionTarget", reason="PreemptionByScheduler"):
    """What the scheduler, the eviction API, the taint manager (DisruptionTarget) or Kueue (TerminationTarget) do:
    a condition on the pod, then its deletion (it terminates for its grace period)."""
    pod = world.pods[name]
    pod["status"].setdefault("conditions", []).append({"type": kind, "status": "True", "reason": reason})
    pod["metadata"]["deletionTimestamp"] = rfc3339(world.now + timedelta(seconds=30))


def test_a_preempted_group_is_recreated_and_not_counted():
    world = running_world()
    for name in world.pods:
        disrupt(world, name, "TerminationTarget", "Preempted")  # Kueue stops the whole pod group
    world.reconcile()
    assert world.body["status"]["failures"] == 0 and world.body["status"].get("restarts", 0) == 0
    assert world.reasons().count("PodDisrupted") == 4 and "PodFailed" not in world.reasons()
    assert "JobRestarted" in world.reasons(), "the head went: every pod restarts from the checkpoint"
    for name in list(world.pods):
        world.finish_pod(name, exit_code=143, reason="Error")  # SIGTERM during shutdown
        world.pods[name]["metadata"]["deletionTimestamp"] = rfc3339(world.now)
    world.reconcile()
    world.pods.clear()  # the kubelet confirmed the ends
    world.reconcile()
    assert len(world.pods) == 4 and world.body["status"]["failures"] == 0
    assert "PodFailed" not in world.reasons()


def test_an_evicted_rollout_pod_is_replaced_alone_uncounted():
    world = running_world()
    world.pods["demo-rollout-1"]["status"] = {"phase": "Failed", "reason": "Evicted"}  # a kubelet under memory pressure
    world.reconcile()
    assert "demo-rollout-1" not in world.pods and len(world.pods) == 3, "only that pod goes"
    world.reconcile()
    assert "demo-rollout-1" in world.pods and world.body["status"]["failures"] == 0
    assert "JobRestarted" not in world.reasons()


def test_a_member_that_ends_on_sigterm_while_deleted_by_someone_counts_once():
    world = running_world()
    world.pods["demo-rollout-0"]["metadata"]["deletionTimestamp"] = rfc3339(world.now + timedelta(seconds=30))
    world.reconcile()
    assert world.body["status"]["failures"] == 1 and any("deleted" in m for r, m in world.events if r == "PodFailed")
    world.finish_pod("demo-rollout-0", phase="Succeeded", exit_code=0, reason="Completed")  # exits 0 on SIGTERM
    world.pods["demo-rollout-0"]["metadata"]["deletionTimestamp"] = rfc3339(world.now)
    world.reconcile()
    assert world.body["status"]["failures"] == 1, "its end is the deletion already counted"


def test_the_operators_own_deletions_are_not_failures_even_when_seen_terminating():
    world = running_world()
    world.finish_pod("demo-rollout-2", exit_code=1)
    world.reconcile()  # counted once, deleted by the operator (status written first)
    assert world.body["status"]["replacing"] == ["demo-rollout-2"]
    world.body["spec"]["rollout"]["maxBatchSize"] = 64
    world.body["metadata"]["generation"] = 2
    for pod in world.pods.values():
        pod["metadata"]["finalizers"] = ["test/hold"]  # deletions are seen terminating
    world.reconcile()  # the roll deletes every pod
    world.reconcile(advance=1)
    assert world.body["status"]["failures"] == 1 and all(world.pods[n]["metadata"].get("deletionTimestamp") for n in world.pods)


def test_a_pod_stuck_terminating_on_a_lost_node_is_replaced_under_a_new_name():
    world = running_world()
    disrupt(world, "demo-rollout-1", reason="DeletionByTaintManager")  # its node went NotReady
    world.pods["demo-rollout-1"]["metadata"]["finalizers"] = ["kubernetes"]  # nobody confirms its end
    world.reconcile()
    assert "demo-rollout-1-r1" not in world.pods, "within the grace period the pod may still end"
    world.reconcile(advance=30 + 120 + 1)  # its grace period and runPolicy.terminatingTimeoutSeconds passed
    new = world.pods["demo-rollout-1-r1"]
    assert new["metadata"]["labels"]["tlt.dev/index"] == "1" and new["spec"]["hostname"] == "demo-rollout-1"
    assert any(r == "PodReplaced" and "demo-rollout-1-r1" in m for r, m in world.events)
    assert world.body["status"]["failures"] == 0
    world.start_pods("demo-rollout-1-r1")
    world.reconcile()
    role = world.supporting[("Role", "demo-rollout-1")]
    pods_rule = next(r for r in role["rules"] if r["resources"] == ["pods"])
    assert pods_rule["resourceNames"] == ["demo-rollout-1", "demo-rollout-1-r1"], "the new pod may read and label itself"
    assert world.reconcile().empty


def test_head_failures_count_as_restarts_up_to_max_restarts():
    body = copy.deepcopy(BODY)
    body["spec"]["runPolicy"].update(maxRestarts=1, backoffLimit=5)
    world = running_world(body=body)
    world.finish_pod("demo-trainer-0", exit_code=1)
    world.reconcile()
    assert world.body["status"]["restarts"] == 1 and "JobRestarted" in world.reasons()
    world.reconcile(advance=11)
    world.start_pods()
    world.reconcile()
    world.finish_pod("demo-rollout-0", exit_code=1)  # a shard's failure is no restart
    world.reconcile()
    assert world.body["status"]["restarts"] == 1
    world.reconcile(advance=30)
    world.start_pods()
    world.finish_pod("demo-trainer-0", exit_code=1)
    world.reconcile()
    assert world.body["status"]["phase"] == "Failed" and world.condition("Failed")["reason"] == "MaxRestartsExceeded"


# ---------------------------------------------------------------------------------
# Ownership by uid


def test_pods_of_a_deleted_job_with_the_same_name_are_ignored_until_they_are_gone():
    old = running_world()
    stale = copy.deepcopy(old.pods)
    for pod in stale.values():
        pod["metadata"]["deletionTimestamp"] = rfc3339(T0)  # the old job was deleted: its pods terminate
    stale["demo-trainer-0"]["status"] = {"phase": "Succeeded"}  # its head even exits 0
    new_body = copy.deepcopy(BODY)
    new_body["metadata"]["uid"] = "uid-2"
    world = World(new_body)
    world.pods = stale
    world.reconcile()
    status = world.body["status"]
    assert status["phase"] == "Created" and status.get("failures", 0) == 0, "never Succeeded or Failed from another job's pods"
    assert not any(o["kind"] == "Pod" for o in world.reconcile().create), "the names are taken: wait"
    assert world.condition("Blocked")["status"] == "True" and "uid-1" in world.condition("Blocked")["message"]
    assert world.reasons().count("ForeignChildren") == 1, "said once, not at every reconcile"
    assert all(p["metadata"]["ownerReferences"][0]["uid"] == "uid-1" for p in world.pods.values()), "left alone"
    world.pods.pop("demo-trainer-0")  # the garbage collector deletes them one by one
    world.reconcile()
    assert "demo-trainer-0" not in world.condition("Blocked")["message"], "the condition lists who still blocks"
    assert world.reasons().count("ForeignChildren") == 1, "said when it became blocked, not at each change of the list"
    world.pods = {n: p for n, p in world.pods.items()  # the garbage collector finished
                  if p["metadata"]["ownerReferences"][0]["uid"] != "uid-1"}
    world.reconcile()
    assert len(world.pods) == 4 and all(p["metadata"]["ownerReferences"][0]["uid"] == "uid-2" for p in world.pods.values())
    assert world.condition("Blocked")["status"] == "False"


def test_a_supporting_child_owned_by_another_object_is_not_patched():
    world = running_world()
    config = world.supporting[("ConfigMap", "demo-config")]
    config["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    config["data"] = {"job.yaml": "not ours"}
    out = world.reconcile()
    assert not out.patch and world.condition("Blocked")["status"] == "True"


# ---------------------------------------------------------------------------------
# The coordinator's report, events, conditions


def test_the_report_comes_from_the_jobs_own_progress_config_map_and_must_validate():
    world = running_world()
    world.report(2, "rollout", [(3, 1), (0, 4), (2, 2)], completed=1)
    world.reconcile()
    status = world.body["status"]
    assert status["step"] == 1 and status["progress"]["phase"] == "rollout" and len(status["progress"]["shards"]) == 3
    world.report_map["data"]["step"] = "many"
    world.report_map["data"]["progress"] = json.dumps({"step": 3, "phase": "rollout", "shards": [{"shard": -1}]})
    world.reconcile()
    assert world.body["status"]["step"] == 1 and world.body["status"]["progress"]["step"] == 2, "what does not validate is ignored"
    world.report_map["metadata"]["ownerReferences"][0]["uid"] = "another-job"
    world.report_map["data"] = {"step": "3"}
    world.reconcile()
    assert world.body["status"]["step"] == 1, "a ConfigMap the job does not own is not its report"


def test_step_events_are_one_series_and_lending_stops_after_the_last_step():
    world = running_world()
    world.report(1, "rollout", [(8, 0), (8, 0), (8, 0)], completed=0)
    world.reconcile()
    world.report(3, "rollout", [(8, 0), (8, 0), (8, 0)], completed=2)
    out = world.reconcile()
    steps = [e for e in out.events if e.reason == "StepCompleted"]
    assert {e.key for e in steps} == {"Normal/StepCompleted/steps"}
    assert [e.count for e in steps] == [1, 2], "the series' count is the completed steps (a lost post is made good)"
    world.report(3, "idle", [(0, 8), (0, 8), (0, 8)], completed=3)
    out = world.reconcile()
    assert "GPULent" not in [e.reason for e in out.events], "nothing is lent once the last step completed"
    assert not any(p.annotations.get("tlt.dev/assigned-role") == "drafter" for p in out.annotate)


def test_every_condition_has_a_reason():
    world = running_world()
    assert all(c["reason"] for c in world.body["status"]["conditions"])
    assert {c["type"] for c in world.body["status"]["conditions"]} >= {"Running", "Degraded", "Blocked"}


def test_checkpoints_not_on_a_volume_are_warned_about_once_per_spec():
    body = copy.deepcopy(BODY)
    body["spec"]["storage"] = [{"name": "models", "claimName": "models", "mountPath": "/models", "readOnly": True}]
    world = World(body)
    world.reconcile()
    warned = [m for r, m in world.events if r == "CheckpointsNotOnVolume"]
    assert len(warned) == 1 and "/tlt/output/checkpoints" in warned[0] and "models at /models" in warned[0]
    world.start_pods()
    world.settle()
    assert world.reasons().count("CheckpointsNotOnVolume") == 1
    world.body["spec"]["runPolicy"]["checkpoint"] = {"path": "/models/ckpt"}  # a read-only volume does not do
    world.body["metadata"]["generation"] = 2
    world.reconcile()
    assert "read-only" in [m for r, m in world.events if r == "CheckpointsNotOnVolume"][-1]
