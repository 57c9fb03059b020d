"""The trainer as several ranks (Ray actors), and the policy broadcast from its rank 0 to the rollout workers."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
import torch

from tlt.api.load import parse_job
from tlt.api.ranks import trainer_ranks
from tlt.net import free_port as _free_port
from tlt.trainer.sync import layer_key, manifest, wire_dtype

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------
# pure parts


def test_parameters_travel_grouped_by_decoder_layer_in_their_order():
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight",
             "model.layers.1.input_layernorm.weight", "model.norm.weight", "lm_head.weight"]
    plan = manifest((n, (2, 3)) for n in names)
    assert [[n for n, _ in layer] for layer in plan] == [
        ["model.embed_tokens.weight"], names[1:3], [names[3]], ["model.norm.weight"], ["lm_head.weight"]]
    assert layer_key("model.layers.12.mlp.up_proj.weight") == "model.layers.12"
    assert wire_dtype(["bfloat16", "bfloat16"]) == "bfloat16" and wire_dtype(["bfloat16", "float32"]) == "float32"


def _spec(placement="disaggregated", trainer=(1, 0), rollout=(2, 0)):
    body = {"apiVersion": "tlt.dev/v1alpha1", "kind": "ReasoningRLJob", "metadata": {"name": "j"},
            "spec": {"model": {"builtin": "tiny-arith"}, "task": {"name": "arith"}, "placement": placement,
                     "trainer": {"replicas": trainer[0], "gpusPerReplica": trainer[1]},
                     "rollout": {"replicas": rollout[0], "gpusPerReplica": rollout[1]}}}
    return parse_job(body).spec


def test_trainer_ranks_are_replicas_times_gpus_one_per_cpu_pod_and_colocated_on_the_workers():
    gpu = trainer_ranks(_spec(trainer=(2, 4)))
    assert (gpu.world_size, gpu.per_pod, gpu.gpus_per_rank) == (8, 4, 1)
    assert [gpu.pod_of(r) for r in (0, 3, 4, 7)] == ["trainer-0", "trainer-0", "trainer-1", "trainer-1"]
    assert list(gpu.ranks_on("trainer-1")) == [4, 5, 6, 7] and list(gpu.ranks_on("rollout-0")) == []
    assert gpu.local_rank(6) == 2
    cpu = trainer_ranks(_spec(trainer=(2, 0)))
    assert (cpu.world_size, cpu.pods, cpu.gpus_per_rank) == (2, ("trainer-0", "trainer-1"), 0)
    colocated = trainer_ranks(_spec("colocated", trainer=(1, 1), rollout=(3, 2)))
    assert (colocated.pods, colocated.per_pod, colocated.world_size) == (("worker-0", "worker-1", "worker-2"), 2, 6)


# ---------------------------------------------------------------------------------
# the weight group, between plain processes


def _sender(port: int, size: int, out: str) -> None:
    from tlt.trainer.sync import WeightGroup

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
    torch.distributed.init_process_group("gloo")  # the trainer's own group: its store hosts the weight group
    torch.manual_seed(0)
    layers = [[("model.embed_tokens.weight", torch.randn(50, 8))],
              [("model.layers.0.q.weight", torch.randn(8, 8)), ("model.layers.0.norm.weight", torch.randn(8))],
              [("lm_head.weight", torch.randn(50, 8))]]
    torch.save(layers, out)
    group = WeightGroup("127.0.0.1", port, epoch=1, rank=0, size=size)
    for layer in layers:
        group.send_layer(layer, torch.bfloat16)
    group.close()


def _receiver(port: int, rank: int, size: int, plan, out: str) -> None:
    from tlt.trainer.sync import WeightGroup

    group = WeightGroup("127.0.0.1", port, epoch=1, rank=rank, size=size)
    got = {}
    for part in group.receive(plan, torch.bfloat16):
        got.update({k: v.clone() for k, v in part.items()})
    torch.save(got, out)


def test_the_weight_group_streams_every_layer_from_the_trainer_to_every_receiver_in_their_dtype(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    plan = [[("model.embed_tokens.weight", (50, 8))],
            [("model.layers.0.q.weight", (8, 8)), ("model.layers.0.norm.weight", (8,))],
            [("lm_head.weight", (50, 8))]]
    procs = [ctx.Process(target=_sender, args=(port, 3, str(tmp_path / "sent.pt")))]
    procs += [ctx.Process(target=_receiver, args=(port, r, 3, plan, str(tmp_path / f"got{r}.pt"))) for r in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    sent = {n: t for layer in torch.load(tmp_path / "sent.pt") for n, t in layer}
    for r in (1, 2):
        got = torch.load(tmp_path / f"got{r}.pt")
        assert got.keys() == sent.keys()
        for name, tensor in sent.items():
            assert got[name].dtype == torch.bfloat16 and got[name].shape == tensor.shape
            assert torch.equal(got[name], tensor.to(torch.bfloat16))


# ---------------------------------------------------------------------------------
# ranks as Ray actors, on a quickstart-sized batch


@pytest.fixture(scope="module")
def local_ray():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = not ray.is_initialized()  # an earlier test's WorkerPool may have started this process's Ray
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=256 * 1024 * 1024, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


# The quickstart's task and lengths in a smaller step: 8 prompts x 8 responses, two mini-batches.
SMALL_STEP = {"promptsPerStep": 8, "groupSize": 8, "miniBatchSize": 32}


def _quickstart(model: Path, out: Path | None = None, *, replicas: int = 1, stage: int = 2,
                algorithm_overrides: dict | None = None, **spec):
    """examples/quickstart.yaml (its task, lengths and response budget) on the micro model, with a DeepSpeed
    trainer of `replicas` CPU ranks."""
    import yaml

    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["spec"]["model"] = {"path": str(model)}
    doc["spec"]["trainer"] = {"replicas": replicas, "gpusPerReplica": 0,
                              "deepspeed": {"enabled": True, "zeroStage": stage}}
    doc["spec"]["output"] = {"path": str(out or model / "unused")}
    doc["spec"]["algorithm"].update(algorithm_overrides or {})
    doc["spec"].update(spec)
    return parse_job(doc).spec


def _batch(spec, model: Path):
    """One step's rollouts as the quickstart's task gives them: every prompt's group of responses is its
    trace with slips (so rewards differ within a group), lengths long-tailed up to the response budget."""
    import random

    from tlt.coordinator.prompts import PromptSource, load_tokenizer
    from tlt.tasks.arith import parse_prompt, render_trace, verify_answer
    from tlt.trainer import Rollouts, step_advantages

    a = spec.algorithm
    tokenizer = load_tokenizer(spec, model)
    items, _ = PromptSource(spec, tokenizer).take(0, a.prompts_per_step)
    rng = random.Random(0)
    prompts, responses, rewards = [], [], []
    for item in items:
        for _ in range(a.group_size):
            text = render_trace(*parse_prompt(item.prompt), rng, 0.15)
            prompts.append(list(item.ids))
            responses.append(tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id])
            rewards.append(verify_answer(text, item.answer))
    lengths = torch.tensor([float(len(r)) for r in responses])
    return Rollouts(prompts, responses, step_advantages(torch.tensor(rewards), lengths, a))


def _train_ranks(ray, spec, model: Path, batch, steps: int) -> tuple[list[float], dict]:
    from tlt.api.ranks import trainer_ranks
    from tlt.coordinator.actors import TrainerWorker

    world = trainer_ranks(spec).world_size
    rendezvous = ("127.0.0.1", _free_port())
    cls = ray.remote(num_cpus=0)(TrainerWorker)
    ranks = [cls.remote(spec, str(model), [0, 1][r % 2:r % 2 + 1], None, rank=r, world_size=world,
                        rendezvous=rendezvous) for r in range(world)]
    try:
        ref = ray.put(batch)
        losses = [ray.get([r.train.remote(ref) for r in ranks])[0]["loss"] for _ in range(steps)]
        state = ray.get([r.weights.remote() for r in ranks])[0]
    finally:
        for r in ranks:
            ray.kill(r)
    return losses, state


@pytest.mark.slow
def test_two_cpu_ranks_with_zero_2_and_zero_3_train_like_one_rank_on_a_long_tailed_batch(micro_model, local_ray):
    one = _quickstart(micro_model, replicas=1, stage=2, algorithm_overrides=SMALL_STEP)
    batch = _batch(one, micro_model)
    assert len(batch) == 64 and max(r.numel() for r in batch.responses) > 3 * sorted(
        r.numel() for r in batch.responses)[32]  # a long tail, as the quickstart's
    assert batch.advantages.abs().sum() > 0
    losses, start = None, None
    expected_losses, expected = _train_ranks(local_ray, one, micro_model, batch, steps=2)
    from safetensors.torch import load_file

    start = load_file(str(micro_model / "model.safetensors"))
    moved = sum(((expected[k] - start[k]) ** 2).sum().item() for k in expected) ** 0.5
    assert moved > 0
    for stage in (2, 3):
        two = _quickstart(micro_model, replicas=2, stage=stage, algorithm_overrides=SMALL_STEP)
        losses, state = _train_ranks(local_ray, two, micro_model, batch, steps=2)
        # float32 sums over up to 512 tokens a sequence, in another order on two ranks: 5e-5 relative measured
        # (a lost or doubled share of the batch would be ~0.5)
        assert losses == pytest.approx(expected_losses, rel=2e-4, abs=1e-6), stage
        assert state.keys() == expected.keys()
        gap = sum(((state[k] - expected[k]) ** 2).sum().item() for k in state) ** 0.5
        assert gap <= 1e-4 * moved, stage  # float summation order only (a lost share would be ~0.5)


@pytest.mark.slow
def test_rollout_workers_get_the_policy_over_the_broadcast_group_and_a_checkpoint_keeps_its_world_size(
        micro_model, local_ray, tmp_path):
    from tlt.coordinator.actors import WorkerPool

    spec = _quickstart(micro_model, tmp_path / "run", replicas=2, stage=3, algorithm_overrides=SMALL_STEP,
                       speculative={"mode": "off"}, elasticity={"lendIdle": False})
    batch = _batch(spec, micro_model)
    pool = WorkerPool(spec, str(micro_model))
    try:
        pool.start_shards(4)
        metrics = pool.train([p.tolist() for p in batch.prompts], [r.tolist() for r in batch.responses],
                             batch.advantages.tolist(), None, policy_version=1)
        assert metrics["world_size"] == 2 and metrics["policy_sync_broadcast"] == 1.0
        trained = local_ray.get(pool._weights_ref())
        assert set(pool.shards) == {"rollout-0", "rollout-1"}
        for shard in pool.shards.values():
            got = local_ray.get(shard.__ray_call__.remote(
                lambda s: ({k: v.clone() for k, v in s.model.state_dict().items()}, s.policy_version)))
            state, version = got
            assert version == 1
            for name, tensor in trained.items():
                assert torch.equal(state[name], tensor), name
            text = local_ray.get(shard.metrics_text.remote())
            assert 'tlt_policy_updates_total{via="broadcast"} 1.0' in text
            assert 'via="object"' not in text  # never through the coordinator
        pool.save(tmp_path / "ckpt")
        shards = sorted(p.name for p in (tmp_path / "ckpt" / "trainer" / "ds").iterdir())
        # each rank wrote its own partition of the optimizer state (ZeRO-3: and of the weights)
        assert [n for n in shards if n.endswith("optim_states.pt")] == [
            "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    finally:
        pool.shutdown()
    with pytest.raises(ValueError, match="written by a DeepSpeed trainer of 2 rank.*this trainer has 1"):
        WorkerPool(_quickstart(micro_model, tmp_path / "run", replicas=1, stage=3), str(micro_model),
                   checkpoint=tmp_path / "ckpt")


def test_a_pod_exports_the_trainer_ranks_it_hosts_and_skips_a_rank_that_does_not_answer():
    from prometheus_client import CollectorRegistry, generate_latest

    from tlt.trainer.pod_ranks import RankCollector

    answers = {4: {"rank": 4, "world_size": 8, "backend": "deepspeed", "zero_stage": 3, "device": "cuda:0",
                   "updates": 5, "tokens": 1200.0, "sent_bytes": 0}}
    collector = RankCollector("job-ns", range(4, 6))
    collector.ask = lambda rank, timeout=2.0: answers.get(rank)  # rank 5 is not up yet
    registry = CollectorRegistry()
    registry.register(collector)  # the registry asks a collector for its names on registration
    text = generate_latest(registry).decode()
    assert ('tlt_trainer_rank{backend="deepspeed",device="cuda:0",rank="4",world_size="8",zero_stage="3"} 1.0'
            in text)
    assert 'tlt_trainer_updates_total{rank="4"} 5.0' in text and 'tlt_trainer_tokens_total{rank="4"} 1200.0' in text
    assert 'rank="5"' not in text
