"""`tlt render` of the GPU examples: the trainer pods get the GPUs, Ray resources and rendezvous their ranks need."""

import copy

import pytest
import yaml

from tlt.api.load import load_jobs, parse_job
from tlt.api.ranks import RENDEZVOUS_PORT, trainer_ranks
from tlt.cli import main
from tlt.worker.pod import PodIdentity, ray_start_command


def _render(capsys, path) -> list[dict]:
    assert main(["render", str(path)]) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


def _env(pod: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


def _check_trainer_pods(objects: list[dict], spec, job: str, namespace: str) -> None:
    ranks = trainer_ranks(spec)
    gpus = spec.trainer.gpus_per_replica
    assert ranks.world_size == spec.trainer.replicas * gpus and ranks.gpus_per_rank == 1
    pods = {p["metadata"]["labels"]["tlt.dev/role"] + "-" + p["metadata"]["labels"]["tlt.dev/index"]: p
            for p in objects if p["kind"] == "Pod"}
    head = f"{job}-trainer-0.{job}-workers.{namespace}.svc"
    for i in range(spec.trainer.replicas):
        pod = pods[f"trainer-{i}"]
        container = pod["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
        env = _env(pod)
        # the pod's Ray node offers exactly its GPUs, and each rank asks Ray for one
        assert env["TLT_NUM_GPUS"] == str(gpus)
        command = ray_start_command(PodIdentity(job, namespace, "trainer", i, i == 0, "p", "h:6379"), env=env)
        assert command[command.index("--num-gpus") + 1] == str(gpus)
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == (head, str(RENDEZVOUS_PORT))
        assert env["TLT_TRAINER_WORLD_SIZE"] == str(ranks.world_size)
        assert env["TLT_TRAINER_RANKS"] == f"{i * gpus}-{(i + 1) * gpus - 1}"
        assert all(ranks.pod_of(r) == f"trainer-{i}" for r in range(i * gpus, (i + 1) * gpus))
    assert {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"} in \
        pods["trainer-0"]["spec"]["containers"][0]["ports"]
    service = next(o for o in objects if o["kind"] == "Service")
    assert any(p["name"] == "rendezvous" and p["port"] == RENDEZVOUS_PORT for p in service["spec"]["ports"])
    for name, pod in pods.items():
        if name.startswith("rollout-"):
            env = _env(pod)
            assert "MASTER_ADDR" not in env and env["TLT_NUM_GPUS"] == str(spec.rollout.gpus_per_replica)


@pytest.mark.parametrize("example", ["qwen2.5-7b-grpo.yaml", "qwen2.5-32b-multinode.yaml"])
def test_the_gpu_examples_render_trainer_pods_whose_env_and_ray_resources_hold_one_gpu_per_rank(
        example, repo_root, capsys):
    path = repo_root / "examples" / example
    job = load_jobs(path)[0]
    assert job.spec.trainer.deepspeed.enabled and job.spec.trainer.deepspeed.zero_stage == 3
    _check_trainer_pods(_render(capsys, path), job.spec, job.metadata.name, job.metadata.namespace or "default")


def test_a_trainer_over_two_pods_rendezvous_at_the_first_and_numbers_ranks_across_them(repo_root, capsys, tmp_path):
    body = yaml.safe_load((repo_root / "examples" / "qwen2.5-32b-multinode.yaml").read_text())
    body = copy.deepcopy(body)
    body["spec"]["trainer"]["replicas"] = 2
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(body))
    spec = parse_job(body).spec
    objects = _render(capsys, path)
    _check_trainer_pods(objects, spec, body["metadata"]["name"], body["metadata"]["namespace"])
    assert trainer_ranks(spec).world_size == 16
