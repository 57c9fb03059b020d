"""The embedded RL loop end to end: a real (tiny) job on Ray actors, checkpoints, resume.

Real: Ray (local), the torch engine, the trainer, the drafter, the elastic policy.
The model is the built-in micro model (2 layers, hidden 32), bootstrapped in seconds
into a temporary cache.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tlt.api.load import parse_job
from tlt.coordinator.loop import EmbeddedRun, latest_checkpoint
from tlt.eval.evaluate import unpack_solved
from tlt.report import read_records

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def manifest(model: Path, out: Path, *, steps=2, speculation="adaptive", elastic=True) -> dict:
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    spec = doc["spec"]
    spec["model"] = {"path": str(model)}
    spec["algorithm"].update(steps=steps, promptsPerStep=4, groupSize=2, maxResponseTokens=40, miniBatchSize=8)
    spec["eval"] = {"everySteps": 1, "numPrompts": 6}
    spec["rollout"]["maxBatchSize"] = 8
    spec["speculative"] = {"mode": speculation, "batchThreshold": 4, "strategies": ["3_1_3"]}
    spec["elasticity"] = {"lendIdle": elastic, "consolidateTail": {"enabled": elastic, "threshold": 2}}
    spec["output"] = {"path": str(out)}
    return doc


def lending_workload(doc: dict) -> dict:
    """Three prompt groups over two shards of two slots: rollout-0 decodes two groups one
    after the other, rollout-1 one, so a shard drains while the other still decodes (up
    to 400 tokens a response) and is lent to drafter training."""
    doc["spec"]["algorithm"].update(promptsPerStep=3, miniBatchSize=6, maxResponseTokens=400)
    doc["spec"]["rollout"]["maxBatchSize"] = 2
    return doc


@pytest.fixture
def fast_polls(monkeypatch):
    """The control loop looks at the shards every 20 ms (0.2 s in a real run) so that it sees a
    drained shard within this micro model's sub-second rollouts."""
    from tlt.coordinator import loop

    monkeypatch.setattr(loop, "POLL_SECONDS", 0.02)


def test_short_run_trains_lends_and_writes_everything(micro_model, tmp_path, fast_polls, monkeypatch):
    from tlt.coordinator.actors import WorkerPool

    out = tmp_path / "run"
    doc = lending_workload(manifest(micro_model, out))
    # Nearly greedy, this model runs every response to the limit: rollout-0 then decodes
    # twice the tokens rollout-1 does, which leaves rollout-1 idle for about half of a rollout.
    doc["spec"]["algorithm"]["temperature"] = 0.1
    tune = WorkerPool.tune_threshold

    def slow_tune(pool):  # a threshold probe that takes a while: part of the step, not after it
        time.sleep(0.5)
        return tune(pool)

    monkeypatch.setattr(WorkerPool, "tune_threshold", slow_tune)
    summary = EmbeddedRun(parse_job(doc), progress=False).run()

    records = read_records(out / "metrics.jsonl")
    lengths = [n for r in records if r["kind"] == "lengths" for group in r["groups"] for n in group]
    assert lengths == [400] * 12, f"the workload this test needs: every response at the limit, got {lengths}"
    steps = [r for r in records if r["kind"] == "step"]
    assert [s["step"] for s in steps] == [1, 2]
    assert all(s["time_rollout"] > 0 and s["time_train"] > 0 for s in steps)
    # tlt's own work between steps (drafter sync, `auto` threshold) counts in the step's time
    assert all(s["time_sync"] >= 0.5 for s in steps), [s["time_sync"] for s in steps]
    assert all(s["step_seconds"] >= s["time_rollout"] + s["time_train"] + s["time_sync"] for s in steps)
    evals = [e for e in records if e["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, 1, 2]
    # which held-out prompts each evaluation solved, for paired comparisons between steps
    assert all(unpack_solved(e["solved"], e["prompts"]).count(True) == round(e["accuracy"] * e["prompts"]) for e in evals)
    roles = {(r["worker"], r["role"]) for r in records if r["kind"] == "role"}
    assert ("rollout-0", "rollout") in roles and ("trainer-0", "trainer") in roles
    # lending: a drained rollout shard became a drafter trainer while the other still decoded...
    lent = {worker for worker, role in roles if role == "drafter"}
    assert lent and lent <= {"rollout-0", "rollout-1"}, roles
    # ...for part of a rollout: at most one of the two shards, never the whole rollout
    assert any(0 < s["lent_fraction"] < 0.5 for s in steps), [s["lent_fraction"] for s in steps]
    assert all(0 <= s["lent_fraction"] < 0.5 for s in steps)
    # Whether the lent shard finishes a drafter micro-step before it is reclaimed depends on
    # this machine's load (the in-process lending test below checks that training happens);
    # a sync makes at most one new drafter version per step.
    versions = [s["drafter_version"] for s in steps]
    assert versions == sorted(versions) and all(v <= s["step"] for v, s in zip(versions, steps)), versions
    # speculation in the tail at every step: a 3_1_3 round emits 1 to 4 tokens
    assert all(1.0 <= s["acceptance_length"] <= 4.0 for s in steps), [s["acceptance_length"] for s in steps]
    assert summary["steps"] == 2 and "accuracy_last" in summary
    assert "Worker roles over time" in (out / "report.html").read_text()
    assert latest_checkpoint(out).step == 2
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(out / "policy"))
    assert (out / "drafter" / "config.json").is_file()


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "policy" / "model.safetensors"))


