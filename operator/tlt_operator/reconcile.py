"""Reconciliation as a pure function: (job, observed children, now) -> what to do.

`reconcile` reads the job body (spec and status), the child objects the operator
observed and the coordinator's report (the job's progress ConfigMap), and returns an
`Outcome`: objects to create, patch and delete, pod annotations to set, the status
fields that changed and the events that explain every decision. It performs no I/O;
`kube` carries the outcome out. Running it again on the world it produced returns an
empty outcome.

Status ownership: the operator alone writes the job's status. The coordinator (in the
head pod) writes its progress, completed step and drafter into the job's progress
ConfigMap, the one object the pods may write; reconcile copies what validates into
`status.progress`, `status.step` and `status.drafter`.

Ownership: only children whose controller ownerReference carries the job's uid are
the job's. Others with the job's label or names (a deleted job's pods still
terminating, anything else) are left alone: never adopted, counted or deleted; their
names are waited for (the `Blocked` condition and a `ForeignChildren` event say so).

Failure policy: a pod that fails or is deleted by someone else counts against
`backoffLimit` once. Disruptions do not count: pods with a `DisruptionTarget`
(preemption, eviction, drain, node shutdown) or Kueue's `TerminationTarget`
condition, and the operator's own deletions. A rollout or drafter pod is replaced
alone (the coordinator re-creates its worker when the new pod joins); only the head
pod's failure restarts every pod, from the last checkpoint. A pod stuck terminating
(its node is lost) is replaced under a new name after `terminatingTimeoutSeconds`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import yaml

from tlt.api.errors import SpecError
from tlt.api.load import parse_job
from tlt.api.model import DrafterStatus, ProgressStatus, ReasoningRLJob
from tlt.api.storage import checkpoints_off_volume
from tlt.api.topology import dedicated_drafters
from tlt.elastic import PHASES, Consolidate, Lend, Progress, Return, ScaleDrafters, ShardState, Worker, plan
from tlt_operator.builders import (
    ANNOTATION_ASSIGNED_ROLE,
    ANNOTATION_CONSOLIDATE,
    ANNOTATION_DRAINED_STEP,
    ANNOTATION_POD_HASH,
    CONFIG_FILE,
    LABEL_INDEX,
    LABEL_ROLE,
    OperatorDefaults,
    build_pod,
    build_supporting,
    config_digest,
    config_map_name,
    head_pod_name,
    job_uid,
    pod_name,
    pod_slots,
    pod_shaping_spec,
    progress_map_name,
    without_lifecycle,
)

# Container exit codes that a retry cannot fix: usage/configuration errors, missing or
# non-executable command. Everything else (OOM kills, signals, evictions) is retried.
PERMANENT_EXIT_CODES = {2: "configuration error", 126: "command not executable", 127: "command not found"}
# Pod conditions that mark a disruption (not the workload's fault): the scheduler's preemption,
# the eviction API, the taint manager, the kubelet's node shutdown; Kueue's stop of a pod group.
DISRUPTION_CONDITIONS = ("DisruptionTarget", "TerminationTarget")
# Pod status reasons of disruptions on kubelets that set no condition.
DISRUPTION_REASONS = ("Evicted", "Preempting", "Shutdown", "NodeShutdown", "Terminated")
CONDITION_TYPES = ("Created", "Running", "Suspended", "Succeeded", "Failed", "Invalid", "Degraded", "Updating", "Blocked")
# Written by the operator's I/O layer (handlers), not by reconcile, which keeps it as it is.
RECONCILE_ERROR = "ReconcileError"
FINISHED = ("Succeeded", "Failed")
REPORT_FIELDS = ("progress", "step", "drafter")
OPERATOR_STATUS_FIELDS = (
    "phase",
    "conditions",
    "observedGeneration",
    "totalSteps",
    "roles",
    "failures",
    "restarts",
    "lastFailureTime",
    "replacing",
    "startTime",
    "completionTime",
    "stepText",
    "rolloutText",
    *REPORT_FIELDS,
)


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event about the job: `reason` is what an SRE greps for.

    Events of one `series` (default: the same reason and message) are one Event object
    whose count goes up, as client-go's recorder aggregates repeats. `count`, when set, is
    the series' count itself (derived from the job's state, e.g. the completed steps), so a
    post lost to an operator crash is made good by the next one, and none is counted twice."""

    reason: str
    message: str
    type: str = "Normal"
    series: str = ""
    count: int | None = None

    @property
    def key(self) -> str:
        return f"{self.type}/{self.reason}/{self.series or self.message}"


@dataclass(frozen=True)
class PodAnnotations:
    """Annotations to merge into one pod (None removes a key)."""

    pod: str
    annotations: dict


@dataclass
class Observed:
    """What the operator saw: the pods labelled with the job's name, its other children when it
    looked (None: not listed), and the job's progress ConfigMap (the coordinator's report)."""

    pods: list[dict] = field(default_factory=list)
    supporting: dict[tuple[str, str], dict] | None = None
    report: dict | None = None


