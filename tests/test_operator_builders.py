"""The child objects of a job, as the operator creates them and `tlt render` prints them."""

import copy

import pytest
import yaml

from tlt.api.load import parse_job
from tlt_operator.builders import (
    OperatorDefaults,
    build_children,
    build_config_map,
    build_network_policy,
    build_pod,
    build_pods,
    build_role,
    build_role_binding,
    build_service,
    build_service_account,
    merge_templates,
    pod_slots,
)

BASE = {
    "apiVersion": "tlt.dev/v1alpha1",
    "kind": "ReasoningRLJob",
    "metadata": {"name": "demo", "namespace": "team-a", "uid": "1234-uid"},
    "spec": {
        "model": {"path": "/models/qwen"},
        "data": {"path": "/data/train.jsonl"},
        "algorithm": {"groupSize": 4},
        "rollout": {"replicas": 3, "gpusPerReplica": 1, "maxBatchSize": 64},
        "trainer": {"replicas": 1, "gpusPerReplica": 2},
        "drafter": {"dedicatedReplicas": 2},
    },
}


def job(**spec_changes):
    body = copy.deepcopy(BASE)
    body["spec"].update(spec_changes)
    return parse_job(body)


def pods_by_name(j, **kw):
    return {p["metadata"]["name"]: p for p in build_pods(j, **kw)}


def test_disaggregated_job_gets_trainer_rollout_and_dedicated_drafter_pods():
    names = list(pods_by_name(job()))
    assert names == ["demo-trainer-0", "demo-rollout-0", "demo-rollout-1", "demo-rollout-2", "demo-drafter-0", "demo-drafter-1"]


