"""`rollout.engine: vllm`: what tlt hands vLLM, the shard's calls into vLLM's API (on CPU, against
the stand-in in tests/vllm_standin.py, which runs the torch engine behind vLLM's names), the
refusal on machines without CUDA, and a real vLLM run where CUDA and vLLM exist."""

import importlib
import subprocess
import sys
import time

import pytest
import torch
import vllm_standin
import yaml
from specs import manifest, spec_of, with_fields

from tlt.coordinator.shard import RolloutShard
from tlt.engine import Request, TorchEngine
from tlt.engine import vllm_backend
from tlt.engine.vllm_backend import (VLLMEngine, drafter_items, engine_problem, llm_kwargs, sampling_kwargs,
                                     speculative_config, vllm_available)
from tlt.models import ModelConfig, random_model, save_model
from tlt.models.drafter import EagleDrafter

CONFIG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)


def vllm_spec(model_dir, **changes):
    fields = {"model": {"path": str(model_dir), "dtype": "float32"}, "rollout.engine": "vllm",
              "rollout.maxBatchSize": 8, "algorithm.maxResponseTokens": 24, "speculative.strategies": ["3_1_3"]}
    return spec_of(manifest(), **{**fields, **changes})


@pytest.fixture
def model_dir(tmp_path):
    save_model(random_model(CONFIG, seed=1), tmp_path / "m")
    return tmp_path / "m"


@pytest.fixture
def standin(monkeypatch):
    """vLLM's API on this CPU machine: the stand-in, and the CUDA check waived."""
    vllm_standin.install(monkeypatch)
    monkeypatch.setattr(vllm_backend, "unavailable_reason", lambda: None)
    return vllm_standin


def requests(n=6, temperature=1.0, max_tokens=24):
    return [Request(prompt=[1, 2, 3 + i], max_tokens=max_tokens, stop_ids=[0], temperature=temperature, seed=10 + i,
                    id=(i, 0), group=i) for i in range(n)]


def rollout(shard, reqs, step=1):
    shard.start_rollout(step, reqs)
    while shard.progress().busy:
        time.sleep(0.01)
    return {r.id: r for r in shard.take_results()}


# ---- what tlt hands vLLM ----

def test_llm_arguments_come_from_the_spec(tmp_path):
    EagleDrafter.for_target(random_model(CONFIG)).save(tmp_path / "d")
    spec = vllm_spec(tmp_path / "m", **{"rollout.gpusPerReplica": 2, "rollout.gpuMemoryUtilization": 0.6,
                                        "rollout.maxBatchSize": 64, "algorithm.seed": 7, "model": {"path": "/m"}})
    kw = llm_kwargs(spec, "/m", drafter_dir=tmp_path / "d", threshold=8, max_model_len=2048)
    assert (kw["tensor_parallel_size"], kw["distributed_executor_backend"]) == (2, "mp")  # gpusPerReplica
    assert (kw["gpu_memory_utilization"], kw["max_num_seqs"], kw["seed"], kw["max_model_len"]) == (0.6, 64, 7, 2048)
    assert kw["dtype"] == "bfloat16" and kw["enable_sleep_mode"] and not kw["disable_log_stats"]
    module, _, name = kw["worker_extension_cls"].rpartition(".")
    extension = getattr(importlib.import_module(module), name)
    assert callable(extension.tlt_load_policy) and callable(extension.tlt_load_drafter)
    one_gpu = llm_kwargs(vllm_spec("/m"), "/m", drafter_dir=tmp_path / "d", threshold=8, max_model_len=64)
    assert one_gpu["tensor_parallel_size"] == 1 and "distributed_executor_backend" not in one_gpu


