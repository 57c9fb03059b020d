"""The adaptive drafter: data, packing, spot training, checkpoints, averaging, metrics."""

from __future__ import annotations

import threading

import pytest
import torch

from tlt.drafter import (DrafterMetrics, RolloutBuffer, Sample, SpotTrainer, TrainConfig, average_replicas,
                         loss_terms, make_windows, pack, prefill_hidden, weighted_average)
from tlt.drafter import checkpoint as ckpt_mod
from tlt.drafter.checkpoint import AsyncCheckpointer
from tlt.drafter.packing import micro_batches, training_batches
from tlt.models import ModelConfig, random_model, save_model
from tlt.models.drafter import EagleDrafter

pytestmark = pytest.mark.timeout(300)


def tiny_target(dtype=torch.float64, seed=0):
    cfg = ModelConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return random_model(cfg, seed=seed, dtype=dtype, init_std=0.2)


def random_samples(n, seed=0, vocab=48, max_prompt=6, max_resp=40):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = int(torch.randint(2, max_prompt + 1, (1,), generator=g))
        r = int(torch.randint(1, max_resp + 1, (1,), generator=g))
        toks = torch.randint(0, vocab, (p + r,), generator=g).tolist()
        out.append(Sample(tuple(toks), p))
    return out


def state_equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and set(a) == set(b)


# ---------------------------------------------------------------- buffer and windows

def test_buffer_keeps_current_and_previous_step_only():
    buf = RolloutBuffer(capacity=100, keep_steps=2)
    for step in range(3):
        buf.start_step(step)
        buf.extend([Sample((1, 2, step), 1)] * 3)
    assert buf.steps == [1, 2]
    assert sorted({s.tokens[-1] for s in buf.samples()}) == [1, 2]
    assert buf.dropped == 3


def test_buffer_over_capacity_drops_oldest_first():
    buf = RolloutBuffer(capacity=4, keep_steps=2)
    buf.start_step(0)
    buf.extend([Sample((0, i), 1) for i in range(3)])
    buf.start_step(1)
    buf.extend([Sample((1, i), 1) for i in range(3)])
    kept = [s.tokens for s in buf.samples()]
    assert kept == [(0, 2), (1, 0), (1, 1), (1, 2)]
    assert buf.dropped == 2


def test_buffer_state_roundtrips():
    buf = RolloutBuffer(capacity=10)
    buf.extend([Sample((3, 4, 5), 2, policy_version=7)], step=4)
    again = RolloutBuffer.from_state(buf.state())
    assert again.samples() == buf.samples() and again.steps == [4]


def test_windows_hold_at_most_n_response_tokens_and_cover_every_response_token():
    target = tiny_target()
    samples = [Sample(tuple(range(5)) + tuple(i % 40 for i in range(23)), 5)]
    hidden = prefill_hidden(target, samples)
    wins = make_windows(samples, hidden, max_response_tokens=10)
    assert [int(w.loss_mask.sum()) for w in wins] == [10, 10, 3]
    assert all(int(w.loss_mask.sum()) <= 10 for w in wins)
    # every response position is a target exactly once, the prompt never
    covered = torch.cat([w.positions[w.loss_mask] for w in wins]).tolist()
    assert covered == list(range(5, 28))
    # a later window starts one token early so its first response token has a predecessor
    assert int(wins[1].positions[0]) == 14 and not bool(wins[1].loss_mask[0])
    # hidden states are sliced from the whole-sequence prefill, not recomputed per window
    assert torch.equal(wins[1].hidden, hidden[0][14:25])


def test_prefill_hidden_equals_a_single_sequence_forward():
    target = tiny_target()
    samples = random_samples(5, seed=1)
    hidden = prefill_hidden(target, samples, max_batch_tokens=64)
    for s, h in zip(samples, hidden):
        alone = target.hidden(torch.tensor([s.tokens]))[0]
        assert torch.allclose(h, alone, atol=1e-10)


# ---------------------------------------------------------------- packing

