"""Torch engine: speculation never changes greedy outputs, logprobs match a plain
forward, continuous batching and counters behave, weights update in place."""

import threading

import pytest
import torch

from tlt.engine import Request, RequestError, TorchEngine
from tlt.models import random_model
from tlt.models.drafter import EagleDrafter
from tlt.speculative.adaptive import PLAIN, AdaptiveManager, FixedStrategy, Strategy
from tlt.speculative.ngram import NgramDrafter

from engine_models import CFG, bigram_drafter, mixed_prompts, mixed_requests, near_bigram_target

torch.set_num_threads(1)  # tiny shapes: threads only add contention on shared CI cores

@pytest.fixture(scope="module")
def target():
    return near_bigram_target()


SAMPLING = {"greedy": dict(temperature=0.0), "t1": dict(temperature=1.0), "t0.7-p0.9": dict(temperature=0.7, top_p=0.9)}


@pytest.fixture(scope="module")
def plain_by_sampling(target):
    return {name: TorchEngine(target, num_slots=16, max_model_len=80).generate(mixed_requests(mixed_prompts(), **kw))
            for name, kw in SAMPLING.items()}


@pytest.mark.parametrize("sampling", list(SAMPLING))
@pytest.mark.parametrize("drafter_kind,strategy", [
    ("eagle", "4_1_4"), ("eagle", "3_2_6"), ("eagle", "4_3_10"), ("ngram", "5_1_5")])
def test_outputs_are_token_identical_with_speculation(target, plain_by_sampling, drafter_kind, strategy, sampling):
    """Coupled verification: greedy and sampled outputs equal plain decoding's token for token."""
    drafter = bigram_drafter(target) if drafter_kind == "eagle" else NgramDrafter(max_n=3)
    engine = TorchEngine(target, num_slots=16, max_model_len=80, drafter=drafter,
                         speculation=FixedStrategy(Strategy.parse(strategy)))
    results = engine.generate(mixed_requests(mixed_prompts(), **SAMPLING[sampling]))
    plain_results = plain_by_sampling[sampling]
    reasons = {r.finish_reason for r in plain_results}
    assert reasons == {"stop", "length"}, "the workload must exercise both finish reasons"
    for plain, spec in zip(plain_results, results):
        assert spec.tokens == plain.tokens, f"request {plain.id} diverged"
        assert spec.finish_reason == plain.finish_reason
        assert spec.logprobs == pytest.approx(plain.logprobs, abs=1e-6)
    assert engine.counters().mean_acceptance_length > 1.5


def test_logprobs_equal_a_plain_forward_of_the_whole_sequence(target):
    drafter = bigram_drafter(target)
    engine = TorchEngine(target, num_slots=4, max_model_len=64, drafter=drafter,
                         speculation=FixedStrategy(Strategy(3, 2, 6)))
    reqs = [Request(prompt=p, max_tokens=20, temperature=t, top_p=tp, seed=i, id=i)
            for i, (p, t, tp) in enumerate(zip(mixed_prompts(6, seed=4), [0.0, 1.0, 0.7, 1.0, 1.3, 0.0],
                                               [1.0, 1.0, 0.9, 0.5, 1.0, 1.0]))]
    for req, res in zip(reqs, engine.generate(reqs)):
        seq = torch.tensor(res.prompt + res.tokens)[None]
        with torch.no_grad():
            logits = target(seq)[0, len(res.prompt) - 1: -1]
        scale = req.temperature if req.temperature > 0 else 1.0
        expected = torch.log_softmax(logits / scale, -1).gather(1, seq[0, len(res.prompt):, None])[:, 0]
        assert res.logprobs == pytest.approx(expected.tolist(), abs=1e-5)


def test_sampled_outputs_do_not_depend_on_batch_composition(target):
    prompts = mixed_prompts(12, seed=5)
    reqs = lambda: [Request(prompt=p, max_tokens=15, temperature=1.0, top_p=0.9, seed=100 + i, id=i)
                    for i, p in enumerate(prompts)]
    wide = TorchEngine(target, num_slots=12, max_model_len=64).generate(reqs())
    narrow = TorchEngine(target, num_slots=3, max_model_len=64).generate(list(reversed(reqs())))
    assert [r.tokens for r in wide] == [r.tokens for r in reversed(narrow)]