@dataclass
class Outcome:
    create: list[dict] = field(default_factory=list)
    patch: list[dict] = field(default_factory=list)  # full desired objects whose drifted fields are replaced
    delete_pods: list[str] = field(default_factory=list)
    annotate: list[PodAnnotations] = field(default_factory=list)
    status: dict | None = None  # merge patch of .status; None when nothing changed
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False
    requeue_after: float | None = None

    @property
    def empty(self) -> bool:
        return not (self.create or self.patch or self.delete_pods or self.annotate or self.status or self.events or self.delete_job)

    def requeue(self, seconds: float) -> None:
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


# ---------------------------------------------------------------------------------
# Small pure helpers


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value) -> datetime | None:
    """A timestamp as the API server (`...Z`) or kopf's client (`+00:00`, datetime) spell it; None if unset.
    Raises ValueError on text that is not a timestamp."""
    if not value:
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def backoff_seconds(failures: int, base: float, cap: float = 300.0) -> float:
    """Exponential backoff before recreating a pod after the n-th counted failure."""
    if failures <= 0:
        return 0.0
    return min(cap, base * 2 ** (failures - 1))


def pod_ready(pod: dict) -> bool:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def pod_phase(pod: dict) -> str:
    return (pod.get("status") or {}).get("phase") or "Pending"


def terminated_state(pod: dict) -> dict:
    """The main container's terminated state, or {}."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        if "terminated" in state:
            return state["terminated"] or {}
    return {}


def failure_of(pod: dict) -> tuple[str, bool]:
    """Why a failed pod failed, and whether that is permanent."""
    terminated = terminated_state(pod)
    code = terminated.get("exitCode")
    if code in PERMANENT_EXIT_CODES:
        return f"exit code {code} ({PERMANENT_EXIT_CODES[code]})", True
    reason = terminated.get("reason") or (pod.get("status") or {}).get("reason") or "Failed"
    return (f"{reason}, exit code {code}" if code is not None else reason), False


def disruption_of(pod: dict) -> str | None:
    """Why a pod was disrupted (preempted, evicted, drained, stopped by Kueue), or None."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") in DISRUPTION_CONDITIONS and condition.get("status") == "True":
            return f"{condition['type']} ({condition.get('reason') or 'no reason'})"
    if status.get("reason") in DISRUPTION_REASONS:
        return status["reason"]
    return None


