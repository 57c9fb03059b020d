"""The child objects of a ReasoningRLJob, as plain dicts: pure functions, one per kind.

Every child is owned by the job (garbage collection deletes it with the job), carries
the labels `tlt.dev/job`, `tlt.dev/role` and, for pods, `tlt.dev/index`, and has a
deterministic name, so a reconcile that runs twice creates nothing twice.

Tenancy: each pod slot has an identity of its own (ServiceAccount, Role, RoleBinding
named like the pod) that may read its job, read and label its own pod, and, for the
head, write the job's progress ConfigMap; no pod may write the job's status. The job's
Ray cluster requires a token from a Secret of the job (`<job>-ray-<uid>`), and a
NetworkPolicy admits traffic to the pods only from the job's own pods (Ray, rendezvous)
and, on the metrics port, from the operator's and monitoring namespaces.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import yaml

import tlt
from tlt.api import topology
from tlt.api.model import API_GROUP, API_VERSION, KIND, PLURAL, PodTemplate, ReasoningRLJob
from tlt.api.ranks import RENDEZVOUS_PORT, trainer_ranks
from tlt.worker.status import progress_map_name  # noqa: F401  (the operator creates it, the coordinator writes it)

LABEL_JOB = f"{API_GROUP}/job"
LABEL_ROLE = f"{API_GROUP}/role"
LABEL_INDEX = f"{API_GROUP}/index"
LABEL_ACTIVE_ROLE = f"{API_GROUP}/active-role"  # written by the worker itself, never by the operator
ANNOTATION_ASSIGNED_ROLE = f"{API_GROUP}/assigned-role"
ANNOTATION_CONSOLIDATE = f"{API_GROUP}/consolidate"
ANNOTATION_DRAINED_STEP = f"{API_GROUP}/drained-step"
ANNOTATION_POD_HASH = f"{API_GROUP}/pod-hash"  # what shaped the pod: its spec and the config it reads
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
MANAGED_BY = {"app.kubernetes.io/managed-by": "tlt-operator", "app.kubernetes.io/name": "tlt"}

GPU_RESOURCE = "nvidia.com/gpu"
CONFIG_FILE = "job.yaml"
CONFIG_DIR = "/etc/tlt"
RAY_PORT = 6379
METRICS_PORT = 8080
HEALTH_PATH = "/healthz"
RAY_TOKEN_DIR = "/etc/tlt-ray"
RAY_TOKEN_FILE = "token"
NON_ROOT_UID = 1000
# runPolicy fields only the operator acts on: changing them never restarts pods.
LIFECYCLE_FIELDS = ("suspend", "backoffLimit", "maxRestarts", "terminatingTimeoutSeconds", "activeDeadlineSeconds",
                    "ttlSecondsAfterFinished")


@dataclass(frozen=True)
class OperatorDefaults:
    """What the operator fills in where a job sets nothing (from its environment)."""

    image_cuda: str = f"tlt/worker-cuda:{tlt.__version__}"
    image_cpu: str = f"tlt/worker-cpu:{tlt.__version__}"
    image_pull_policy: str | None = None
    shm_gpu: str = "16Gi"
    shm_cpu: str = "1Gi"
    # Namespaces whose pods may scrape the job pods' metrics port (the operator's own, monitoring).
    metrics_namespaces: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "OperatorDefaults":
        env = os.environ if env is None else env
        base = cls()
        namespaces = [env.get("TLT_OPERATOR_NAMESPACE", ""), *env.get("TLT_METRICS_NAMESPACES", "").split(",")]
        return cls(
            image_cuda=env.get("TLT_WORKER_IMAGE_CUDA") or base.image_cuda,
            image_cpu=env.get("TLT_WORKER_IMAGE_CPU") or base.image_cpu,
            image_pull_policy=env.get("TLT_WORKER_IMAGE_PULL_POLICY") or None,
            metrics_namespaces=tuple(sorted({n.strip() for n in namespaces if n.strip()})),
        )


@dataclass(frozen=True)
class PodSlot(topology.Slot):
    """One pod the job wants (`tlt.api.topology.Slot`), with the template it is built from."""

    template: PodTemplate | None

    def name(self, job: str) -> str:
        return pod_name(job, self.role, self.index)


def pod_name(job: str, role: str, index: int) -> str:
    return f"{job}-{topology.node_name(role, index)}"


def service_name(job: str) -> str:
    return f"{job}-workers"


def config_map_name(job: str) -> str:
    return f"{job}-config"


def ray_secret_name(job: ReasoningRLJob) -> str:
    """The job's Ray token Secret: named with the job's uid, so a deleted job's Secret (still being
    garbage-collected) never stands in for this one's."""
    uid = job_uid(job)
    return f"{job.metadata.name}-ray-{uid.replace('-', '')[:8]}" if uid else f"{job.metadata.name}-ray"