def test_a_prompt_sampled_several_times_is_prefilled_once_and_decodes_as_if_prefilled_alone(target):
    """GRPO's groups share their prompt: admission prefills each distinct prompt once and copies its
    KV entries and states to the group's other slots; outputs, log-probs and states are those of
    requests admitted one at a time."""
    prompts = mixed_prompts(4, seed=6)
    reqs = lambda: [Request(prompt=p, max_tokens=15, temperature=1.0, seed=200 + 4 * g + k, id=(g, k),
                            return_hidden_states=True) for g, p in enumerate(prompts) for k in range(4)]
    engine = TorchEngine(target, num_slots=16, max_model_len=64, store_hidden_states=True)
    prefilled = []
    hidden = engine.model.hidden

    def counting_hidden(input_ids, *args, **kwargs):
        if input_ids.shape[1] > 1:
            prefilled.append(input_ids.shape[0])
        return hidden(input_ids, *args, **kwargs)

    engine.model.hidden = counting_hidden
    grouped = engine.generate(reqs())
    assert prefilled == [len(prompts)]  # one prefill, one row per distinct prompt
    alone = TorchEngine(target, num_slots=1, max_model_len=64, store_hidden_states=True).generate(reqs())
    for a, b in zip(grouped, alone):
        assert a.tokens == b.tokens, f"request {a.id}"
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-9)
        assert torch.allclose(a.hidden_states, b.hidden_states, atol=1e-9)
    assert len({tuple(r.tokens) for r in grouped}) > len(prompts)  # the samples of a group differ


@pytest.mark.parametrize("drafts", ["plain", "eagle-4_1_4", "eagle-3_2_6"])
def test_the_running_batch_reads_the_caches_as_views_as_sequences_finish_and_move(target, drafts):
    """Sequences finish in any order; the running ones move into the freed low slots, so every
    decode and verify forward reads the KV caches as one slice instead of gathering them per
    layer, and a moved sequence decodes exactly as it would have alone."""
    kind, _, strategy = drafts.partition("-")
    drafter = bigram_drafter(target) if kind == "eagle" else None
    engine = TorchEngine(target, num_slots=16, max_model_len=80, drafter=drafter, store_hidden_states=True,
                         speculation=FixedStrategy(Strategy.parse(strategy)) if drafter else None)
    reads, hidden = [], engine.model.hidden

    def recording_hidden(input_ids, *args, **kwargs):
        if kwargs.get("window") is not None:  # the hot path (admission's prefill has no window)
            reads.append(kwargs.get("read_slots"))
        return hidden(input_ids, *args, **kwargs)

    engine.model.hidden = recording_hidden
    requests = lambda: mixed_requests(mixed_prompts(24, seed=9), temperature=1.0, return_hidden_states=True)
    results = engine.generate(requests())
    assert engine.counters().finished == 24 and len(reads) > 20  # mixed lengths: most finish under a running one
    assert all(isinstance(r, slice) for r in reads), "a forward gathered the caches"
    alone = TorchEngine(target, num_slots=1, max_model_len=80, store_hidden_states=True).generate(requests())
    for a, b in zip(results, alone):
        assert a.tokens == b.tokens, f"request {a.id}"
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-9)
        assert torch.allclose(a.hidden_states, b.hidden_states, atol=1e-9)
    if drafter is not None:
        assert engine.counters().mean_acceptance_length > 1.5