def owned_by(obj: dict, uid: str | None) -> bool:
    """Whether `obj`'s controller ownerReference is the job with this uid (without a uid, as in
    `tlt render` or a test world that sets none, every labelled child is the job's)."""
    if not uid:
        return True
    return any(ref.get("uid") == uid and ref.get("controller") for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def _owner_uid(obj: dict) -> str:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((r.get("uid") or "?" for r in refs if r.get("controller")), "none")


def read_report(config_map: dict | None, uid: str | None) -> dict:
    """The coordinator's report in the job's progress ConfigMap, as status fields
    (`progress`, `step`, `drafter`): what validates, nothing from a ConfigMap the job does not own."""
    if not config_map or not owned_by(config_map, uid):
        return {}
    data = config_map.get("data") or {}
    out: dict = {}
    try:
        if data.get("progress"):
            out["progress"] = ProgressStatus.model_validate(json.loads(data["progress"])).to_manifest()
    except ValueError:
        pass
    try:
        if data.get("step") is not None and int(data["step"]) >= 0:
            out["step"] = int(data["step"])
    except ValueError:
        pass
    try:
        if data.get("drafter"):
            out["drafter"] = DrafterStatus.model_validate(json.loads(data["drafter"])).to_manifest()
    except ValueError:
        pass
    return out


def _annotations(pod: dict) -> dict:
    return (pod.get("metadata") or {}).get("annotations") or {}


def _name(pod: dict) -> str:
    return pod["metadata"]["name"]


def _terminating(pod: dict) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def _role_index(pod: dict) -> tuple[str, int]:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    try:
        return labels.get(LABEL_ROLE, ""), int(labels.get(LABEL_INDEX, "-1"))
    except ValueError:
        return labels.get(LABEL_ROLE, ""), -1


def _condition_list(previous: list[dict], wanted: dict[str, tuple[bool, str, str]], now: str) -> list[dict]:
    """Every condition type, with lastTransitionTime kept unless its status flips; a false
    condition says why in its reason too (Not<Type>). ReconcileError is kept as it is."""
    before = {c.get("type"): c for c in previous or []}
    out = []
    for kind in CONDITION_TYPES:
        true, reason, message = wanted.get(kind, (False, "", ""))
        status = "True" if true else "False"
        old = before.get(kind) or {}
        moment = old.get("lastTransitionTime") if old.get("status") == status else now
        out.append({"type": kind, "status": status, "reason": reason or f"Not{kind}", "message": message,
                    "lastTransitionTime": moment or now})
    if RECONCILE_ERROR in before:
        out.append(before[RECONCILE_ERROR])
    return out


def _status_patch(previous: dict, desired: dict) -> dict | None:
    """The operator-owned fields that differ (None where a field is to be removed)."""
    patch = {}
    for key in OPERATOR_STATUS_FIELDS:
        if key not in desired:
            continue
        old, new = previous.get(key), desired.get(key)
        if old != new and not (new is None and key not in previous):
            patch[key] = new
    return patch or None


def _condition_true(status: dict, kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in status.get("conditions") or [])


def _condition_message(status: dict, kind: str) -> str:
    return next((c.get("message") or "" for c in status.get("conditions") or [] if c.get("type") == kind and c.get("status") == "True"), "")


def _step_of(step_text: str | None) -> int:
    try:
        return int((step_text or "").split("/")[0])
    except ValueError:
        return 0


# ---------------------------------------------------------------------------------
# The reconcile


@dataclass
class _Context:
    body: dict
    job: ReasoningRLJob | None
    status: dict  # the status as it is once the coordinator's report is in
    written: dict  # the status as the API server has it
    observed: Observed
    now: datetime
    defaults: OperatorDefaults
    backoff_base: float
    out: Outcome = field(default_factory=Outcome)

    @property
    def now_text(self) -> str:
        return rfc3339(self.now)

    @property
    def uid(self) -> str | None:
        return (self.body.get("metadata") or {}).get("uid")


def reconcile(
    body: dict,
    observed: Observed,
    now: datetime,
    defaults: OperatorDefaults = OperatorDefaults(),
    backoff_base: float = 10.0,
) -> Outcome:
    """What to do about one job now. Pure: the same inputs give the same outcome."""
    written = dict(body.get("status") or {})
    uid = (body.get("metadata") or {}).get("uid")
    report = read_report(observed.report, uid)
    status = {**written, **report}
    ctx = _Context(body=body, job=None, status=status, written=written, observed=observed, now=now, defaults=defaults,
                   backoff_base=backoff_base)
    try:
        ctx.job = parse_job({k: v for k, v in body.items() if k != "status"})
    except SpecError as err:
        return _invalid(ctx, err)

    generation = (body.get("metadata") or {}).get("generation") or 0
    if observed.supporting is None and "observedGeneration" in status:
        # A new spec counts as observed only once a reconcile saw every child (the ConfigMap to re-render among them).
        generation = status["observedGeneration"]
    desired = {
        "observedGeneration": generation,
        "totalSteps": ctx.job.spec.algorithm.steps,
        "failures": status.get("failures") or 0,
        "restarts": status.get("restarts") or 0,
        "lastFailureTime": status.get("lastFailureTime"),
        "replacing": list(status.get("replacing") or []),
        "startTime": status.get("startTime"),
        "completionTime": status.get("completionTime"),
        **report,
    }
    phase = status.get("phase") or "Pending"
    if phase in FINISHED:
        return _finished(ctx, desired, phase)
    if ctx.job.spec.run_policy.suspend:
        return _suspended(ctx, desired, phase)
    return _active(ctx, desired, phase)


def _finish_status(ctx: _Context, desired: dict, phase: str, conditions: dict) -> Outcome:
    """Fill in the derived status fields, and the patch if anything changed."""
    status = ctx.status
    job = ctx.job
    step = status.get("step") or 0
    desired["phase"] = phase
    desired["conditions"] = _condition_list(status.get("conditions") or [], conditions, ctx.now_text)
    if job is not None:
        desired["stepText"] = f"{step}/{job.spec.algorithm.steps}"
        previous_step = _step_of(status.get("stepText"))
        if step > previous_step and status.get("stepText"):
            # Steps may complete faster than reconciles run: one event per step, or one for a long run of
            # them; all of them are one Event object whose count goes up.
            total = job.spec.algorithm.steps
            done = range(previous_step + 1, step + 1)
            texts = [f"step {n}/{total} completed" for n in done] if len(done) <= 10 else [f"steps {done[0]}-{step}/{total} completed"]
            ends = list(done) if len(done) <= 10 else [step]
            ctx.out.events += [Event("StepCompleted", text, series="steps", count=n) for text, n in zip(texts, ends)]
    ctx.out.status = _status_patch(ctx.written, desired)
    return ctx.out


def _invalid(ctx: _Context, err: SpecError) -> Outcome:
    message = "; ".join(str(e) for e in err.errors[:5]) + (f" (and {len(err.errors) - 5} more)" if len(err.errors) > 5 else "")
    ctx.out.delete_pods = sorted(_name(p) for p in ctx.observed.pods if owned_by(p, ctx.uid) and not _terminating(p))
    previous = next((c for c in ctx.status.get("conditions") or [] if c.get("type") == "Invalid"), {})
    if ctx.status.get("phase") != "Invalid" or previous.get("message") != message:
        ctx.out.events.append(Event("InvalidSpec", message, "Warning"))
    desired = {"observedGeneration": (ctx.body.get("metadata") or {}).get("generation") or 0}
    for key in ("failures", "restarts", "lastFailureTime", "replacing", "startTime", "completionTime", "totalSteps", "stepText",
                "rolloutText", "roles"):
        if key in ctx.status:
            desired[key] = ctx.status[key]
    return _finish_status(ctx, desired, "Invalid", {"Invalid": (True, "InvalidSpec", message)})


def _give_back(ctx: _Context) -> None:
    """Delete the job's pods that still run (finished ones stay for their logs)."""
    for pod in ctx.observed.pods:
        if owned_by(pod, ctx.uid) and pod_phase(pod) not in ("Succeeded", "Failed") and not _terminating(pod):
            if _name(pod) not in ctx.out.delete_pods:
                ctx.out.delete_pods.append(_name(pod))


def _finished(ctx: _Context, desired: dict, phase: str) -> Outcome:
    """A finished job keeps its terminated pods (for logs); still-running ones give their GPUs back."""
    _give_back(ctx)
    desired["roles"] = _roles(ctx, [], drafters=0, lent_from=[])
    desired["rolloutText"] = _rollout_text(desired["roles"])
    ttl = ctx.job.spec.run_policy.ttl_seconds_after_finished
    done = parse_time(ctx.status.get("completionTime"))
    if ttl is not None and done is not None:
        left = ttl - (ctx.now - done).total_seconds()
        if left <= 0:
            ctx.out.delete_job = True
            ctx.out.events.append(Event("Deleted", f"deleting the job {ttl}s after it finished (ttlSecondsAfterFinished)"))
        else:
            ctx.out.requeue_after = left
    previous = {c.get("type"): c for c in ctx.status.get("conditions") or []}
    kept = {
        k: (True, c.get("reason", ""), c.get("message", ""))
        for k, c in previous.items()
        if c.get("status") == "True" and k not in ("Degraded", "Updating", "Blocked", RECONCILE_ERROR)
    }
    kept.pop("Running", None)
    return _finish_status(ctx, desired, phase, kept)


def _suspended(ctx: _Context, desired: dict, phase: str) -> Outcome:
    ctx.out.delete_pods = sorted(_name(p) for p in ctx.observed.pods if owned_by(p, ctx.uid) and not _terminating(p))
    if phase != "Suspended":
        ctx.out.events.append(Event("Suspended", f"suspended: deleting {len(ctx.out.delete_pods)} pods, progress kept"))
    # The deadline counts running time only; it starts again on resume.
    desired["startTime"] = None
    desired["replacing"] = []
    desired["roles"] = _roles(ctx, [], drafters=0, lent_from=[])
    desired["rolloutText"] = _rollout_text(desired["roles"])
    conditions = {"Suspended": (True, "Suspended", "spec.runPolicy.suspend is true")}
    if _condition_true(ctx.status, "Created"):
        conditions["Created"] = (True, "Created", "children created")
    return _finish_status(ctx, desired, "Suspended", conditions)


def _fail(ctx: _Context, desired: dict, reason: str, message: str) -> Outcome:
    ctx.out.events.append(Event("Failed", f"{reason}: {message}", "Warning"))
    desired["completionTime"] = ctx.now_text
    desired["replacing"] = []
    desired["roles"] = _roles(ctx, [], drafters=0, lent_from=[])
    desired["rolloutText"] = _rollout_text(desired["roles"])
    _give_back(ctx)
    ttl = ctx.job.spec.run_policy.ttl_seconds_after_finished
    if ttl is not None:
        ctx.out.requeue_after = float(ttl)
    return _finish_status(
        ctx, desired, "Failed", {"Created": (True, "Created", "children created"), "Failed": (True, reason, message)}
    )


def _slot_pods(ctx: _Context, wanted: dict) -> tuple[dict[str, dict], list[dict], list[dict], list[dict]]:
    """The job's own pods by the slot they fill (role and index labels), and the rest:
    (slot -> pod, pods of no wanted slot, pods stuck terminating, foreign pods).

    A slot's pod is the one not being deleted, else the newest; a pod still terminating
    `terminatingTimeoutSeconds` after its grace period ended is stuck (its node is lost):
    it no longer fills its slot."""
    job, uid = ctx.job, ctx.uid
    timeout = timedelta(seconds=job.spec.run_policy.terminating_timeout_seconds)
    by_slot: dict[str, dict] = {}
    extra, stuck, foreign = [], [], []
    for pod in sorted(ctx.observed.pods, key=_name):
        if not owned_by(pod, uid):
            foreign.append(pod)
            continue
        role, index = _role_index(pod)
        slot = pod_name(job.metadata.name, role, index)
        if slot not in wanted:
            extra.append(pod)
            continue
        try:
            deleted_at = parse_time(pod["metadata"].get("deletionTimestamp"))
        except ValueError:
            deleted_at = None
        if deleted_at is not None and ctx.now - deleted_at > timeout:
            stuck.append(pod)
            continue
        have = by_slot.get(slot)
        if have is None or (_terminating(have) and not _terminating(pod)) or (
            _terminating(have) == _terminating(pod) and (pod["metadata"].get("creationTimestamp") or "") > (have["metadata"].get("creationTimestamp") or "")
        ):
            by_slot[slot] = pod
    return by_slot, extra, stuck, foreign


def _free_name(slot: str, taken: set[str]) -> str:
    """The slot's own name, or `<slot>-r<n>` while a pod that cannot be removed (stuck, foreign) holds it."""
    if slot not in taken:
        return slot
    n = 1
    while f"{slot}-r{n}" in taken:
        n += 1
    return f"{slot}-r{n}"


def _active(ctx: _Context, desired: dict, phase: str) -> Outcome:
    job, out, status = ctx.job, ctx.out, ctx.status
    name = job.metadata.name

    # The elastic plan also converges the dedicated drafter count to this one.
    drafters = dedicated_drafters(job.spec)
    slots = pod_slots(job, drafters)
    wanted = {slot.name(name): slot for slot in slots}
    pods, extra, stuck, foreign = _slot_pods(ctx, wanted)
    taken = {_name(p) for p in ctx.observed.pods}  # a new pod takes a free name (a stuck pod keeps its own)
    foreign_names = {_name(p) for p in foreign}
    blocked = []  # children of the job's names another object owns: never touched, waited for

    # Supporting children: created when missing, patched when their content drifted.
    if ctx.observed.supporting is not None:
        for obj in build_supporting(job, ctx.defaults, pods):
            key = (obj["kind"], obj["metadata"]["name"])
            have = ctx.observed.supporting.get(key)
            if have is None:
                out.create.append(obj)
            elif not owned_by(have, ctx.uid):
                blocked.append(f"{obj['kind']} {key[1]} (controller uid {_owner_uid(have)})")
            elif any(have.get(k) != obj.get(k) for k in ("data", "rules", "spec", "subjects") if k in obj and obj["kind"] != "Service"):
                out.patch.append(obj)
    blocked += [f"Pod {_name(p)} (controller uid {_owner_uid(p)})" for p in foreign if _name(p) in wanted]

    if phase == "Suspended":
        out.events.append(Event("Resumed", "resumed: recreating the pods"))
    lost = checkpoints_off_volume(job.spec)
    if lost and desired["observedGeneration"] != ctx.written.get("observedGeneration"):  # once per spec seen
        out.events.append(Event("CheckpointsNotOnVolume", lost, "Warning"))

    head = head_pod_name(job)
    started = phase in ("Created", "Running")  # a missing pod is a deleted one only after the pods were created

    # Success: the head (coordinator) finished its last step and exited 0.
    head_pod = pods.get(head)
    if head_pod is not None and pod_phase(head_pod) == "Succeeded":
        out.events.append(Event("Succeeded", f"{head} completed all {job.spec.algorithm.steps} steps"))
        desired["completionTime"] = ctx.now_text
        desired["replacing"] = []
        _give_back(ctx)
        desired["roles"] = _roles(ctx, [], drafters=0, lent_from=[])
        desired["rolloutText"] = _rollout_text(desired["roles"])
        ttl = job.spec.run_policy.ttl_seconds_after_finished
        if ttl is not None:
            out.requeue_after = float(ttl)
        return _finish_status(
            ctx, desired, "Succeeded", {"Created": (True, "Created", "children created"), "Succeeded": (True, "Completed", "all steps completed")}
        )

    actions = _elastic_actions(ctx, pods)

    # Pods of no slot (scale-down): deleted by the operator, never counted.
    for pod in extra:
        if not _terminating(pod):
            out.delete_pods.append(_name(pod))

    # Failures: counted once (the slot joins `replacing`), then the pod is deleted and recreated after backoff.
    # Disruptions join `replacing` uncounted.
    replacing = set(desired["replacing"])
    failures = desired["failures"]
    restart_why = None  # the head failed: every pod restarts with the coordinator
    newly_failed, disrupted = [], []
    updating = _condition_true(status, "Updating")  # pods missing or terminating while a roll runs are the operator's
    for slot, pod in sorted(pods.items()):
        if slot in replacing:
            continue
        why = disruption_of(pod)
        if why is not None:
            disrupted.append((slot, why))
        elif _terminating(pod):
            if not updating:
                newly_failed.append((slot, "deleted"))
        elif pod_phase(pod) == "Failed":
            why, permanent = failure_of(pod)
            if permanent:
                return _fail(ctx, desired, "PermanentPodFailure", f"{_name(pod)} failed with {why}; a retry cannot fix it")
            newly_failed.append((slot, why))
        elif pod_phase(pod) == "Succeeded" and slot != head:
            newly_failed.append((slot, "exited before the job finished"))
    # A slot whose name another object's pod holds waits for it in `replacing` (uncounted): when that pod
    # is gone, the missing pod is the operator's to create, not a deleted one.
    replacing |= {n for n in wanted if n in foreign_names and n not in pods}
    if started and not updating:
        for slot_name in sorted(wanted):
            if slot_name not in pods and slot_name not in replacing and _was_created(status, wanted[slot_name]):
                newly_failed.append((slot_name, "deleted"))
    for slot_name, why in disrupted:
        replacing.add(slot_name)
        out.events.append(Event("PodDisrupted", f"{slot_name}: {why}; not counted as a failure", series=f"PodDisrupted/{slot_name}"))
        if slot_name == head and restart_why is None:
            restart_why = f"{head} was disrupted ({why})"
    restarted_by_failure = False
    for slot_name, why in newly_failed:
        failures += 1
        replacing.add(slot_name)
        desired["lastFailureTime"] = ctx.now_text
        out.events.append(Event("PodFailed", f"{slot_name}: {why} (failure {failures} of backoffLimit {job.spec.run_policy.backoff_limit})",
                                "Warning", series=f"PodFailed/{slot_name}"))
        if slot_name == head:
            restart_why, restarted_by_failure = f"{head} failed", True
    desired["failures"] = failures
    if failures > job.spec.run_policy.backoff_limit:
        return _fail(ctx, desired, "BackoffLimitExceeded", f"{failures} pod failures exceed backoffLimit {job.spec.run_policy.backoff_limit}")
    if restart_why is not None:
        if restarted_by_failure:
            desired["restarts"] += 1
            limit = job.spec.run_policy.max_restarts
            if limit is not None and desired["restarts"] > limit:
                return _fail(ctx, desired, "MaxRestartsExceeded", f"{restart_why}: {desired['restarts']} restarts exceed maxRestarts {limit}")
        # The coordinator runs in the head pod: every worker restarts with it, from the last checkpoint.
        out.events.append(Event("JobRestarted", f"{restart_why}: restarting every pod from the last checkpoint", "Warning"))
        replacing |= set(wanted)

    # Deadline.
    start = parse_time(desired["startTime"])
    deadline = job.spec.run_policy.active_deadline_seconds
    if deadline is not None and start is not None:
        left = deadline - (ctx.now - start).total_seconds()
        if left <= 0:
            return _fail(ctx, desired, "DeadlineExceeded", f"ran longer than activeDeadlineSeconds ({deadline}s)")
        out.requeue(left)

    # Spec changes: stale pods (seen only with the ConfigMap, which is re-rendered in the same outcome) go now.
    desired_pods = {}
    if ctx.observed.supporting is not None:
        config = config_digest(job)
        desired_pods = {n: build_pod(job, slot, ctx.defaults, total_pods=len(slots), config=config) for n, slot in wanted.items()}
        if _roll_stale_pods(ctx, pods, desired_pods, replacing, head):
            updating = True

    def new_pod(slot_name: str) -> dict:
        pod_name_ = _free_name(slot_name, taken)
        taken.add(pod_name_)
        if pod_name_ == slot_name and slot_name in desired_pods:
            return desired_pods[slot_name]
        return build_pod(job, wanted[slot_name], ctx.defaults, total_pods=len(slots), name=pod_name_)

    # Slots of `replacing`: their pods go away first, and come back once the backoff has passed.
    ready_at = parse_time(desired["lastFailureTime"])
    wait = backoff_seconds(failures, ctx.backoff_base) if replacing else 0.0
    remaining_wait = 0.0
    if ready_at is not None and wait > 0:
        remaining_wait = max(0.0, wait - (ctx.now - ready_at).total_seconds())
    for slot_name in sorted(replacing):
        pod = pods.get(slot_name)
        if pod is not None:
            if not _terminating(pod) and _name(pod) not in out.delete_pods:
                out.delete_pods.append(_name(pod))
        elif remaining_wait <= 0 and slot_name in wanted and slot_name not in foreign_names:
            created = new_pod(slot_name)
            out.create.append(created)
            if _name(created) == slot_name:
                why = f"recreated {slot_name}"
            else:  # the slot's pod is stuck terminating: a lost node never confirms its end
                why = (f"recreated {slot_name} as {_name(created)}: its pod is still terminating "
                       f"{job.spec.run_policy.terminating_timeout_seconds}s "
                       "after its grace period (its node is lost?)")
            out.events.append(Event("PodReplaced", f"{why} (failures so far: {failures})", series=f"PodReplaced/{slot_name}"))
            replacing.discard(slot_name)
    replacing &= set(wanted)
    if replacing and remaining_wait > 0:
        out.requeue(remaining_wait)
    desired["replacing"] = sorted(replacing)

    # Missing pods that are not being replaced: first creation, scale-up, resume. A name another
    # object's pod holds is waited for.
    created_now = []
    creating = {o["metadata"]["name"] for o in out.create if o["kind"] == "Pod"}
    for slot in slots:
        slot_name = slot.name(name)
        if slot_name in pods or slot_name in replacing or slot_name in creating:
            continue
        if slot_name in foreign_names:
            continue  # another object's pod has the name: wait for it to go
        created_now.append(slot_name)
        out.create.append(new_pod(slot_name))
    if created_now and phase not in ("Created", "Running", "Suspended"):  # a resume says Resumed
        out.events.append(Event("Created", f"created {len(created_now)} pods: {', '.join(created_now)}"))
    if updating:
        gone = {n for n in wanted if n not in pods or _name(pods[n]) in out.delete_pods or _terminating(pods[n])}
        updating = bool(gone - set(created_now) - replacing)
    if desired["startTime"] is None:
        desired["startTime"] = ctx.now_text
    if any(o["kind"] == "Pod" for o in out.create):
        _ensure_ray_secret(ctx)

    # Elastic actions become pod annotations (and events) on the pods that exist and are not going away.
    live = {n: p for n, p in pods.items() if n in wanted and n not in replacing and _name(p) not in out.delete_pods and not _terminating(p)}
    _apply_elastic(ctx, actions, live, head)

    # Status, as it is once the annotations above are set.
    annotated = {n: dict(p, metadata={**p["metadata"], "annotations": dict(_annotations(p))}) for n, p in live.items()}
    for patch in out.annotate:
        for n, p in annotated.items():
            if _name(p) == patch.pod:
                p["metadata"]["annotations"].update(patch.annotations)
    roles = _roles(ctx, slots, drafters, lent_from=list(annotated.values()))
    desired["roles"] = roles
    desired["rolloutText"] = _rollout_text(roles)
    all_ready = all(n in live and pod_ready(live[n]) for n in wanted)
    new_phase = "Running" if (phase == "Running" or all_ready) else "Created"
    conditions = {"Created": (True, "Created", f"{len(wanted)} pods wanted")}
    if new_phase == "Running":
        conditions["Running"] = (True, "Running", "all pods started" if all_ready else "running with pods missing")
        if not all_ready or replacing:
            missing = sorted(n for n in wanted if not (n in live and pod_ready(live[n])))
            conditions["Degraded"] = (True, "PodsNotReady", f"not ready: {', '.join(missing)}")
    if updating:
        conditions["Updating"] = (True, "SpecChanged", "recreating pods for the new spec")
    if blocked:
        message = "children owned by another object hold this job's names; waiting for them to go: " + ", ".join(sorted(blocked))
        conditions["Blocked"] = (True, "ForeignChildren", message)
        # Said when the job becomes blocked. The list changes while the other object's children go (the
        # garbage collector deletes them one by one, and a reconcile that did not list the supporting
        # children sees only the pods): the condition follows it, a second event would only repeat it.
        if not _condition_message(ctx.written, "Blocked"):
            out.events.append(Event("ForeignChildren", message, "Warning"))
        out.requeue(5.0)
    return _finish_status(ctx, desired, new_phase, conditions)


def _ensure_ray_secret(ctx: _Context) -> None:
    """Pods mount the job's Ray token Secret: it is created (409: it exists) whenever pods are.
    The operator may create Secrets but never read them, so it cannot list it like the other children."""
    from tlt_operator.builders import build_ray_secret

    secret = build_ray_secret(ctx.job)
    if secret is not None:
        ctx.out.create.insert(0, secret)


def _roll_stale_pods(ctx: _Context, pods: dict[str, dict], desired_pods: dict[str, dict], replacing: set, head: str) -> bool:
    """Delete the live pods built from an older spec (all of them when the head's is older); one SpecChanged event."""
    live = [
        n
        for n, p in sorted(pods.items())
        if n in desired_pods
        and n not in replacing
        and _name(p) not in ctx.out.delete_pods
        and pod_phase(p) in ("Pending", "Running")
        and not _terminating(p)
    ]
    stale = [n for n in live if _annotations(pods[n]).get(ANNOTATION_POD_HASH) != _annotations(desired_pods[n])[ANNOTATION_POD_HASH]]
    if not stale:
        return False
    if head in stale:
        stale = live  # the coordinator restarts from the last checkpoint: every worker restarts with it
    ctx.out.delete_pods += [_name(pods[n]) for n in stale]
    sections = _changed_sections(ctx)
    what = f"spec changed ({', '.join(sections)})" if sections else "pods were built from another spec"
    ctx.out.events.append(
        Event("SpecChanged", f"{what}: recreating {len(stale)} pods, the job continues from its last checkpoint: {', '.join(stale)}")
    )
    return True


def _changed_sections(ctx: _Context) -> list[str]:
    """Top-level spec fields that differ from the config the pods were started with (the ConfigMap before its update)."""
    config_map = (ctx.observed.supporting or {}).get(("ConfigMap", config_map_name(ctx.job.metadata.name))) or {}
    try:
        old = without_lifecycle((yaml.safe_load((config_map.get("data") or {}).get(CONFIG_FILE) or "") or {}).get("spec") or {})
    except (yaml.YAMLError, AttributeError):
        return []
    new = pod_shaping_spec(ctx.job)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _was_created(status: dict, slot) -> bool:
    """Whether the previous reconcile counted this slot among the desired pods (so missing means deleted)."""
    roles = status.get("roles") or {}
    bucket = "rollout" if slot.role in ("rollout", "worker") else slot.role
    return slot.index < ((roles.get(bucket) or {}).get("desired") or 0)


def _roles(ctx: _Context, slots, drafters: int, lent_from: list[dict]) -> dict:
    def bucket(role: str) -> str:
        return "rollout" if role in ("rollout", "worker") else role

    counts = {r: {"desired": 0, "ready": 0, "lent": 0} for r in ("rollout", "trainer", "drafter")}
    for slot in slots:
        counts[bucket(slot.role)]["desired"] += 1
    for pod in lent_from:
        role, _ = _role_index(pod)
        if role not in ("rollout", "worker", "trainer", "drafter"):
            continue
        if pod_ready(pod) and pod_phase(pod) == "Running":
            counts[bucket(role)]["ready"] += 1
        if role != "drafter" and _annotations(pod).get(ANNOTATION_ASSIGNED_ROLE) == "drafter":
            counts[bucket(role)]["lent"] += 1
    return counts


def _rollout_text(roles: dict) -> str:
    r = roles["rollout"]
    return f"{r['ready']}/{r['desired']}" + (f" ({r['lent']} lent)" if r["lent"] else "")


# ---------------------------------------------------------------------------------
# Elasticity


def workers_from(pods: dict[str, dict], progress: dict | None) -> list[Worker]:
    """The elastic policy's view of the job's pods and the coordinator's per-shard progress."""
    shards = {}
    for shard in (progress or {}).get("shards") or []:
        if isinstance(shard, dict) and isinstance(shard.get("shard"), int):
            shards[shard["shard"]] = ShardState(
                running=int(shard.get("running") or 0), waiting=int(shard.get("waiting") or 0), finished=int(shard.get("finished") or 0)
            )
    workers = []
    for pod_name_, pod in pods.items():
        role, index = _role_index(pod)
        if role not in ("rollout", "trainer", "drafter", "worker") or index < 0:
            continue
        assigned = _annotations(pod).get(ANNOTATION_ASSIGNED_ROLE)
        workers.append(
            Worker(
                name=pod_name_,
                role=role,
                index=index,
                assigned=None if assigned in (None, "", role) else assigned,
                ready=pod_ready(pod),
                shard=shards.get(index, ShardState()) if role in ("rollout", "worker") else ShardState(),
            )
        )
    return workers


def progress_of(status: dict) -> Progress | None:
    progress = status.get("progress")
    if not isinstance(progress, dict):
        return None
    phase = progress.get("phase") if progress.get("phase") in PHASES else "idle"
    threshold = progress.get("batchThreshold")  # `auto` as the coordinator measured it
    threshold = threshold if isinstance(threshold, int) and not isinstance(threshold, bool) and threshold >= 1 else None
    return Progress(step=int(progress.get("step") or 0), phase=phase, batch_threshold=threshold)


def _progress_predates_head(ctx: _Context, pods: dict[str, dict]) -> bool:
    """A report written before the head pod was created is the previous coordinator's (a
    restarted or resumed job): planning on it would lend the new pods at once."""
    head = pods.get(head_pod_name(ctx.job))
    try:
        written = parse_time((ctx.status.get("progress") or {}).get("updatedAt"))
        created = parse_time(head["metadata"].get("creationTimestamp")) if head else None
    except ValueError:
        return False  # not a coordinator's timestamp: nothing to compare
    return written is not None and created is not None and written < created


def _elastic_actions(ctx: _Context, pods: dict[str, dict]) -> list:
    """The elastic plan's lends, returns and consolidations (nothing before the coordinator's first
    report, nothing once the last step completed: the job is finishing, nothing is to be trained)."""
    progress = progress_of(ctx.status)
    if progress is None or _progress_predates_head(ctx, pods) or (ctx.status.get("step") or 0) >= ctx.job.spec.algorithm.steps:
        return []
    live = {n: p for n, p in pods.items() if pod_phase(p) in ("Pending", "Running") and not p["metadata"].get("deletionTimestamp")}
    return [a for a in plan(ctx.job.spec, workers_from(live, ctx.status.get("progress")), progress) if not isinstance(a, ScaleDrafters)]


def _apply_elastic(ctx: _Context, actions: list, live: dict[str, dict], head: str) -> None:
    out = ctx.out
    progress = ctx.status.get("progress") or {}
    step = int(progress.get("step") or 0)
    shard_of = {w.name: w for w in workers_from(live, progress)}

    # Shards that finished their share of this step: said once per step (remembered on the pod).
    if progress.get("phase") == "rollout":
        for pod_name_, worker in sorted(shard_of.items()):
            if worker.rolls_out and not worker.has_work and worker.shard.finished > 0:
                if _annotations(live[pod_name_]).get(ANNOTATION_DRAINED_STEP) != str(step):
                    out.annotate.append(PodAnnotations(_name(live[pod_name_]), {ANNOTATION_DRAINED_STEP: str(step)}))
                    out.events.append(
                        Event("ShardDrained", f"{pod_name_} (shard {worker.index}) finished its {worker.shard.finished} sequences of step {step}",
                              series=f"ShardDrained/{pod_name_}")
                    )

    moves = []
    for action in actions:
        if isinstance(action, Lend) and action.worker in live:
            worker = shard_of[action.worker]
            out.annotate.append(PodAnnotations(_name(live[action.worker]), {ANNOTATION_ASSIGNED_ROLE: action.to}))
            why = "idle trainer during rollout" if worker.role == "trainer" else f"drained at step {step}"
            out.events.append(Event("GPULent", f"{action.worker} ({worker.role}) lent to drafter training: {why}",
                                    series=f"GPULent/{action.worker}"))
        elif isinstance(action, Return) and action.worker in live:
            out.annotate.append(PodAnnotations(_name(live[action.worker]), {ANNOTATION_ASSIGNED_ROLE: action.to}))
            need = "training needs it" if action.to in ("trainer", "worker") and not shard_of[action.worker].has_work else "rollout work arrived"
            out.events.append(Event("GPUReturned", f"{action.worker} returned to {action.to}: {need}", series=f"GPUReturned/{action.worker}"))
        elif isinstance(action, Consolidate):
            moves.append({"target": action.target, "sources": list(action.sources), "sequences": list(action.sequences)})

    # Consolidation is carried out by the coordinator in the head pod: the request is an annotation there.
    if moves and head in live:
        request = json.dumps({"step": step, "moves": moves}, sort_keys=True, separators=(",", ":"))
        if _annotations(live[head]).get(ANNOTATION_CONSOLIDATE) != request:
            out.annotate.append(PodAnnotations(_name(live[head]), {ANNOTATION_CONSOLIDATE: request}))
            total = sum(sum(m["sequences"]) for m in moves)
            targets = ", ".join(m["target"] for m in moves)
            sources = sorted({s for m in moves for s in m["sources"]})
            out.events.append(
                Event("TailConsolidated", f"step {step}: moving {total} sequences from {', '.join(sources)} onto {targets}",
                      series="TailConsolidated")
            )