def resume_job(model: Path, out: Path, speculation: str, elastic: bool):
    doc = lending_workload(manifest(model, out, speculation=speculation, elastic=elastic))
    doc["spec"]["eval"] = {"everySteps": 0, "numPrompts": 1}
    # The micro model answers nothing right: without a length penalty every reward is 0,
    # every advantage 0, and the trained weights would not depend on what was sampled.
    doc["spec"]["algorithm"]["overlongPenalty"] = {"enabled": True, "bufferTokens": 360}
    return parse_job(doc)


def digests(folder: Path) -> dict:
    """What was sampled, per step (one digest per sequence)."""
    return {r["step"]: r["digests"] for r in read_records(folder / "metrics.jsonl") if r["kind"] == "rollouts"}


@pytest.fixture(scope="module")
def uninterrupted_plain(micro_model, tmp_path_factory):
    """The reference: two steps without a stop, speculation and elasticity off."""
    out = tmp_path_factory.mktemp("straight")
    EmbeddedRun(resume_job(micro_model, out, "off", False), progress=False).run()
    return _weights(out), digests(out)


@pytest.mark.parametrize("speculation,elastic", [("off", False), ("adaptive", True)],
                         ids=["plain", "speculation-and-lending"])
def test_resumed_run_has_the_weights_of_an_uninterrupted_one(micro_model, tmp_path, fast_polls,
                                                             uninterrupted_plain, speculation, elastic):
    """Against the uninterrupted plain run: speculation never changes what is sampled and
    lending trains only the drafter, so a resumed run with both on samples the same
    tokens at every step and trains the same policy."""
    resumed = tmp_path / "resumed"
    job = resume_job(micro_model, resumed, speculation, elastic)
    EmbeddedRun(job, progress=False, max_steps=1).run()  # stops after step 1, as if killed
    assert latest_checkpoint(resumed).step == 1
    EmbeddedRun(job, progress=False).run()

    weights, sampled = uninterrupted_plain
    assert digests(resumed) == sampled and sorted(sampled) == [1, 2]
    got = _weights(resumed)
    assert got.keys() == weights.keys()
    # Plain, the resumed run is bit for bit the uninterrupted one. Speculating, the engine's
    # logprobs (the update's old logprobs) come from a verify forward of several tokens
    # instead of one, equal to float32 rounding. Adam turns a rounding-sized change of a
    # near-zero gradient into a visible step for that weight, so the bound is relative to
    # what the updates moved any weight (a different rollout would differ by that much).
    start = load_file(str(micro_model / "model.safetensors"))
    moved = max((weights[n] - start[n]).abs().max().item() for n in weights if n in start)
    assert moved > 0
    atol = 0.0 if speculation == "off" else 1e-2 * moved
    for name in weights:
        gap = (weights[name] - got[name]).abs().max().item()
        assert gap <= atol, f"{name} differs after resume by {gap:.3g} (the updates moved {moved:.3g})"
    if speculation != "off":
        records = read_records(resumed / "metrics.jsonl")
        steps = [r for r in records if r["kind"] == "step"]
        assert [s["step"] for s in steps] == [1, 2] and all(s["acceptance_length"] >= 1.0 for s in steps)
        assert any(r["kind"] == "role" and r["role"] == "drafter" for r in records), "no shard was lent"
        assert any(r["kind"] == "run" and r.get("resumed_from") == 1 for r in records)


