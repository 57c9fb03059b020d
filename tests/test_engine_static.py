"""The static-shape hot path (running-batch buckets with padding rows, fixed attention
windows: what CUDA graphs replay) gives the dynamic path's tokens, greedy and sampled,
with and without speculation; on CUDA the graphs do too, with one host read per step."""

import pytest
import torch

from tlt.engine import Request, TorchEngine
from tlt.engine.static import batch_buckets, bucket_of, window_of
from tlt.speculative.adaptive import FixedStrategy, Strategy
from tlt.speculative.ngram import NgramDrafter

from engine_models import bigram_drafter, mixed_prompts, mixed_requests, near_bigram_target

torch.set_num_threads(1)

SAMPLING = {"greedy": dict(temperature=0.0), "t1": dict(temperature=1.0), "t0.7-p0.9": dict(temperature=0.7, top_p=0.9)}
DRAFTS = {"plain": None, "eagle-chain": "4_1_4", "eagle-tree": "3_2_6", "ngram": "5_1_5"}


@pytest.fixture(scope="module")
def target():
    return near_bigram_target()


def _engine(target, drafts, static, slots=12):
    if drafts is None:
        return TorchEngine(target, num_slots=slots, max_model_len=80, static=static)
    drafter = NgramDrafter(max_n=3) if drafts.startswith("5_") else bigram_drafter(target)
    return TorchEngine(target, num_slots=slots, max_model_len=80, drafter=drafter, static=static,
                       speculation=FixedStrategy(Strategy.parse(DRAFTS[drafts] if drafts in DRAFTS else drafts)))


def _padded_rounds(engine):
    """Count steps whose running batch was padded up to a bucket."""
    seen = []
    emit = engine._emit

    def spy(*args, **kw):
        seen.append(args[4] if len(args) > 4 else kw.get("padded"))
        return emit(*args, **kw)

    engine._emit = spy
    return seen


@pytest.mark.parametrize("sampling", list(SAMPLING))
@pytest.mark.parametrize("drafts", list(DRAFTS))
def test_static_path_gives_the_dynamic_paths_tokens(target, sampling, drafts):
    requests = lambda: mixed_requests(mixed_prompts(24, seed=2), **SAMPLING[sampling])  # noqa: E731
    dynamic = _engine(target, DRAFTS[drafts] and drafts, static=False)
    static = _engine(target, DRAFTS[drafts] and drafts, static=True)
    padded = _padded_rounds(static)
    expected = dynamic.generate(requests())
    got = static.generate(requests())
    assert any(padded), "the running batch must have been padded to a bucket"
    assert {r.finish_reason for r in expected} == {"stop", "length"}
    for e, g in zip(expected, got):
        assert g.tokens == e.tokens, f"request {e.id} diverged"
        assert g.finish_reason == e.finish_reason
        assert g.logprobs == pytest.approx(e.logprobs, abs=1e-9)
    if drafts != "plain":
        assert static.counters().mean_acceptance_length > 1.5
        assert static.counters().verify_rounds == dynamic.counters().verify_rounds


def test_static_speculation_matches_plain_decoding_after_preemption(target):
    """A continuation (re-prefilled prefix, drafter caught up from scratch) finishes as if it had stayed."""
    reqs = lambda: [Request(prompt=p, max_tokens=30, temperature=1.0, seed=7 + i, id=i)  # noqa: E731
                    for i, p in enumerate(mixed_prompts(5, seed=3))]
    plain = {r.id: r.tokens for r in TorchEngine(target, num_slots=5, max_model_len=64).generate(reqs())}
    source = _engine(target, "eagle-chain", static=True, slots=5)
    other = _engine(target, "eagle-chain", static=True, slots=5)
    source.submit(reqs())
    done = {}
    for _ in range(3):
        done.update({r.id: r.tokens for r in source.step()})
    other.submit(source.preempt(3))
    for engine in (source, other):
        while engine.has_work():
            done.update({r.id: r.tokens for r in engine.step()})
    assert done == plain


def test_buckets_and_windows_are_few_and_cover_the_need():
    assert batch_buckets(1) == [1]
    assert batch_buckets(48) == [1, 2, 4, 8, 16, 32, 48]
    assert [bucket_of(n, batch_buckets(48)) for n in (1, 3, 17, 33, 48)] == [1, 4, 32, 48, 48]
    windows = {window_of(n, 100_000, static=True) for n in range(1, 4097)}
    assert len(windows) <= 4 * 7  # four per doubling from 64 to 4096
    for n in (1, 63, 65, 200, 1000, 4000):
        w = window_of(n, 100_000, static=True)
        assert n <= w <= max(64, 1.25 * n)
    assert window_of(900, 1000, static=True) == 1000  # capped at the capacity
    assert window_of(37, 1000, static=False) == 37
    with pytest.raises(RuntimeError, match="max_model_len"):
        window_of(1001, 1000, static=True)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


@cuda
@pytest.mark.parametrize("drafts", ["plain", "eagle-chain", "eagle-tree"])
def test_cuda_graphs_give_the_eager_tokens_with_one_read_per_step(target, drafts):
    import warnings

    model = near_bigram_target().to("cuda")
    requests = lambda: mixed_requests(mixed_prompts(24, seed=2), temperature=1.0)  # noqa: E731
    expected = _engine(model, DRAFTS[drafts] and drafts, static=False).generate(requests())
    graphed = _engine(model, DRAFTS[drafts] and drafts, static=True)
    assert graphed.cuda_graphs
    graphed.submit(requests())
    got, syncs = {}, []
    while graphed.has_work():
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            before = graphed.counters()
            for r in graphed.step():
                got[r.id] = r
        torch.cuda.set_sync_debug_mode("default")
        c = graphed.counters()
        if c.finished == before.finished and c.running == before.running and not before.waiting:
            syncs.append(len(caught))  # a steady step: no admission, nothing finished
    assert len(graphed._graphs) > 0
    assert [got[e.id].tokens for e in expected] == [e.tokens for e in expected]
    assert syncs and max(syncs) <= 1