def test_a_packed_micro_batch_gives_the_loss_and_gradients_of_its_windows_trained_alone():
    target = tiny_target()
    samples = random_samples(7, seed=2)
    windows = make_windows(samples, prefill_hidden(target, samples), max_response_tokens=16)
    for w in windows[::2]:
        w.loss_mask[:] = True  # a window whose every token is a target (its first has no predecessor)
    drafter = EagleDrafter.for_target(target, seed=3, init_std=0.2)

    def loss_and_grad(batches):
        drafter.zero_grad()
        terms = [loss_terms(drafter, b) for b in batches]
        s, n = sum(t[0] for t in terms), sum(t[1] for t in terms)
        (s / n).backward()
        return float((s / n).detach()), [p.grad.clone() for p in drafter.parameters()]

    packed = micro_batches(windows, batch_tokens=64)
    assert len(packed) < len(windows) and all(b.tokens.shape[1] <= 64 for b in packed)  # it did pack
    alone = [pack([w]) for w in windows]
    assert sum(b.num_targets for b in packed) == sum(b.num_targets for b in alone)
    lp, gp = loss_and_grad(packed)
    la, ga = loss_and_grad(alone)
    assert lp == pytest.approx(la, rel=1e-10)
    for a, b in zip(gp, ga):
        assert torch.allclose(a, b, atol=1e-10)


def test_packed_windows_do_not_attend_across_windows():
    target = tiny_target()
    samples = random_samples(3, seed=4)
    windows = make_windows(samples, prefill_hidden(target, samples))
    drafter = EagleDrafter.for_target(target, seed=3, init_std=0.2)
    batch = pack(windows)
    n0, n1 = len(windows[0]), len(windows[1])
    # changing the second window's tokens changes neither the first's nor the third's predictions
    pred = drafter.features(batch.tokens[:, 1:], batch.hidden[:, :-1], batch.positions[:, :-1],
                            attn_mask=batch.varlen)
    tokens2 = batch.tokens.clone()
    tokens2[0, n0 + 1:n0 + n1] = (tokens2[0, n0 + 1:n0 + n1] + 1) % 48
    pred2 = drafter.features(tokens2[:, 1:], batch.hidden[:, :-1], batch.positions[:, :-1],
                             attn_mask=batch.varlen)
    assert torch.equal(pred[0, :n0], pred2[0, :n0])
    assert torch.equal(pred[0, n0 + n1:], pred2[0, n0 + n1:])
    assert not torch.equal(pred[0, n0:n0 + n1], pred2[0, n0:n0 + n1])


# ---------------------------------------------------------------- spot trainer

def make_trainer(target, batches, **cfg):
    drafter = EagleDrafter.for_target(target, seed=5, init_std=0.1)
    trainer = SpotTrainer(drafter, TrainConfig(**{"lr": 3e-3, "warmup_steps": 3, "grad_accum": 2,
                                                  "checkpoint_every": 0, **cfg}))
    trainer.set_data(batches)
    return trainer


@pytest.fixture(scope="module")
def random_batches():
    target = tiny_target(torch.float32)
    samples = random_samples(24, seed=6)
    return target, training_batches(target, samples, max_response_tokens=32, batch_tokens=192)


def test_preemption_returns_within_one_micro_step_and_resumes_with_identical_weights(random_batches):
    target, batches = random_batches
    ref = make_trainer(target, batches)
    ref.run(max_steps=6)

    spot = make_trainer(target, batches)
    preempt = threading.Event()
    seen = []

    def hook(tr):
        seen.append(tr.micro_steps_total)
        if tr.micro_steps_total == 5:  # mid accumulation group (grad_accum=2)
            preempt.set()

    spot.on_micro_step = hook
    result = spot.run(preempt, until_step=6)
    assert result.reason == "preempted"
    assert spot.micro_steps_total == 5  # not one micro-step more after the event
    assert spot.state.preemptions == 1 and spot.state.micro == 1
    preempt.clear()
    assert spot.run(preempt, until_step=6).reason == "done"
    assert state_equal(spot.drafter.state_dict(), ref.drafter.state_dict())