@pytest.mark.parametrize("sampling", list(SAMPLING))
@pytest.mark.parametrize("drafts", ["plain", "eagle-4_1_4", "eagle-3_2_6", "eagle-4_3_10", "ngram-5_1_5"])
def test_hidden_states_on_request_equal_a_prefill_of_the_sequence(target, drafts, sampling):
    """What a lent shard trains its drafter on: the states decoding computed, whatever verified them."""
    kind, _, strategy = drafts.partition("-")
    drafter = {"plain": None, "eagle": bigram_drafter(target), "ngram": NgramDrafter(max_n=3)}[kind]
    engine = TorchEngine(target, num_slots=16, max_model_len=80, drafter=drafter, store_hidden_states=True,
                         speculation=FixedStrategy(Strategy.parse(strategy)) if drafter else None)
    requests = mixed_requests(mixed_prompts(), return_hidden_states=True, **SAMPLING[sampling])
    results = engine.generate(requests)
    full = engine.compute_hidden_states([r.prompt + r.tokens for r in results])
    for res, states in zip(results, full):
        assert res.hidden_states.shape == (len(res.prompt) + len(res.tokens) - 1, CFG.hidden_size)
        assert torch.allclose(res.hidden_states, states[:-1], atol=1e-9), f"request {res.id}"
    if drafter is not None:
        assert engine.counters().mean_acceptance_length > 1.5


def test_continuous_batching_admits_waiting_requests_as_slots_free(target):
    engine = TorchEngine(target, num_slots=2, max_model_len=64)
    engine.submit([Request(prompt=[1, 2], max_tokens=n, temperature=0.0, id=n) for n in (1, 3, 2)])
    first = engine.step()  # admits two; the 1-token request finishes at prefill
    assert [r.id for r in first] == [1]
    c = engine.counters()
    assert (c.running, c.waiting, c.finished) == (1, 1, 1)
    done = list(first)
    while engine.has_work():
        done += engine.step()
    assert sorted((r.id, len(r.tokens), r.finish_reason) for r in done) == [
        (1, 1, "length"), (2, 2, "length"), (3, 3, "length")]
    assert engine.counters().generated_tokens == 6


def test_counters_are_readable_from_another_thread_while_generating(target):
    engine = TorchEngine(target, num_slots=4, max_model_len=64)
    seen, stop = [], threading.Event()

    def watch():
        while not stop.wait(0.001):  # a busy loop would starve the generating thread of the GIL
            seen.append(engine.counters())

    t = threading.Thread(target=watch)
    t.start()
    engine.generate([Request(prompt=[3], max_tokens=20, temperature=0.0, id=i) for i in range(6)])
    stop.set()
    t.join()
    assert seen and all(c.running <= 4 for c in seen)
    assert engine.counters().finished == 6 and engine.counters().generated_tokens == 120


def test_adaptive_engine_speculates_only_in_the_tail(target):
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    manager = AdaptiveManager([Strategy(4, 1, 4)], batch_threshold=2, hysteresis=0)
    engine = TorchEngine(target, num_slots=8, max_model_len=64, drafter=bigram_drafter(target),
                         speculation=manager, metrics_registry=registry)
    engine.submit([Request(prompt=[5], max_tokens=4 + 6 * i, temperature=0.0, id=i) for i in range(6)])
    states = []
    while engine.has_work():
        engine.step()
        # the running batch the step decided on (after admission), and whether it speculated
        batch = registry.get_sample_value("tlt_engine_running_batch_size")
        states.append((batch, engine.counters().speculating))
    assert any(on for _, on in states) and any(batch > 2 for batch, _ in states)
    assert all(batch <= 2 for batch, on in states if on), f"speculated above the threshold: {states}"
    assert engine.counters().verify_rounds > 0


def test_policy_and_drafter_weight_updates_apply_in_place(target):
    model = random_model(CFG, seed=1, dtype=torch.float64)
    other = random_model(CFG, seed=2, dtype=torch.float64)
    engine = TorchEngine(model, num_slots=2, max_model_len=64, drafter=EagleDrafter.for_target(model),
                         speculation=FixedStrategy(Strategy(2, 1, 2)))
    engine.update_policy_weights(other.state_dict())
    req = lambda: [Request(prompt=[4, 5], max_tokens=10, temperature=0.0)]
    expected = TorchEngine(other, num_slots=2, max_model_len=64).generate(req())[0].tokens
    assert engine.generate(req())[0].tokens == expected
    new = EagleDrafter.for_target(model, seed=9)
    engine.update_drafter_weights(new.state_dict())
    assert torch.equal(engine.drafter.fc.weight, new.fc.weight)


