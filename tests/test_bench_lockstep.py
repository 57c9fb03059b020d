"""`tlt bench e2e` runs the baseline and tlt in turns, step by step (`Lockstep`): pure
thread tests with stand-in runs (the real runs are in test_bench_cli.py)."""

import threading

import pytest

from tlt.coordinator.bench import Lockstep, run_lockstep


class FakeRun:
    """Does `stretches` turns of work, recording who worked when; fails at `fail_at`."""

    def __init__(self, name: str, stretches: int, log: list, fail_at: int | None = None):
        self.name, self.stretches, self.log, self.fail_at = name, stretches, log, fail_at
        self.turn = None  # set by run_lockstep, as on EmbeddedRun

    def run(self) -> None:
        for i in range(self.stretches):
            with self.turn():
                self.log.append(self.name)
                if i == self.fail_at:
                    raise ValueError(f"{self.name} broke")


def test_two_runs_alternate_every_stretch_of_work():
    log: list = []
    order = run_lockstep({"baseline": FakeRun("baseline", 4, log), "tlt": FakeRun("tlt", 4, log)}, start=lambda: None)
    assert log == ["baseline", "tlt"] * 4
    assert order == log


def test_a_run_that_ends_first_leaves_the_rotation_and_the_other_goes_on():
    log: list = []
    run_lockstep({"baseline": FakeRun("baseline", 1, log), "tlt": FakeRun("tlt", 3, log)}, start=lambda: None)
    assert log == ["baseline", "tlt", "tlt", "tlt"]


def test_a_failing_run_is_reported_and_does_not_block_the_other():
    log: list = []
    with pytest.raises(RuntimeError, match="the tlt run failed: tlt broke"):
        run_lockstep({"baseline": FakeRun("baseline", 3, log), "tlt": FakeRun("tlt", 3, log, fail_at=0)},
                     start=lambda: None)
    assert log == ["baseline", "tlt", "baseline", "baseline"]


def test_only_the_run_whose_turn_it_is_works():
    lock = Lockstep(["a", "b"])
    inside: list = []
    overlap = threading.Event()

    def work(name: str) -> None:
        for _ in range(50):
            with lock.turn(name):
                inside.append(name)
                if len(inside) > 1:
                    overlap.set()
                inside.remove(name)
        lock.leave(name)

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert not overlap.is_set()
    assert lock.order == ["a", "b"] * 50


def test_an_embedded_runs_start_up_is_inside_its_first_turn(monkeypatch, tmp_path):
    """Nothing of a run happens outside its turns: two start-ups at once raced in transformers'
    lazy imports (`cannot import name 'AutoTokenizer'`) and one run of the pair died."""
    from contextlib import contextmanager
    from pathlib import Path

    from tlt.api.load import load_jobs
    from tlt.coordinator import loop

    (job,) = load_jobs(Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml")
    run = loop.EmbeddedRun(job, run_dir=tmp_path / "run")
    held: list = []

    @contextmanager
    def turn():
        held.append(True)
        try:
            yield
        finally:
            held.append(False)

    class Stop(Exception):
        pass

    def first_work(*args, **kwargs):
        raise Stop(held[-1] if held else False)

    run.turn = turn
    monkeypatch.setattr(loop, "resolve_model", first_work)
    with pytest.raises(Stop) as stopped:
        run.run()
    assert stopped.value.args == (True,), "the model was resolved outside a turn"


def test_ray_starts_in_the_callers_thread_before_any_run():
    """Ray's processes die with the thread that started them: a run's thread must not own it
    (the next embedded run in the process found Ray dead: `Failed to connect to GCS`)."""
    seen: list = []
    log: list = []
    run_lockstep({"baseline": FakeRun("baseline", 1, log)}, start=lambda: seen.append((threading.current_thread(), list(log))))
    assert seen == [(threading.main_thread(), [])]