def test_killing_tlt_run_mid_step_and_rerunning_resumes_without_loss(micro_model, tmp_path):
    out = tmp_path / "killed"
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(manifest(micro_model, out, steps=3)))
    cmd = [sys.executable, "-m", "tlt.cli", "run", str(job_file), "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while latest_checkpoint(out) is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert latest_checkpoint(out) is not None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: Ray's workers too
    proc.wait()
    killed_at = latest_checkpoint(out).step

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    records = read_records(out / "metrics.jsonl")
    assert max(r["step"] for r in records if r["kind"] == "step") == 3
    assert any(r["kind"] == "run" and r.get("resumed_from") == killed_at for r in records)
    assert latest_checkpoint(out).step == 3


def test_prompts_continue_from_a_saved_position_in_the_same_order(micro_model):
    from transformers import AutoTokenizer

    from tlt.coordinator.prompts import PromptSource

    job = parse_job(manifest(micro_model, Path("/tmp/unused")))
    source = PromptSource(job.spec, AutoTokenizer.from_pretrained(str(micro_model)))
    first, position = source.take(0, 5)
    second, _ = source.take(position, 7)
    both, _ = source.take(0, 12)
    assert first + second == both
    assert len(set(item.prompt for item in both)) == 12
    beyond, _ = source.take(len(source.train) - 2, 4)  # wraps into a reshuffled epoch
    assert len(beyond) == 4


def test_a_jsonl_dataset_with_the_math_verifier_runs(micro_model, tmp_path):
    import json

    from tlt.tasks import get_task

    task = get_task("arith")
    data = tmp_path / "train.jsonl"
    # A real-data layout: other field names; answers scored by the math verifier
    # (the task's traces end in "ans=NN", whose last number is the answer).
    data.write_text("".join(json.dumps({"question": p.prompt, "solution": p.answer}) + "\n"
                            for p in task.problems("train", 40, seed=1)))
    doc = manifest(micro_model, tmp_path / "run", steps=1, elastic=False)
    doc["spec"].pop("task")
    doc["spec"]["data"] = {"path": str(data), "promptField": "question", "answerField": "solution", "evalFraction": 0.25}
    doc["spec"]["reward"] = {"verifier": "math"}
    EmbeddedRun(parse_job(doc), progress=False).run()
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["prompts"] for r in evals] == [6, 6]  # numPrompts 6 of the 10 held out
    assert [r["step"] for r in records if r["kind"] == "step"] == [1]