def test_preemption_from_another_thread_stops_within_one_micro_step(random_batches):
    target, batches = random_batches
    trainer = make_trainer(target, batches)
    preempt = threading.Event()
    started = threading.Event()
    trainer.on_micro_step = lambda tr: started.set() if tr.micro_steps_total >= 2 else None
    results = []
    worker = threading.Thread(target=lambda: results.append(trainer.run(preempt)))
    worker.start()
    assert started.wait(120)
    at_set = trainer.micro_steps_total
    preempt.set()
    worker.join(120)
    assert not worker.is_alive()
    assert results[0].reason == "preempted"
    assert trainer.micro_steps_total <= at_set + 1


def test_restart_resumes_from_the_last_checkpoint(random_batches, tmp_path):
    target, batches = random_batches
    ref = make_trainer(target, batches)
    ref.run(max_steps=7)

    cfg = TrainConfig(lr=3e-3, warmup_steps=3, grad_accum=2, checkpoint_every=2)
    first = SpotTrainer.restore(tmp_path, EagleDrafter.for_target(target, seed=5, init_std=0.1), cfg)
    first.set_data(batches)
    first.run(max_steps=5)  # checkpoints at steps 2 and 4; step 5 is lost in the "crash"
    first.checkpointer.flush(60)
    del first

    again = SpotTrainer.restore(tmp_path, EagleDrafter.for_target(target, seed=99, init_std=0.1), cfg)
    assert again.state.step == 4
    again.set_data(batches)
    again.run(until_step=7)
    again.checkpointer.close(60)
    assert state_equal(again.drafter.state_dict(), ref.drafter.state_dict())


def test_training_does_not_wait_for_a_slow_disk(random_batches, tmp_path, monkeypatch):
    target, batches = random_batches
    release = threading.Event()
    real_write = ckpt_mod.write_state

    def slow_write(folder, state):
        release.wait(120)
        return real_write(folder, state)

    monkeypatch.setattr(ckpt_mod, "write_state", slow_write)
    trainer = make_trainer(target, batches, checkpoint_every=1)
    trainer.checkpointer = AsyncCheckpointer(tmp_path)
    result = trainer.run(max_steps=4)  # four checkpoints submitted while the disk is "stuck"
    assert result.reason == "done" and trainer.state.step == 4
    assert trainer.checkpointer.written == 0
    release.set()
    trainer.checkpointer.close(60)
    assert ckpt_mod.read_state(tmp_path)["step"] == 4  # the newest snapshot won


def test_the_online_rate_warms_up_then_decays_as_an_inverse_square_root(random_batches):
    cfg = TrainConfig(lr=1e-2, warmup_steps=20, decay_steps=30)
    assert cfg.lr_at(0) == pytest.approx(5e-4) and cfg.lr_at(19) == pytest.approx(1e-2)
    assert cfg.lr_at(20) == pytest.approx(1e-2) and cfg.lr_at(110) == pytest.approx(5e-3)  # half after 90 more
    assert all(cfg.lr_at(s) > cfg.lr_at(s + 1) > 0 for s in range(20, 2000))
    assert TrainConfig(lr=1e-2, warmup_steps=20).lr_at(5000) == 1e-2  # decay_steps=0: constant
    # the trainer applies it, step by step, across runs (a lend is cut into many runs)
    target, batches = random_batches
    trainer = make_trainer(target, batches, lr=1e-2, warmup_steps=2, decay_steps=4, grad_accum=1)
    trainer.run(max_steps=3)
    trainer.run(max_steps=4)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * (4 / (4 + 6 - 2)) ** 0.5)


def test_loss_decreases_on_the_builtin_task():
    from tlt.drafter.measure import plain_generate
    from tlt.drafter.warmup import task_prompts, tokenizer_for
    from tlt.models.resolve import load_named

    folder, target = load_named("micro-arith")
    tok = tokenizer_for(folder)
    prompts = task_prompts("arith", 48, 3, tok, task_options={"max_response_tokens": 128})
    outputs = plain_generate(target, prompts, 48, temperature=1.0, stop_ids=[tok.eos_token_id], batch_size=48)
    samples = [Sample.of(p, o) for p, o in zip(prompts, outputs)]
    train, held = samples[:40], samples[40:]
    batches = training_batches(target, train, batch_tokens=512)
    held_batch = training_batches(target, held, batch_tokens=1 << 20)[0]
    trainer = SpotTrainer(EagleDrafter.for_target(target), TrainConfig(lr=3e-3, warmup_steps=5))
    trainer.set_data(batches)

    def held_loss():
        with torch.no_grad():
            s, n = loss_terms(trainer.drafter, held_batch)
        return float(s / n)

    before = held_loss()
    trainer.run(max_steps=40)
    after = held_loss()
    assert after < 0.9 * before
    assert trainer.state.tokens > 0