def test_speculation_is_eagle_from_the_drafter_folder_and_off_above_the_threshold(tmp_path):
    EagleDrafter.for_target(random_model(CONFIG)).save(tmp_path / "d")
    spec = vllm_spec("/m", **{"rollout.maxBatchSize": 256, "speculative.strategies": ["4_1_4", "6_4_16"]})
    assert speculative_config(spec, tmp_path / "d", threshold=16) == {
        "method": "eagle", "model": str(tmp_path / "d"), "num_speculative_tokens": 4,
        "num_speculative_tokens_per_batch_size": [[1, 16, 4], [17, 256, 0]]}
    always = speculative_config(vllm_spec("/m", **{"speculative.mode": "always"}), tmp_path / "d", threshold=16)
    assert "num_speculative_tokens_per_batch_size" not in always
    assert speculative_config(vllm_spec("/m", **{"speculative.mode": "off"}), tmp_path / "d", 16) is None
    assert speculative_config(vllm_spec("/m", **{"drafter.enabled": False}), tmp_path / "d", 16) is None
    ngram = speculative_config(vllm_spec("/m", **{"drafter.architecture": "ngram", "drafter.dedicatedReplicas": 0}),
                               None, 16)
    assert ngram["method"] == "ngram" and ngram["num_speculative_tokens"] == 3
    with pytest.raises(ValueError, match="drafter folder"):
        speculative_config(spec, tmp_path / "missing", 16)


def test_sampling_params_mirror_the_request_and_a_continuation_decodes_the_rest():
    kw = sampling_kwargs(Request(prompt=[1], max_tokens=9, stop_ids=[2], temperature=0.7, top_p=0.9, seed=5))
    assert (kw["max_tokens"], kw["stop_token_ids"], kw["temperature"], kw["top_p"], kw["seed"]) == (9, [2], 0.7, 0.9, 5)
    assert kw["logprobs"] == 0 and not kw["ignore_eos"]
    cont = sampling_kwargs(Request(prompt=[1], max_tokens=9, prefix=[4, 5], prefix_logprobs=[-1.0, -2.0]))
    assert cont["max_tokens"] == 7 and cont["ignore_eos"]


def test_drafter_updates_never_send_the_shared_embedding_or_head():
    names = [n for n, _ in drafter_items({"fc.weight": torch.zeros(1), "embed_tokens.weight": torch.zeros(1),
                                          "lm_head.weight": torch.zeros(1), "layers.0.mlp.up_proj.weight": torch.zeros(1)})]
    assert names == ["fc.weight", "layers.0.mlp.up_proj.weight"]


def test_vllm_topp_below_one_is_refused_by_validation():
    from tlt.api.errors import SpecError
    from tlt.api.load import parse_job

    with pytest.raises(SpecError, match="topP"):
        parse_job(with_fields(manifest(), **{"rollout.engine": "vllm", "algorithm.topP": 0.9}))
    parse_job(with_fields(manifest(), **{"rollout.engine": "torch", "algorithm.topP": 0.9}))


# ---- the shard on vLLM's API (the stand-in) ----

@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_vllm_shard_rolls_out_what_a_torch_shard_does(model_dir, standin, temperature):
    spec = vllm_spec(model_dir)
    got = {kind: rollout(RolloutShard(kind, str(model_dir), spec, engine=kind, batch_threshold=2),
                         requests(temperature=temperature))
           for kind in ("torch", "vllm")}
    assert sorted(got["vllm"]) == sorted(got["torch"])
    for key, r in got["torch"].items():
        v = got["vllm"][key]
        assert (v.tokens, v.finish_reason, v.prompt, v.group) == (r.tokens, r.finish_reason, r.prompt, r.group)
        assert v.logprobs == pytest.approx(r.logprobs, abs=1e-5)
    llm = standin.LLM.instances[-1]
    assert llm.kwargs["speculative_config"]["method"] == "eagle"


def test_a_vllm_shard_speculates_only_up_to_the_batch_threshold(model_dir, standin):
    shard = RolloutShard("s", str(model_dir), vllm_spec(model_dir), batch_threshold=2)
    llm = standin.LLM.instances[-1]
    assert [standin.draft_tokens(llm, b) for b in (1, 2, 3, 8)] == [3, 3, 0, 0]
    seen = set()
    tail = [Request(prompt=[1, 2, 3 + i], max_tokens=4 + 4 * i, seed=i, id=i, group=i) for i in range(6)]  # a long tail
    shard.start_rollout(1, tail)
    while shard.progress().busy:
        p = shard.progress()
        seen.add((p.running, p.speculating))
        time.sleep(0.002)
    assert not any(spec for running, spec in seen if running > 2)
    # the tail was verified speculatively, and the shard reads vLLM's speculation metrics
    # (drafts, accepted draft tokens) into tlt's counters (rounds, tokens emitted by rounds)
    inner, c = llm._torch.counters(), shard.engine.counters()
    assert c.verify_rounds > 0 and (c.verify_rounds, c.accepted_tokens) == (inner.verify_rounds, inner.accepted_tokens)
    assert shard.progress().acceptance_length == pytest.approx(inner.mean_acceptance_length)