def test_a_new_drafter_version_makes_the_adaptive_engine_try_speculation_again(target):
    strategy = Strategy(4, 1, 4)
    manager = AdaptiveManager([strategy], batch_threshold=8, hysteresis=0, epsilon=0.0)
    engine = TorchEngine(target, num_slots=2, max_model_len=64, drafter=bigram_drafter(target), speculation=manager)
    manager.bandit.record(1, strategy, 50.0)  # the old drafter lost to plain decoding
    manager.bandit.record(1, PLAIN, 100.0)
    assert manager.decide(1) is None
    engine.update_drafter_weights(bigram_drafter(target).state_dict())
    assert manager.decide(1) == strategy


def test_bad_requests_are_refused_with_the_field_named(target):
    engine = TorchEngine(target, num_slots=2, max_model_len=16)
    with pytest.raises(RequestError, match="max_model_len"):
        engine.submit(Request(prompt=[1] * 10, max_tokens=10))
    with pytest.raises(RequestError, match="top_p"):
        engine.submit(Request(prompt=[1], max_tokens=2, top_p=0.0))
    with pytest.raises(RequestError, match="vocabulary"):
        engine.submit(Request(prompt=[1000], max_tokens=2))
    with pytest.raises(RequestError, match="store_hidden_states"):
        engine.submit(Request(prompt=[1], max_tokens=2, return_hidden_states=True))


def _noisy_float32(scale, seed):
    """The test target in float32 with every float32 LM-head output perturbed by up to `scale` (fresh
    noise per forward): an exaggerated stand-in for the last-bit differences between forwards that
    batch a sequence differently. The engine's float64 copy (its near-tie recomputes) is unperturbed."""
    model = near_bigram_target().float()
    g = torch.Generator().manual_seed(seed)

    def perturb(module, inputs, out):
        if out.dtype == torch.float32:
            return out + (torch.rand(out.shape, generator=g) * 2 - 1).to(out.dtype) * scale

    model.lm_head.register_forward_hook(perturb)
    return model


@pytest.mark.parametrize("sampling", list(SAMPLING))
def test_near_tie_draws_are_recomputed_so_forwards_that_round_differently_emit_the_same_tokens(target, sampling):
    """Plain and speculative engines whose logits differ by noise (as float32 forwards of different
    shapes do, exaggerated) emit the clean float64 engine's tokens when near ties are recomputed,
    and differ from them when they are not (the noise really flips draws)."""
    from tlt.speculative.sampling import Ties
    ties = Ties(mass=0.05, logits=0.05)  # well above the noise's effect (logits 5e-3 off at most)
    reference = [r.tokens for r in TorchEngine(target, num_slots=16, max_model_len=80).generate(
        mixed_requests(mixed_prompts(), **SAMPLING[sampling]))]
    outputs, engines = {}, {}
    runs = [("plain", None, ties), ("chain", "4_1_4", ties), ("tree", "3_2_6", ties)]
    runs += [(f"plain, no recompute {seed}", None, None) for seed in range(3)]
    for name, strategy, recompute in runs:
        noisy = _noisy_float32(5e-3, seed=len(outputs))
        kw = {} if strategy is None else dict(drafter=bigram_drafter(noisy),
                                               speculation=FixedStrategy(Strategy.parse(strategy)))
        engines[name] = TorchEngine(noisy, num_slots=16, max_model_len=80, ties=recompute, **kw)
        outputs[name] = [r.tokens for r in engines[name].generate(mixed_requests(mixed_prompts(), **SAMPLING[sampling]))]
    for name in ("plain", "chain", "tree"):
        assert outputs[name] == reference, f"{name}: request {next(i for i, (a, b) in enumerate(zip(outputs[name], reference)) if a != b)} diverged"
        assert engines[name].counters().near_ties > 0, "the workload must hit near ties"
    for name in ("chain", "tree"):
        assert engines[name].counters().mean_acceptance_length > 1.5
    assert any(outputs[f"plain, no recompute {seed}"] != reference for seed in range(3)), \
        "the noise must flip some draw without recomputing"