# ---------------------------------------------------------------- elastic data parallel

def test_average_equals_the_hand_computed_weighted_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.0]])}
    b = {"w": torch.tensor([3.0, -2.0]), "b": torch.tensor([[4.0]])}
    c = {"w": torch.tensor([0.0, 0.0]), "b": torch.tensor([[1.0]])}
    avg = weighted_average([a, b, c], [1, 3, 4])
    assert torch.allclose(avg["w"], torch.tensor([(1 + 9 + 0) / 8, (2 - 6 + 0) / 8]))
    assert torch.allclose(avg["b"], torch.tensor([[(0 + 12 + 4) / 8]]))


def test_replicas_average_weighted_by_steps_and_untrained_ones_do_not_count():
    reports = [
        (2, {"w": torch.tensor([2.0, 0.0])}),
        (6, {"w": torch.tensor([0.0, 4.0])}),  # went back to rollout: its work still counts
        (0, {"w": torch.tensor([9.0, 9.0])}),  # lent late: nothing trained in this version
        (5, None),  # a worker without a trainable drafter (n-gram)
    ]
    assert torch.allclose(average_replicas(reports)["w"], torch.tensor([0.5, 3.0]))
    assert average_replicas([(0, {"w": torch.zeros(2)}), (3, None)]) is None  # nothing new: no new version


def test_replica_trainers_average_into_the_next_version(random_batches):
    target, batches = random_batches
    base = make_trainer(target, batches)
    version, weights = 0, base.drafter.state_dict()
    replicas = []
    for worker, steps in (("a", 1), ("b", 3)):
        tr = make_trainer(target, batches[::-1] if worker == "b" else batches)
        tr.start_version(version, weights)
        tr.run(max_steps=steps)
        assert tr.steps_in_version == steps
        replicas.append(tr)
    merged = average_replicas((r.steps_in_version, r.drafter.state_dict()) for r in replicas)
    a, b = (r.drafter.state_dict() for r in replicas)
    for k in a:
        assert torch.allclose(merged[k], (a[k] * 1 + b[k] * 3) / 4, atol=1e-6)


# ---------------------------------------------------------------- the replica in a job: a rollout shard

@pytest.fixture(scope="module")
def policy_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("policy")
    save_model(tiny_target(torch.float32), folder)
    return folder


def rollout_shard(folder, name, **changes):
    from specs import manifest, spec_of

    from tlt.coordinator.shard import RolloutShard

    spec = spec_of(manifest(), **{"model": {"path": str(folder), "dtype": "float32"}, "rollout.engine": "torch",
                                  "rollout.maxBatchSize": 8, "algorithm.maxResponseTokens": 32,
                                  "drafter.windowTokens": 32, **changes})
    return RolloutShard(name, str(folder), spec, batch_threshold=2)


def test_a_new_version_loads_into_the_shards_engine_and_is_counted(policy_folder):
    from tlt.drafter import drafter_metrics

    shard = rollout_shard(policy_folder, "push-0")
    new = EagleDrafter.for_target(shard.model, seed=2).state_dict()
    metrics = drafter_metrics()
    pushes = metrics.pushes._value.get()
    shard.set_drafter(3, new)
    assert state_equal(shard.engine.drafter.state_dict(), new)
    assert metrics.pushes._value.get() == pushes + 1
    assert metrics.version._value.get() == 3