def test_policy_weights_reach_vllm_and_change_what_it_samples(model_dir, standin):
    spec = vllm_spec(model_dir)
    shard = RolloutShard("s", str(model_dir), spec)
    before = rollout(shard, requests(temperature=0.0))
    new = {k: v.clone() for k, v in random_model(CONFIG, seed=99).state_dict().items()}
    shard.set_policy(1, new)
    after = rollout(shard, requests(temperature=0.0), step=2)
    reference = TorchEngine(random_model(CONFIG, seed=99), num_slots=8, max_model_len=300)
    expected = {r.id: r for r in reference.generate(requests(temperature=0.0))}
    assert {k: r.tokens for k, r in after.items()} == {k: r.tokens for k, r in expected.items()}
    assert {k: r.tokens for k, r in after.items()} != {k: r.tokens for k, r in before.items()}
    llm = standin.LLM.instances[-1]
    assert llm.rpc_calls == ["tlt_load_policy"] and llm.prefix_cache_resets == 1
    assert torch.equal(shard.model.state_dict()["model.embed_tokens.weight"], new["model.embed_tokens.weight"])


def test_drafter_weights_reach_the_vllm_draft_model_and_the_shard_trains_from_them(model_dir, standin):
    shard = RolloutShard("s", str(model_dir), vllm_spec(model_dir))
    trained = {k: v + 0.5 for k, v in shard.eagle.state_dict().items()}
    shard.set_drafter(3, trained)
    vllm_draft = standin.LLM.instances[-1]._torch.drafter
    for name, value in trained.items():
        assert torch.equal(vllm_draft.state_dict()[name], value), name
        assert torch.equal(shard.eagle.state_dict()[name], value), name
    assert shard.drafter_version == 3 and shard.trainer.version == 3


def test_lending_puts_vllm_to_sleep_and_new_work_wakes_it(model_dir, standin):
    shard = RolloutShard("s", str(model_dir), vllm_spec(model_dir))
    llm = standin.LLM.instances[-1]
    first = rollout(shard, requests())
    assert shard.lend() and shard.role == "drafter"
    assert llm.sleeps == [1] and not llm.kv_cache_allocated  # the KV cache is freed for drafter training
    llm.llm_engine.add_request("probe", {"prompt_token_ids": [1, 2]}, standin.SamplingParams(max_tokens=2))
    with pytest.raises(RuntimeError, match="asleep"):  # asleep, vLLM decodes nothing
        llm.llm_engine.step()
    llm.llm_engine.abort_request(["probe"])
    deadline = time.time() + 60
    while shard.progress().drafter_steps == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert shard.progress().drafter_steps > 0  # trained on its own rollouts with the torch copy
    again = rollout(shard, requests(), step=2)  # start_rollout reclaims: preempted, awake
    assert shard.role == "rollout" and llm.kv_cache_allocated
    assert {k: r.tokens for k, r in again.items()} == {k: r.tokens for k, r in first.items()}


def test_tail_consolidation_moves_unfinished_sequences_with_what_they_generated(model_dir, standin):
    spec = vllm_spec(model_dir, **{"algorithm.maxResponseTokens": 200})
    source = RolloutShard("a", str(model_dir), spec)
    target = RolloutShard("b", str(model_dir), spec)
    source.engine.submit(requests(n=4, max_tokens=200))
    for _ in range(5):
        source.engine.step()
    moved = source.engine.preempt(2)  # what RolloutShard.move_out hands the coordinator
    assert len(moved) == 2 and all(len(r.prefix) >= 5 and len(r.prefix_logprobs) == len(r.prefix) for r in moved)
    assert source.engine.counters().running == 2
    results = {r.id: r for r in target.engine.generate(moved)}
    for req in moved:
        res = results[req.id]
        assert res.tokens[:len(req.prefix)] == list(req.prefix) and res.prompt == list(req.prompt)
        assert len(res.tokens) <= 200 and len(res.logprobs) == len(res.tokens)


def test_drafter_hosts_and_the_threshold_probe_never_start_vllm(model_dir, standin):
    shard = RolloutShard("drafter-0", str(model_dir), vllm_spec(model_dir), engine="torch", max_slots=1)
    assert isinstance(shard.engine, TorchEngine) and standin.LLM.instances == []