def network_policy_name(job: str) -> str:
    return f"{job}-workers"


def service_account_name(slot_pod: str) -> str:
    """Each pod slot logs in as its own ServiceAccount, named like the slot's pod."""
    return slot_pod


def head_pod_name(job: ReasoningRLJob) -> str:
    """The pod that runs the Ray head and the coordinator (`tlt.api.topology.head_node`)."""
    return f"{job.metadata.name}-{topology.head_node(job.spec)}"


def is_head(job: ReasoningRLJob, slot: PodSlot) -> bool:
    return slot.node == topology.head_node(job.spec)


def pod_slots(job: ReasoningRLJob, drafters: int | None = None) -> list[PodSlot]:
    """The pods of the job's placement, in creation order (the head first): `tlt.api.topology.pod_slots`."""
    spec = job.spec
    templates = {"trainer": spec.trainer.template, "rollout": spec.rollout.template, "worker": spec.rollout.template,
                 "drafter": spec.drafter.template}
    return [PodSlot(s.role, s.index, s.gpus, templates[s.role]) for s in topology.pod_slots(spec, drafters)]


def max_slots(job: ReasoningRLJob) -> list[PodSlot]:
    """Every pod slot the job can ever have (dedicated drafters at their maximum)."""
    return pod_slots(job, drafters=job.spec.drafter.dedicated_replicas)


# ---------------------------------------------------------------------------------
# Metadata


def owner_reference(job: ReasoningRLJob, uid: str | None) -> list[dict]:
    """The job as controller owner; none when the uid is unknown (`tlt render` without a cluster)."""
    if not uid:
        return []
    return [
        {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "name": job.metadata.name,
            "uid": uid,
            "controller": True,
        }
    ]


def job_uid(job: ReasoningRLJob) -> str | None:
    return (job.metadata.model_extra or {}).get("uid")


def namespace_of(job: ReasoningRLJob) -> str:
    return job.metadata.namespace or "default"


def child_labels(job: ReasoningRLJob, role: str | None = None, index: int | None = None) -> dict[str, str]:
    labels = {**MANAGED_BY, LABEL_JOB: job.metadata.name}
    if role is not None:
        labels[LABEL_ROLE] = role
    if index is not None:
        labels[LABEL_INDEX] = str(index)
    return labels


def _metadata(job: ReasoningRLJob, name: str, labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict:
    meta = {"name": name, "namespace": namespace_of(job), "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    owners = owner_reference(job, job_uid(job))
    if owners:
        meta["ownerReferences"] = owners
    return meta


# ---------------------------------------------------------------------------------
# RBAC, config, service


def _pull_secrets(job: ReasoningRLJob) -> list[dict]:
    """imagePullSecrets of every template of the job, once each."""
    names = []
    for template in (job.spec.template, job.spec.rollout.template, job.spec.trainer.template, job.spec.drafter.template):
        for ref in (template.image_pull_secrets if template else None) or []:
            if ref.name not in names:
                names.append(ref.name)
    return [{"name": n} for n in names]


def build_service_account(job: ReasoningRLJob, slot: "PodSlot") -> dict:
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(job, service_account_name(slot.name(job.metadata.name)), child_labels(job, slot.role, slot.index)),
        "automountServiceAccountToken": True,
    }
    pull = _pull_secrets(job)
    if pull:
        account["imagePullSecrets"] = pull
    return account


def build_role(job: ReasoningRLJob, slot: "PodSlot", pod_names: list[str] | None = None) -> dict:
    """What one pod may do: read its job, read, watch and label its own pod, and (the head alone)
    write the job's progress ConfigMap. Nothing else: no pod may write the job's status or touch
    another pod.

    RBAC cannot match labels, so the pod is named (its slot's name, and the name of a replacement
    created under a new name, `pod_names`): list and watch are allowed with a `metadata.name` field
    selector on it (what the role watcher does); patch is the narrowest verb that sets a label.
    """
    job_name = job.metadata.name
    names = list(dict.fromkeys([slot.name(job_name), *(pod_names or [])]))
    rules = [
        {"apiGroups": [API_GROUP], "resources": [PLURAL], "resourceNames": [job_name], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "resourceNames": names, "verbs": ["get", "list", "watch", "patch"]},
    ]
    if is_head(job, slot):
        rules.append({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [progress_map_name(job_name)],
                      "verbs": ["get", "patch"]})
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(job, service_account_name(slot.name(job_name)), child_labels(job, slot.role, slot.index)),
        "rules": rules,
    }