def test_lent_shard_trains_until_reclaimed_and_reports_its_steps(policy_folder):
    from prometheus_client import generate_latest

    from tlt.engine.metrics import REGISTRY

    shard = rollout_shard(policy_folder, "lent-0")
    for sample in random_samples(12, seed=9):
        shard.buffer.add(sample, 0)
    trained = threading.Event()
    shard.trainer.on_micro_step = lambda tr: trained.set() if tr.state.step >= 2 else None
    assert shard.lend() and shard.role == "drafter"
    assert trained.wait(120)
    shard.reclaim()  # preempted within one micro-step
    assert shard.role == "rollout" and not shard._train_thread
    version, steps, weights = shard.drafter_report()
    assert version == 0 and steps >= 2
    merged = average_replicas([(steps, weights)])
    assert state_equal(merged, weights)  # the only replica: the average is its weights
    # what the pod serves on /metrics: the shard's drafter training
    text = generate_latest(REGISTRY).decode()
    assert f'tlt_drafter_steps_total{{worker="lent-0"}} {float(shard.trainer.state.step)}' in text
    assert f'tlt_drafter_tokens_trained_total{{worker="lent-0"}} {float(shard.trainer.state.tokens)}' in text
    # the new version comes back: lent again, it trains on from the averaged weights
    shard.set_drafter(1, merged)
    assert shard.drafter_report()[1] == 0 and shard.trainer.version == 1
    trained.clear()
    shard.trainer.on_micro_step = lambda tr: trained.set()
    assert shard.lend()
    assert trained.wait(120)
    shard.reclaim()
    assert shard.trainer.version == 1 and shard.drafter_report()[1] >= 1
    # its rate decays over all its steps, across versions (a constant one held a fresh drafter lower)
    config, step = shard.trainer.config, shard.trainer.state.step
    assert shard.trainer.optimizer.param_groups[0]["lr"] == config.lr_at(step - 1)
    assert config.lr_at(config.warmup_steps + 90) < 0.6 * shard.spec.drafter.learning_rate


def test_a_lent_shard_prefills_each_buffered_sequence_once_across_preempted_lends(policy_folder, monkeypatch):
    import tlt.coordinator.shard as shard_mod

    shard = rollout_shard(policy_folder, "prep-0")
    prefilled = []

    def counting_prefill(target, samples, *args):
        assert (len(samples) == 1 or len(samples) * max(len(s.tokens) for s in samples) <= 128)  # chunks as set
        if not prefilled:
            shard._preempt.set()  # reclaimed while its first chunk is prefilled
        prefilled.extend(samples)
        return prefill(target, samples, *args)

    prefill = shard_mod.prefill_hidden
    monkeypatch.setattr(shard_mod, "prefill_hidden", counting_prefill)
    monkeypatch.setattr(shard_mod, "PREFILL_TOKENS", 128)
    samples = random_samples(24, seed=4)
    shard.buffer.extend(samples, 0)
    assert shard._training_data() is None  # preempted after one chunk
    assert 0 < len(prefilled) < len(samples)
    shard._preempt.clear()
    batches = shard._training_data()  # the next lend goes on where the last one stopped
    assert len(prefilled) == len(samples) and {id(s) for s in prefilled} == {id(s) for s in samples}
    windows = shard._windows
    expected = training_batches(shard.model, samples, max_response_tokens=32)
    assert sum(int(b.loss_mask.sum()) for b in batches) == sum(int(b.loss_mask.sum()) for b in expected)
    more = random_samples(4, seed=5)
    shard.buffer.extend(more, 1)  # the next step's sequences: only they are prefilled
    shard._training_data()
    assert len(prefilled) == len(samples) + len(more)
    assert all(windows[id(s)] is shard._windows[id(s)] for s in samples)


