"""Tail consolidation moves unfinished sequences between engines without changing them."""

import pytest
from engine_models import bigram_drafter, near_bigram_target

from tlt.engine.torch_engine import TorchEngine
from tlt.engine.types import Request, RequestError
from tlt.speculative.adaptive import FixedStrategy, Strategy


def _model():
    return near_bigram_target()  # float64, with a drafter that is accepted for > 1.5 tokens a round


def _requests(temperature):
    return [Request(prompt=[1 + i, 5, 7 + i], max_tokens=24, stop_ids=[0], temperature=temperature,
                    top_p=0.9, seed=100 + i, group=i // 2, id=i) for i in range(6)]


def _run_until_done(engine):
    out = {}
    while engine.has_work():
        for r in engine.step():
            out[r.id] = r
    return out


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("speculative", [False, True], ids=["plain", "eagle-chain"])
def test_moved_sequences_finish_exactly_as_if_they_had_stayed(temperature, speculative):
    def engine(model):
        if not speculative:
            return TorchEngine(model, num_slots=8, max_model_len=64)
        return TorchEngine(model, num_slots=8, max_model_len=64, drafter=bigram_drafter(model),
                           speculation=FixedStrategy(Strategy.parse("3_1_3")))

    stayed = _submit(engine(_model()), temperature)
    reference = _run_until_done(stayed)

    source, target = engine(_model()), engine(_model())
    _submit(source, temperature)
    finished = {}
    for _ in range(4):  # part-way through
        finished.update({r.id: r for r in source.step()})
    moved = source.preempt(3)
    assert len(moved) == 3 and all(m.prefix for m in moved)
    assert source.counters().running == sum(1 for r in source._slot_req if r is not None)
    target.submit(moved)
    finished.update(_run_until_done(source))
    finished.update(_run_until_done(target))
    assert sorted(finished) == sorted(reference)
    for key, ref in reference.items():
        got = finished[key]
        assert got.tokens == ref.tokens, key
        assert got.finish_reason == ref.finish_reason
        assert got.logprobs == pytest.approx(ref.logprobs, abs=1e-9)
    if speculative:  # both engines really speculated, the moved sequences' engine included
        for e in (stayed, source, target):
            c = e.counters()
            assert c.verify_rounds > 0 and c.mean_acceptance_length > 1.5, c


def _submit(engine, temperature):
    engine.submit(_requests(temperature))
    return engine


def test_waiting_requests_are_moved_before_running_ones():
    engine = TorchEngine(_model(), num_slots=2, max_model_len=64)
    engine.submit(_requests(1.0))
    engine.step()  # two admitted, four waiting
    moved = engine.preempt(3)
    assert [m.prefix for m in moved] == [(), (), ()]
    assert engine.counters().waiting == 1


def test_a_continuation_without_room_is_refused():
    with pytest.raises(RequestError, match="prefix"):
        Request(prompt=[1], max_tokens=2, prefix=[3, 4], prefix_logprobs=[0.0, 0.0]).validate(48, 64)


def test_a_move_from_another_thread_waits_for_the_running_step():
    # The shard decodes on its own thread while the coordinator consolidates the tail: preempt()
    # must not empty a slot in the middle of the step that is producing its tokens.
    import threading

    engine = TorchEngine(_model(), num_slots=8, max_model_len=64)
    engine.submit(_requests(1.0))
    engine.step()  # all six admitted and running
    before = engine.counters().generated_tokens // 6
    in_step, release = threading.Event(), threading.Event()
    collect = engine._collect

    def paused_collect(*args, **kwargs):
        in_step.set()
        release.wait(10)
        return collect(*args, **kwargs)

    engine._collect = paused_collect
    errors, moved = [], []
    stepping = threading.Thread(target=lambda: _record(errors, engine.step))
    stepping.start()
    assert in_step.wait(10)
    mover = threading.Thread(target=lambda: moved.extend(engine.preempt(6)))
    mover.start()
    mover.join(0.3)
    assert mover.is_alive() and not moved  # waits for the step, not in the middle of it
    release.set()
    stepping.join(10)
    mover.join(10)
    assert errors == []
    assert len(moved) == 6 and all(len(m.prefix) == before + 1 for m in moved)  # the step's tokens went with them
    assert not engine.has_work()


def _record(errors, fn):
    try:
        fn()
    except BaseException as err:  # noqa: BLE001 - the test reports it
        errors.append(err)