def build_role_binding(job: ReasoningRLJob, slot: "PodSlot") -> dict:
    account = service_account_name(slot.name(job.metadata.name))
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(job, account, child_labels(job, slot.role, slot.index)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace_of(job)}],
    }


def build_progress_map(job: ReasoningRLJob) -> dict:
    """Created empty; the coordinator patches `data` (progress, step, drafter as JSON) and the
    operator copies what validates into the job's status."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, progress_map_name(job.metadata.name), child_labels(job)),
    }


def build_ray_secret(job: ReasoningRLJob) -> dict:
    """The job's Ray token: every pod mounts it, Ray refuses connections without it. `data` is
    filled with a random token when the Secret is created (kube.py): it is never derived or read back."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(job, ray_secret_name(job), child_labels(job)),
    }


def build_network_policy(job: ReasoningRLJob, defaults: "OperatorDefaults") -> dict:
    """Ingress to the job's pods: any port from the job's own pods (Ray's GCS, raylets, object
    store and workers, trainer rendezvous), the metrics port from the operator's and monitoring
    namespaces; nothing else. Egress is left open (the API server, model hubs)."""
    own = {"podSelector": {"matchLabels": {LABEL_JOB: job.metadata.name}}}
    ingress = [{"from": [own]}]
    if defaults.metrics_namespaces:
        ingress.append({
            "from": [{"namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(defaults.metrics_namespaces)}]}}],
            "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
        })
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(job, network_policy_name(job.metadata.name), child_labels(job)),
        "spec": {"podSelector": {"matchLabels": {LABEL_JOB: job.metadata.name}}, "policyTypes": ["Ingress"], "ingress": ingress},
    }


def rendered_config(job: ReasoningRLJob) -> str:
    """The job as the pods read it: spec with defaults filled in, no status, no server metadata."""
    body = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": job.metadata.name, "namespace": namespace_of(job)},
        "spec": job.spec.to_manifest(),
    }
    return yaml.safe_dump(body, sort_keys=False)


def pod_shaping_spec(job: ReasoningRLJob) -> dict:
    """The spec as far as it reaches the pods: everything but the operator's lifecycle fields."""
    return without_lifecycle(job.spec.to_manifest())


def without_lifecycle(spec: dict) -> dict:
    run_policy = spec.get("runPolicy") or {}
    return {**spec, "runPolicy": {k: v for k, v in run_policy.items() if k not in LIFECYCLE_FIELDS}}


def config_digest(job: ReasoningRLJob) -> str:
    return _digest(pod_shaping_spec(job))


def pod_hash(slot: "PodSlot", config: str) -> str:
    """The hash a pod carries (ANNOTATION_POD_HASH): a pod whose hash differs from the desired one is stale.

    Only the job's own spec shapes it (`config`, its `config_digest`), never the operator's
    defaults or how this version of the operator builds pods: upgrading the operator rolls no pod."""
    return _digest({"slot": [slot.role, slot.index, slot.gpus], "config": config})


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def build_config_map(job: ReasoningRLJob) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, config_map_name(job.metadata.name), child_labels(job)),
        "data": {CONFIG_FILE: rendered_config(job)},
    }


def build_service(job: ReasoningRLJob) -> dict:
    """Headless: stable DNS names `<pod>.<job>-workers` for Ray and NCCL, before the pods are ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, service_name(job.metadata.name), child_labels(job)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: job.metadata.name},
            "ports": [
                {"name": "ray", "port": RAY_PORT, "targetPort": RAY_PORT, "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT, "protocol": "TCP"},
                {"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT, "protocol": "TCP"},
            ],
        },
    }


# ---------------------------------------------------------------------------------
# Pods


def merge_templates(base: PodTemplate | None, override: PodTemplate | None) -> PodTemplate:
    """The role's template over the job-wide one: scalars replaced, maps merged, lists appended (env by name)."""
    if base is None and override is None:
        return PodTemplate()
    if base is None or override is None:
        return (base or override).model_copy(deep=True)
    merged = base.model_copy(deep=True)
    for field in PodTemplate.model_fields:
        mine, theirs = getattr(merged, field), getattr(override, field)
        if theirs is None:
            continue
        if field == "env":
            by_name = {e.name: e for e in (mine or [])}
            by_name.update({e.name: e for e in theirs})
            setattr(merged, field, list(by_name.values()))
        elif field == "resources":
            requests = {**((mine.requests if mine else None) or {}), **(theirs.requests or {})}
            limits = {**((mine.limits if mine else None) or {}), **(theirs.limits or {})}
            setattr(merged, field, type(theirs)(requests=requests or None, limits=limits or None))
        elif isinstance(theirs, dict):
            setattr(merged, field, {**(mine or {}), **theirs})
        elif isinstance(theirs, list):
            setattr(merged, field, [*(mine or []), *theirs])
        else:
            setattr(merged, field, theirs)
    return merged