def test_a_torch_shard_trains_its_drafter_on_the_states_its_decode_computed(policy_folder, monkeypatch):
    """No target prefill in a lend: the windows hold the hidden states the rollout decoded with."""
    import tlt.coordinator.shard as shard_mod
    from tlt.engine import Request

    shard = rollout_shard(policy_folder, "decoded-0")
    prompts = [s.tokens[:s.prompt_len] for s in random_samples(8, seed=12)]
    shard.start_rollout(0, [Request(prompt=list(p), max_tokens=24, temperature=1.0, seed=i, id=i)
                            for i, p in enumerate(prompts)])
    shard._rollout.thread.join(120)
    results = shard.take_results()
    assert len(results) == 8 and all(r.hidden_states is None for r in results)  # states stay on the shard
    samples = shard.buffer.samples()
    expected = prefill_hidden(shard.model, samples)

    def no_prefill(*args, **kw):
        raise AssertionError("a lent shard prefilled a sequence its own engine decoded")

    monkeypatch.setattr(shard_mod, "prefill_hidden", no_prefill)
    for sample, full in zip(samples, expected):
        windows = shard._windows[id(sample)][1]
        decoded = torch.cat([w.hidden[1:] if i else w.hidden for i, w in enumerate(windows)])
        assert torch.allclose(decoded, full[:-1], atol=1e-4)  # all but the never-fed last token
    trained = threading.Event()
    shard.trainer.on_micro_step = lambda tr: trained.set() if tr.state.step >= 2 else None
    assert shard.lend()
    assert trained.wait(120)
    shard.reclaim()
    assert shard.drafter_report()[1] >= 2


# ---------------------------------------------------------------- tracking

def test_metrics_count_training_preemptions_and_acceptance_per_version(random_batches):
    from prometheus_client import CollectorRegistry, generate_latest

    target, batches = random_batches
    registry = CollectorRegistry()
    metrics = DrafterMetrics(registry)
    trainer = make_trainer(target, batches)
    trainer.metrics, trainer.worker = metrics, "w0"
    trainer.run(max_steps=2)
    pre = threading.Event()
    pre.set()
    trainer.run(pre)
    metrics.accepted(drafter_version=1, policy_version=0, tokens=30, rounds=10)
    metrics.accepted(drafter_version=1, policy_version=0, tokens=10, rounds=10)
    metrics.accepted(drafter_version=2, policy_version=1, tokens=40, rounds=10)
    text = generate_latest(registry).decode()
    assert 'tlt_drafter_steps_total{worker="w0"} 2.0' in text
    assert 'tlt_drafter_preemptions_total{worker="w0"} 1.0' in text
    assert f'tlt_drafter_tokens_trained_total{{worker="w0"}} {float(trainer.state.tokens)}' in text
    assert 'tlt_drafter_acceptance_length{drafter_version="1",policy_version="0"} 2.0' in text
    assert metrics.tracker.mean(drafter_version=2) == 4.0
    assert metrics.tracker.mean(policy_version=0) == 2.0


# ---------------------------------------------------------------- measurement and warm-up

def test_measured_greedy_speculation_reproduces_plain_outputs_and_counts_accepted_tokens():
    from engine_models import STOP, bigram_drafter, mixed_prompts, near_bigram_target

    from tlt.drafter.measure import mean_acceptance, plain_generate
    from tlt.speculative.ngram import NgramDrafter

    target = near_bigram_target()  # its next token follows mostly the current one
    prompts = mixed_prompts(8, seed=8)
    plain = plain_generate(target, prompts, 30, temperature=0.0, stop_ids=[STOP])
    good = mean_acceptance(target, bigram_drafter(target), prompts, 30, temperature=0.0, stop_ids=[STOP])
    untrained = mean_acceptance(target, EagleDrafter.for_target(target, seed=1), prompts, 30, temperature=0.0,
                                stop_ids=[STOP])
    ngram = mean_acceptance(target, NgramDrafter(), prompts, 30, temperature=0.0, stop_ids=[STOP])
    assert good.outputs == plain and untrained.outputs == plain and ngram.outputs == plain
    # a drafter that follows the target's bigram part is accepted for more than a token a round;
    # an untrained one, measured the same way, is not
    assert good.acceptance_length > 1.5
    assert untrained.acceptance_length < good.acceptance_length - 0.3
    steps = 4  # mean_acceptance's chain depth
    for res in (good, untrained, ngram):
        # the acceptance length is the tokens the rounds emitted over the rounds, each round
        # emitting 1 (bonus only) to steps + 1 tokens; the rounds emitted every response token
        # but the first (sampled at prefill), with at most `steps` dropped past a stop per sequence
        assert res.rounds == len(res.per_round) > 0 and res.emitted == sum(res.per_round)
        assert res.acceptance_length == res.emitted / res.rounds
        assert all(1 <= k <= steps + 1 for k in res.per_round)
        after_prefill = sum(len(o) for o in plain) - len(prompts)
        assert after_prefill <= res.emitted <= after_prefill + steps * len(prompts)