def test_colocated_job_gets_worker_pods_with_the_larger_gpu_count():
    pods = pods_by_name(job(placement="colocated"))
    assert [n for n in pods if "worker" in n] == ["demo-worker-0", "demo-worker-1", "demo-worker-2"]
    limits = pods["demo-worker-1"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "2"
    assert "--head" in pods["demo-worker-0"]["spec"]["containers"][0]["command"]


def test_every_child_is_owned_by_the_job_and_labelled():
    for child in build_children(job()):
        meta = child["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"] == [
            {"apiVersion": "tlt.dev/v1alpha1", "kind": "ReasoningRLJob", "name": "demo", "uid": "1234-uid", "controller": True}
        ]
        assert meta["labels"]["tlt.dev/job"] == "demo"


def test_children_have_no_owner_without_a_uid():
    body = copy.deepcopy(BASE)
    del body["metadata"]["uid"]
    assert all("ownerReferences" not in c["metadata"] for c in build_children(parse_job(body)))


def test_pods_carry_role_and_index_labels_and_gpu_requests():
    pod = pods_by_name(job())["demo-rollout-2"]
    assert pod["metadata"]["labels"]["tlt.dev/role"] == "rollout"
    assert pod["metadata"]["labels"]["tlt.dev/index"] == "2"
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == "1" and resources["limits"]["nvidia.com/gpu"] == "1"
    trainer = pods_by_name(job())["demo-trainer-0"]["spec"]["containers"][0]
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "--head" in trainer["command"]


def test_cpu_pods_request_no_gpu_get_the_cpu_image_and_a_small_shm():
    j = job(rollout={"replicas": 1, "gpusPerReplica": 0, "engine": "torch", "maxBatchSize": 8})
    pod = pods_by_name(j)["demo-rollout-0"]
    container = pod["spec"]["containers"][0]
    assert "resources" not in container
    assert container["image"] == OperatorDefaults().image_cpu
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    assert "tolerations" not in pod["spec"]


def test_gpu_pods_get_the_cuda_image_from_operator_defaults_and_tolerate_the_gpu_taint():
    defaults = OperatorDefaults.from_env({"TLT_WORKER_IMAGE_CUDA": "reg/cuda:1", "TLT_WORKER_IMAGE_CPU": "reg/cpu:1"})
    pod = pods_by_name(job(), defaults=defaults)["demo-rollout-0"]
    assert pod["spec"]["containers"][0]["image"] == "reg/cuda:1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["sizeLimit"] == "16Gi"


def test_role_template_overrides_merge_over_the_job_template():
    j = job(
        template={
            "image": "base:1",
            "nodeSelector": {"pool": "gpu", "zone": "a"},
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "job"}],
            "resources": {"requests": {"cpu": 8, "memory": "64Gi"}},
            "shmSize": "32Gi",
            "labels": {"team": "ml"},
        },
        rollout={
            "replicas": 1,
            "maxBatchSize": 64,
            "template": {
                "image": "rollout:2",
                "nodeSelector": {"zone": "b"},
                "env": [{"name": "B", "value": "rollout"}],
                "resources": {"requests": {"cpu": 16}},
            },
        },
    )
    pods = pods_by_name(j)
    rollout = pods["demo-rollout-0"]
    container = rollout["spec"]["containers"][0]
    assert container["image"] == "rollout:2"
    assert rollout["spec"]["nodeSelector"] == {"pool": "gpu", "zone": "b"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["A"] == "1" and env["B"] == "rollout"
    assert container["resources"]["requests"] == {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "1"}
    assert rollout["metadata"]["labels"]["team"] == "ml"
    trainer = pods["demo-trainer-0"]
    assert trainer["spec"]["containers"][0]["image"] == "base:1"
    assert next(v for v in trainer["spec"]["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"] == "32Gi"


def test_merge_keeps_the_job_template_untouched():
    j = job(template={"env": [{"name": "A", "value": "1"}]}, trainer={"template": {"env": [{"name": "A", "value": "2"}]}})
    merge_templates(j.spec.template, j.spec.trainer.template)
    assert j.spec.template.env[0].value == "1"


def test_template_labels_cannot_override_the_operator_labels():
    j = job(template={"labels": {"tlt.dev/role": "evil", "tlt.dev/job": "other"}})
    pod = pods_by_name(j)["demo-rollout-0"]
    assert pod["metadata"]["labels"]["tlt.dev/role"] == "rollout"
    assert pod["metadata"]["labels"]["tlt.dev/job"] == "demo"


def test_pods_run_as_non_root_without_privileges():
    for pod in build_pods(job()):
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = spec["containers"][0]["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert spec["restartPolicy"] == "Never"
        assert spec["serviceAccountName"] == pod["metadata"]["name"], "each pod logs in as its own identity"


def test_kueue_queue_label_is_set_only_when_asked():
    assert not any("kueue.x-k8s.io/queue-name" in p["metadata"]["labels"] for p in build_pods(job()))
    pods = build_pods(job(queueName="research"))
    assert all(p["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "research" for p in pods)
    assert all(p["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] == str(len(pods)) for p in pods)


def test_storage_claims_are_mounted_into_every_pod():
    j = job(storage=[{"name": "models", "claimName": "models-pvc", "mountPath": "/models", "readOnly": True}])
    for pod in build_pods(j):
        assert {"name": "models", "persistentVolumeClaim": {"claimName": "models-pvc", "readOnly": True}} in pod["spec"]["volumes"]
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in pod["spec"]["containers"][0]["volumeMounts"]


def test_hub_token_reaches_pods_only_as_a_secret_reference():
    j = job(model={"hubId": "Qwen/Qwen2.5-7B", "tokenSecret": {"name": "hf", "key": "token"}})
    env = build_pods(j)[0]["spec"]["containers"][0]["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in env


def test_each_pod_may_read_its_job_and_label_itself_and_only_the_head_may_report():
    j = job()
    slots = {s.name("demo"): s for s in pod_slots(j)}
    rollout = build_role(j, slots["demo-rollout-1"])
    rules = {tuple(r["resources"]): r for r in rollout["rules"]}
    assert set(rules) == {("reasoningrljobs",), ("pods",)}, "nothing else: no status, no other pod, no Secret"
    assert rules[("reasoningrljobs",)] == {"apiGroups": ["tlt.dev"], "resources": ["reasoningrljobs"], "resourceNames": ["demo"],
                                           "verbs": ["get"]}
    assert rules[("pods",)]["resourceNames"] == ["demo-rollout-1"]
    assert rules[("pods",)]["verbs"] == ["get", "list", "watch", "patch"]  # patch: the narrowest verb that sets a label
    head = {tuple(r["resources"]): r for r in build_role(j, slots["demo-trainer-0"])["rules"]}
    assert head[("configmaps",)] == {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["demo-progress"],
                                     "verbs": ["get", "patch"]}
    assert not any("status" in r for rule in head.values() for r in rule["resources"])
    replaced = build_role(j, slots["demo-rollout-1"], ["demo-rollout-1-r1"])
    assert next(r for r in replaced["rules"] if r["resources"] == ["pods"])["resourceNames"] == ["demo-rollout-1", "demo-rollout-1-r1"]
    binding = build_role_binding(j, slots["demo-rollout-1"])
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-rollout-1", "namespace": "team-a"}]
    assert binding["roleRef"]["name"] == rollout["metadata"]["name"] == "demo-rollout-1"
    assert build_service_account(j, slots["demo-rollout-1"])["metadata"]["name"] == "demo-rollout-1"
    # Identities exist for every slot the job may have (dedicated drafters up to their maximum).
    accounts = [o["metadata"]["name"] for o in build_children(j) if o["kind"] == "ServiceAccount"]
    assert "demo-drafter-1" in accounts and len(accounts) == len(set(accounts)) == 6


def test_pods_get_the_jobs_ray_token_and_probes_on_healthz():
    j = job()
    secret = next(o for o in build_children(j) if o["kind"] == "Secret")
    assert secret["metadata"]["name"] == "demo-ray-1234uid" and "data" not in secret, "the token is made at creation, never rendered"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "1234-uid"
    for pod in build_pods(j):
        spec = pod["spec"]
        container = spec["containers"][0]
        volume = next(v for v in spec["volumes"] if v["name"] == "ray-token")
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "ray-token")
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"].startswith(mount["mountPath"] + "/")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] >= 900


def test_the_network_policy_admits_the_jobs_own_pods_and_metrics_from_the_operator_namespaces():
    j = job()
    policy = build_network_policy(j, OperatorDefaults(metrics_namespaces=("monitoring", "tlt-system")))
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"tlt.dev/job": "demo"}} and spec["policyTypes"] == ["Ingress"]
    own, metrics = spec["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": {"tlt.dev/job": "demo"}}}]}
    assert metrics["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert metrics["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["monitoring", "tlt-system"]
    alone = build_network_policy(j, OperatorDefaults())["spec"]["ingress"]
    assert alone == [own], "without monitoring namespaces only the job's own pods get in"
    assert OperatorDefaults.from_env({"TLT_OPERATOR_NAMESPACE": "tlt-system", "TLT_METRICS_NAMESPACES": "monitoring, ,"}
                                     ).metrics_namespaces == ("monitoring", "tlt-system")


def test_image_pull_secrets_reach_the_pods_and_their_service_accounts():
    j = job(template={"imagePullSecrets": [{"name": "registry"}]},
            rollout={"replicas": 1, "maxBatchSize": 64, "template": {"imagePullSecrets": [{"name": "rollout-registry"}]}})
    pods = pods_by_name(j)
    assert pods["demo-rollout-0"]["spec"]["imagePullSecrets"] == [{"name": "registry"}, {"name": "rollout-registry"}]
    assert pods["demo-trainer-0"]["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    accounts = [o for o in build_children(j) if o["kind"] == "ServiceAccount"]
    assert all(a["imagePullSecrets"] == [{"name": "registry"}, {"name": "rollout-registry"}] for a in accounts)
    assert "imagePullSecrets" not in pods_by_name(job())["demo-rollout-0"]["spec"]


def test_config_map_holds_the_job_with_defaults_and_round_trips():
    cm = build_config_map(job())
    body = yaml.safe_load(cm["data"]["job.yaml"])
    again = parse_job(body)
    assert again.spec == job().spec
    assert body["spec"]["algorithm"]["clipRatioHigh"] == 0.2  # resolved default present
    assert "status" not in body and "uid" not in body["metadata"]


def test_headless_service_selects_the_job_pods_and_publishes_unready_addresses():
    svc = build_service(job())
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {"tlt.dev/job": "demo"}
    assert svc["spec"]["publishNotReadyAddresses"] is True
    pod = build_pods(job())[1]
    assert pod["spec"]["subdomain"] == svc["metadata"]["name"]
    head = next(e["value"] for e in pod["spec"]["containers"][0]["env"] if e["name"] == "TLT_RAY_HEAD")
    assert head == "demo-trainer-0.demo-workers.team-a.svc:6379"


def test_names_are_deterministic_and_fit_label_limits():
    long = copy.deepcopy(BASE)
    long["metadata"]["name"] = "x" * 40
    long["spec"]["rollout"]["replicas"] = 999
    j = parse_job(long)
    first, second = build_children(j), build_children(j)
    assert first == second
    assert all(len(c["metadata"]["name"]) <= 63 for c in first)


def test_drafter_count_can_be_overridden_by_the_elastic_plan():
    slots = pod_slots(job(), drafters=0)
    assert not any(s.role == "drafter" for s in slots)


def test_pods_carry_a_hash_of_what_shaped_them_that_lifecycle_fields_leave_alone():
    def hashes(j, **kw):
        return {n: p["metadata"]["annotations"]["tlt.dev/pod-hash"] for n, p in pods_by_name(j, **kw).items()}

    base = hashes(job())
    assert base == hashes(job()) and len(set(base.values())) == len(base)
    assert hashes(job(runPolicy={"suspend": True, "ttlSecondsAfterFinished": 60, "activeDeadlineSeconds": 600, "backoffLimit": 9,
                                 "maxRestarts": 2, "terminatingTimeoutSeconds": 30})) == base
    changed_config = hashes(job(algorithm={"groupSize": 8}))
    assert all(changed_config[n] != base[n] for n in base), "every pod reads the config"
    changed_checkpoints = hashes(job(runPolicy={"checkpoint": {"everySteps": 5}}))
    assert all(changed_checkpoints[n] != base[n] for n in base), "the coordinator reads the checkpoint policy"
    # An operator upgrade (new default images, new ways of building pods) is not the job's spec: no pod rolls.
    assert hashes(job(), defaults=OperatorDefaults(image_cuda="registry.test/cuda:2")) == base