def _quantity(value) -> str:
    return str(value)


def _env(job: ReasoningRLJob, slot: PodSlot, template: PodTemplate) -> list[dict]:
    name = job.metadata.name
    head = f"{head_pod_name(job)}.{service_name(name)}.{namespace_of(job)}.svc"
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "TLT_JOB", "value": name},
        {"name": "TLT_ROLE", "value": slot.role},
        {"name": "TLT_INDEX", "value": str(slot.index)},
        {"name": "TLT_CONFIG", "value": f"{CONFIG_DIR}/{CONFIG_FILE}"},
        {"name": "TLT_RAY_HEAD", "value": f"{head}:{RAY_PORT}"},
        # Ray refuses every connection without the job's token (tlt.worker.pod reads it from here).
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {"name": "RAY_AUTH_TOKEN_PATH", "value": f"{RAY_TOKEN_DIR}/{RAY_TOKEN_FILE}"},
        # The pod's Ray node offers its GPUs: the trainer's ranks ask Ray for one each.
        {"name": "TLT_NUM_GPUS", "value": str(slot.gpus)},
    ]
    ranks = trainer_ranks(job.spec)
    here = ranks.ranks_on(f"{slot.role}-{slot.index}")
    if here:
        # The trainer's ranks in this pod meet at rank 0's pod (the head) on the rendezvous port;
        # the weight broadcast group to the rollout workers meets there too.
        env += [
            {"name": "MASTER_ADDR", "value": head},
            {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
            {"name": "TLT_TRAINER_WORLD_SIZE", "value": str(ranks.world_size)},
            {"name": "TLT_TRAINER_RANKS", "value": f"{here.start}-{here.stop - 1}"},
        ]
    model = job.spec.model
    if model.token_secret is not None:
        # The hub token reaches the pods only as a secret reference, never as a value.
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": model.token_secret.name, "key": model.token_secret.key}}}
        )
    for var in template.env or []:
        env.append(var.to_manifest())
    return env


def _resources(slot: PodSlot, template: PodTemplate) -> dict:
    requests = {k: _quantity(v) for k, v in ((template.resources.requests if template.resources else None) or {}).items()}
    limits = {k: _quantity(v) for k, v in ((template.resources.limits if template.resources else None) or {}).items()}
    if slot.gpus > 0:
        requests[GPU_RESOURCE] = str(slot.gpus)
        limits[GPU_RESOURCE] = str(slot.gpus)
    else:
        requests.pop(GPU_RESOURCE, None)
        limits.pop(GPU_RESOURCE, None)
    out = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _probe(period: int, failures: int) -> dict:
    return {"httpGet": {"path": HEALTH_PATH, "port": "metrics"}, "periodSeconds": period, "timeoutSeconds": 5,
            "failureThreshold": failures}