# ---- refusal where vLLM cannot run ----

VLLM_JOB = {"apiVersion": "tlt.dev/v1alpha1", "kind": "ReasoningRLJob", "metadata": {"name": "vllm-job"},
            "spec": {"model": {"builtin": "tiny-arith"}, "task": {"name": "arith"},
                     "rollout": {"engine": "vllm", "gpusPerReplica": 1}}}


@pytest.mark.skipif(vllm_available(), reason="this machine can run vLLM")
def test_engine_problem_names_the_field_and_the_fix_on_this_machine():
    problem = engine_problem(spec_of(VLLM_JOB))
    assert "spec.rollout.engine is vllm" in problem and "rollout.engine: torch" in problem
    assert "worker-cuda" in problem and "\n" not in problem
    assert engine_problem(spec_of(VLLM_JOB, **{"rollout.engine": "torch"})) is None
    with pytest.raises(vllm_backend.EngineUnavailable):
        VLLMEngine({"max_model_len": 8}, vocab_size=8)


def _tlt(*args, cwd):
    command = [sys.executable, "-c", "import sys; from tlt.cli import main; sys.exit(main())", *args]  # as the `tlt` script
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.skipif(vllm_available(), reason="this machine can run vLLM")
def test_tlt_run_and_tlt_worker_refuse_vllm_here_in_one_line_before_any_work(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**VLLM_JOB, "spec": {**VLLM_JOB["spec"], "output": {"path": str(tmp_path / "out")}}}))
    run = _tlt("run", str(job), cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert "spec.rollout.engine is vllm" in run.stderr and "rollout.engine: torch" in run.stderr
    assert not (tmp_path / "out").exists()  # nothing started
    pod = _tlt("worker", "--config", str(job), "--role", "rollout", "--index", "0", "--metrics-port", "0", cwd=tmp_path)
    assert pod.returncode == 2, pod.stderr  # a configuration error: the operator does not retry it
    assert "spec.rollout.engine is vllm" in pod.stderr and "Traceback" not in pod.stderr


def test_validate_accepts_a_vllm_job_and_render_runs_it_on_the_cuda_image(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(VLLM_JOB))
    assert _tlt("validate", str(job), cwd=tmp_path).returncode == 0
    rendered = _tlt("render", str(job), cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    pods = [d for d in yaml.safe_load_all(rendered.stdout) if d and d.get("kind") == "Pod"]
    rollout_pods = [p for p in pods if "-rollout-" in p["metadata"]["name"]]
    assert rollout_pods and all("worker-cuda" in p["spec"]["containers"][0]["image"] for p in rollout_pods)


# ---- the real vLLM (CUDA and the gpu extra) ----

@pytest.mark.gpu
@pytest.mark.skipif(not vllm_available(), reason="needs CUDA and vLLM (pip install 'tlt[gpu]')")
def test_real_vllm_shard_takes_weight_updates_and_frees_memory_asleep(tmp_path):
    cfg = ModelConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    save_model(random_model(cfg, seed=1), tmp_path / "m")
    spec = vllm_spec(tmp_path / "m", **{"rollout.gpuMemoryUtilization": 0.3})
    shard = RolloutShard("s", str(tmp_path / "m"), spec, batch_threshold=2)
    greedy = lambda: requests(n=4, temperature=0.0)  # noqa: E731
    first = rollout(shard, greedy())
    other = {k: v.clone() for k, v in random_model(cfg, seed=2).state_dict().items()}
    shard.set_policy(1, other)
    changed = rollout(shard, greedy(), step=2)
    assert {k: r.tokens for k, r in changed.items()} != {k: r.tokens for k, r in first.items()}
    shard.set_policy(2, {k: v.clone() for k, v in random_model(cfg, seed=1).state_dict().items()})
    back = rollout(shard, greedy(), step=3)
    assert {k: r.tokens for k, r in back.items()} == {k: r.tokens for k, r in first.items()}
    free_before = torch.cuda.mem_get_info()[0]
    shard.engine.sleep()
    freed = torch.cuda.mem_get_info()[0] - free_before
    assert freed > 0.5 * 0.3 * torch.cuda.mem_get_info()[1] * 0.5  # most of its KV cache is released
    shard.engine.wake()
    assert {k: r.tokens for k, r in rollout(shard, greedy(), step=4).items()} == {k: r.tokens for k, r in first.items()}