def test_warmup_command_trains_resumes_and_exports_an_eagle_folder(tmp_path):
    import json

    from tlt.cli import main
    from tlt.models import load_model
    from tlt.tasks.bootstrap import ensure_base_model

    out = tmp_path / "drafter"
    args = ["drafter", "warmup", "--model", "micro-arith", "--task", "arith", "--out", str(out),
            "--prompts", "12", "--max-tokens", "32", "--quiet"]
    assert main(args + ["--steps", "4"]) == 0
    assert json.loads((out / "warmup.json").read_text())["steps"] == 4
    assert main(args + ["--steps", "7"]) == 0  # resumes from step 4
    info = json.loads((out / "warmup.json").read_text())
    assert info["steps"] == 7 and info["sequences"] == 12
    target = load_model(ensure_base_model("micro-arith", progress=False))
    loaded = EagleDrafter.load(out, target)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 1 and cfg["architectures"] == ["LlamaForCausalLM"]
    assert loaded.fc.weight.shape == (target.config.hidden_size, 2 * target.config.hidden_size)


def test_warmup_command_names_the_fix_for_a_bad_model(tmp_path, capsys):
    from tlt.cli import main

    assert main(["drafter", "warmup", "--model", str(tmp_path / "nope"), "--task", "arith",
                 "--out", str(tmp_path / "o")]) == 1
    assert "model folder" in capsys.readouterr().err


def test_a_shards_acceptance_length_is_tracked_per_drafter_and_policy_version(policy_folder):
    from prometheus_client import generate_latest

    from tlt.engine.metrics import REGISTRY
    from tlt.engine.types import Request

    shard = rollout_shard(policy_folder, "accept-0", **{"speculative.mode": "always"})
    shard.set_drafter(17, shard.eagle.state_dict())  # a version no other test's shard runs
    shard.start_rollout(1, [Request(prompt=[1, 5, 6, 7], max_tokens=20, temperature=1.0, seed=i, id=i) for i in range(2)])
    while shard.progress().busy:
        threading.Event().wait(0.05)
    assert len(shard.take_results()) == 2
    counters = shard.engine.counters()
    assert counters.verify_rounds > 0
    text = generate_latest(REGISTRY).decode()
    line = next(x for x in text.splitlines() if x.startswith('tlt_drafter_acceptance_length{drafter_version="17"'))
    assert 'policy_version="0"' in line
    assert float(line.split()[-1]) == pytest.approx(counters.mean_acceptance_length)


def test_a_reclaim_arriving_while_a_lend_starts_its_thread_waits_for_it(policy_folder, monkeypatch):
    """The shard's actor serves calls from several threads: a reclaim that lands between a lend
    creating its training thread and starting it must wait, not join a thread never started."""
    shard = rollout_shard(policy_folder, "race-0")
    for sample in random_samples(4, seed=3):
        shard.buffer.add(sample, 0)
    started, release = threading.Event(), threading.Event()
    real_start = threading.Thread.start

    def slow_start(thread):  # the lend's thread exists but has not started yet
        if thread.name == "race-0-drafter":
            started.set()
            release.wait(10)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", slow_start)
    lending = threading.Thread(target=shard.lend)
    lending.start()
    assert started.wait(10)
    errors = []
    reclaiming = threading.Thread(target=lambda: _call(shard.reclaim, errors))
    reclaiming.start()
    reclaiming.join(0.3)
    assert reclaiming.is_alive(), "the reclaim must wait for the lend in progress"
    release.set()
    lending.join(30)
    reclaiming.join(60)
    assert not errors and shard.role == "rollout" and shard._train_thread is None


def _call(fn, errors):
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - the test reports it
        errors.append(err)