def _command(job: ReasoningRLJob, slot: PodSlot) -> list[str]:
    command = ["tlt", "worker", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--role", slot.role, "--index", str(slot.index)]
    if is_head(job, slot):
        command.append("--head")
    return command


def build_pod(
    job: ReasoningRLJob,
    slot: PodSlot,
    defaults: OperatorDefaults = OperatorDefaults(),
    total_pods: int | None = None,
    config: str | None = None,
    name: str | None = None,
) -> dict:
    """One pod; `config` is the job's `config_digest`, passed in when many pods are built at once.
    `name`: the pod's name when it is not the slot's (a replacement of a pod stuck on a lost node);
    its hostname stays the slot's, so its DNS name does not change."""
    job_name = job.metadata.name
    template = merge_templates(job.spec.template, slot.template)
    labels = {**(template.labels or {}), **child_labels(job, slot.role, slot.index)}
    annotations = dict(template.annotations or {})
    if job.spec.queue_name:
        # Kueue's plain-pod integration admits the job's pods as one group.
        labels[LABEL_KUEUE_QUEUE] = job.spec.queue_name
        labels["kueue.x-k8s.io/pod-group-name"] = job_name
        annotations["kueue.x-k8s.io/pod-group-total-count"] = str(total_pods or len(pod_slots(job)))

    shm = template.shm_size or (defaults.shm_gpu if slot.gpus > 0 else defaults.shm_cpu)
    volumes = [
        {"name": "config", "configMap": {"name": config_map_name(job_name)}},
        {"name": "ray-token", "secret": {"secretName": ray_secret_name(job), "defaultMode": 0o440}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _quantity(shm)}},
    ]
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "ray-token", "mountPath": RAY_TOKEN_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    for volume in job.spec.storage:
        volumes.append({"name": volume.name, "persistentVolumeClaim": {"claimName": volume.claim_name, "readOnly": volume.read_only}})
        mount = {"name": volume.name, "mountPath": volume.mount_path, "readOnly": volume.read_only}
        if volume.sub_path:
            mount["subPath"] = volume.sub_path
        mounts.append(mount)
    volumes += template.volumes or []
    mounts += template.volume_mounts or []

    container = {
        "name": "tlt",
        "image": template.image or (defaults.image_cuda if slot.gpus > 0 else defaults.image_cpu),
        "command": _command(job, slot),
        "env": _env(job, slot, template),
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
        + ([{"name": "ray", "containerPort": RAY_PORT, "protocol": "TCP"},
            {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}]
           if is_head(job, slot) else []),
        "volumeMounts": mounts,
        # /healthz answers 200 once the pod's Ray node is in the job's cluster and 503 when it lost it;
        # startup allows for image pulls, model downloads and the wait for the head (tlt.worker.pod.JOIN_TIMEOUT).
        "startupProbe": _probe(period=10, failures=90),
        "livenessProbe": _probe(period=20, failures=3),
        "readinessProbe": _probe(period=5, failures=2),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
    }
    pull_policy = template.image_pull_policy or defaults.image_pull_policy
    if pull_policy:
        container["imagePullPolicy"] = pull_policy
    resources = _resources(slot, template)
    if resources:
        container["resources"] = resources

    tolerations = list(template.tolerations or [])
    if slot.gpus > 0 and not any(t.get("key") == GPU_RESOURCE for t in tolerations):
        # GPU nodes are commonly tainted nvidia.com/gpu; pods that request GPUs belong there.
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})

    pod_name_ = slot.name(job_name)
    spec = {
        "restartPolicy": "Never",  # the operator replaces failed pods with backoff and counts them
        "serviceAccountName": service_account_name(pod_name_),
        "automountServiceAccountToken": True,
        "hostname": pod_name_,
        "subdomain": service_name(job_name),
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NON_ROOT_UID,
            "runAsGroup": NON_ROOT_UID,
            "fsGroup": NON_ROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if tolerations:
        spec["tolerations"] = tolerations
    if template.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": ref.name} for ref in template.image_pull_secrets]
    for field, key in (
        ("node_selector", "nodeSelector"),
        ("affinity", "affinity"),
        ("priority_class_name", "priorityClassName"),
        ("scheduler_name", "schedulerName"),
    ):
        value = getattr(template, field)
        if value:
            spec[key] = value
    annotations[ANNOTATION_POD_HASH] = pod_hash(slot, config or config_digest(job))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _metadata(job, name or pod_name_, labels, annotations), "spec": spec}


def build_pods(job: ReasoningRLJob, defaults: OperatorDefaults = OperatorDefaults(), drafters: int | None = None) -> list[dict]:
    slots = pod_slots(job, drafters)
    config = config_digest(job)
    return [build_pod(job, slot, defaults, total_pods=len(slots), config=config) for slot in slots]


def build_supporting(job: ReasoningRLJob, defaults: OperatorDefaults = OperatorDefaults(), pods: dict[str, dict] | None = None) -> list[dict]:
    """Children other than pods and the Ray Secret, in the order they must exist (pods use their
    account, mount the ConfigMap). `pods`: the pod of each slot where its name is not the slot's."""
    identities = []
    for slot in max_slots(job):
        slot_name = slot.name(job.metadata.name)
        current = ((pods or {}).get(slot_name) or {}).get("metadata", {}).get("name")
        identities += [build_service_account(job, slot), build_role(job, slot, [current] if current else None),
                       build_role_binding(job, slot)]
    return [*identities, build_config_map(job), build_progress_map(job), build_service(job), build_network_policy(job, defaults)]


def build_children(job: ReasoningRLJob, defaults: OperatorDefaults = OperatorDefaults(), drafters: int | None = None) -> list[dict]:
    """Every child of the job, in creation order (the Ray Secret's token is filled in when it is created)."""
    return [build_ray_secret(job), *build_supporting(job, defaults), *build_pods(job, defaults, drafters)]