def test_the_coordinator_is_woken_when_a_shard_drains_not_by_each_finished_sequence(micro_model):
    """Finished sequences are taken at the control interval; the waiter returns when decoding ends,
    so the coordinator lends the drained shard (and sees the rollout's end) at once."""
    import threading

    from tlt.coordinator.shard import RolloutShard
    from tlt.engine.types import Request

    job = parse_job(manifest(micro_model, Path("/tmp/unused")))
    shard = RolloutShard("rollout-0", str(micro_model), job.spec, batch_threshold=2)
    assert not shard.wait_for_drain(0.01)  # no rollout: nothing to wake for
    gate, hold, step = threading.Event(), threading.Event(), shard.engine.step

    def gated_step():  # after a sequence finished, the decode loop waits for the gate
        if hold.is_set():
            gate.wait(60)
        done = step()
        if done:
            hold.set()
        return done

    shard.engine.step = gated_step
    shard.start_rollout(1, [Request(prompt=[1, 5, 6, 7], max_tokens=4 + 30 * i, temperature=1.0, seed=i, id=i)
                            for i in range(2)])
    taken = []
    while not taken:  # the short sequence finished while the long one is still decoding
        assert not shard.wait_for_drain(0.01), "a finished sequence must not wake the waiter"
        taken += shard.take_results()
    assert [r.id for r in taken] == [0] and shard.progress().busy
    gate.set()
    assert shard.wait_for_drain(60), "a drained shard must wake the waiter"
    assert [r.id for r in shard.take_results()] == [1]
    assert shard.wait_for_drain(0.01)  # ended: the waiter sees it at once (the pool then stops waiting on it)
    gate.clear()
    shard.add_requests([Request(prompt=[1, 5, 6, 7], max_tokens=30, temperature=1.0, seed=9, id=9)])
    assert not shard.wait_for_drain(0.01)  # work again (tail consolidation moved some here): not drained
    gate.set()
    assert shard.wait_for_drain(60)
    assert [r.id for r in shard.take_results()] == [9]


def test_a_drained_shard_lent_to_drafter_training_trains_and_is_reclaimed_at_once(micro_model):
    import threading

    import torch

    from tlt.coordinator.shard import RolloutShard
    from tlt.engine.types import Request

    job = parse_job(manifest(micro_model, Path("/tmp/unused")))
    shard = RolloutShard("rollout-0", str(micro_model), job.spec, batch_threshold=2)
    before = {k: v.clone() for k, v in shard.eagle.state_dict().items()}
    shard.start_rollout(1, [Request(prompt=[1, 5, 6, 7], max_tokens=30, temperature=1.0, seed=i, id=i) for i in range(6)])
    while shard.progress().busy:
        threading.Event().wait(0.05)
    assert len(shard.take_results()) == 6
    assert shard.lend(), "a drained shard with rollouts in its buffer can be lent"
    assert shard.progress().role == "drafter"
    deadline = threading.Event()
    for _ in range(600):
        if shard.progress().drafter_steps >= 2:
            break
        deadline.wait(0.05)
    shard.reclaim()  # preempted within one micro-step
    assert shard.role == "rollout"
    version, steps, state = shard.drafter_report()
    assert steps >= 2
    assert any(not torch.equal(before[k], state[k]) for k in before), "the drafter did not move"
    shard.set_drafter(version + 1, before)  # the averaged version comes back
    assert shard.drafter_report()[1] == 0
    assert all(torch.equal(before[k], v) for k, v in shard.eagle.state_dict().items())


def test_auto_measures_the_new_drafter_when_no_shard_speculated_in_the_last_rollout(micro_model, tmp_path):
    """A threshold the last measurement set too low keeps speculation off, so the drafter trained since
    would never be measured (the quickstart's sat at `auto` = 1 for two steps): the pool then measures
    the version the shards run on the start-up probe's prompts."""
    import ray

    from tlt.coordinator.actors import WorkerPool
    from tlt.coordinator.shard import auto_threshold
    from tlt.speculative.adaptive import Strategy

    doc = manifest(micro_model, tmp_path / "run")
    doc["spec"]["speculative"]["batchThreshold"] = "auto"
    spec = parse_job(doc).spec
    pool = WorkerPool(spec, str(micro_model))
    try:
        prompts, stops = [[1, 5, 6, 7], [1, 9, 6]], [2]
        pool.calibrate_threshold(prompts, stops)
        pool.start_shards(0)  # speculation off: no rollout measures the drafter
        shard = next(iter(pool.shards.values()))
        measured = ray.get(shard.measure_acceptance.remote(prompts, stops, Strategy(3, 1, 3)))
        assert measured is not None and measured >= 1.0
        assert pool.tune_threshold() == auto_threshold(spec, pool._costs, measured) >= 1
    finally:
        pool.shutdown()
