"""metrics.jsonl survives kills and resumes; report.html shows every chart from it alone."""

import json

from tlt.eval.evaluate import pack_solved
from tlt.report import MetricsLog, read_records, write_report
from tlt.report.html import role_spans, summarize


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _run(tmp_path, clock, steps=3):
    log = MetricsLog(tmp_path / "metrics.jsonl", clock=clock)
    log.write("run", job="demo", t0=log.t0)
    log.write("role", worker="rollout-0", role="rollout")
    log.write("role", worker="rollout-1", role="rollout")
    for step in range(1, steps + 1):
        clock.now += 4
        log.write("role", worker="rollout-1", role="drafter")
        clock.now += 6
        log.write("role", worker="rollout-1", role="rollout")
        log.write("step", step=step, reward_mean=0.1 * step, time_rollout=8.0, time_reward=1.0, time_train=1.0,
                  time_sync=0.0, acceptance_length=2.0 + step, drafter_version=step, lent_fraction=0.3)
        # prompts 0..step-1 of 10 solved: each step gains one
        log.write("eval", step=step, accuracy=0.2 + 0.1 * step, prompts=10,
                  solved=pack_solved([i < step for i in range(10)]))
    return log


def test_records_carry_time_since_first_start_and_resume_keeps_the_clock(tmp_path):
    clock = FakeClock()
    _run(tmp_path, clock, steps=1)
    clock.now += 100  # killed, restarted later
    resumed = MetricsLog(tmp_path / "metrics.jsonl", clock=clock)
    record = resumed.write("step", step=2)
    assert record["t"] == 110.0


def test_a_torn_last_line_is_skipped(tmp_path):
    clock = FakeClock()
    _run(tmp_path, clock, steps=2)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "step", "step": 3, "rew')
    records = read_records(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2]


def test_role_spans_cover_each_worker_until_the_end():
    records = [
        {"kind": "role", "worker": "w", "role": "rollout", "t": 0.0},
        {"kind": "role", "worker": "w", "role": "drafter", "t": 5.0},
        {"kind": "step", "step": 1, "t": 9.0},
    ]
    assert role_spans(records, end=9.0) == {"w": [(0.0, 5.0, "rollout"), (5.0, 9.0, "drafter")]}


def test_summary_reports_accuracy_change_rollout_share_and_acceptance(tmp_path):
    _run(tmp_path, FakeClock(), steps=3)
    summary = summarize(read_records(tmp_path / "metrics.jsonl"))
    assert summary["steps"] == 3
    assert abs(summary["accuracy_first"] - 0.3) < 1e-9
    assert abs(summary["accuracy_last"] - 0.5) < 1e-9
    assert abs(summary["rollout_share"] - 0.8) < 1e-9
    assert abs(summary["mean_acceptance_length"] - 4.0) < 1e-9
    # the same prompts, first evaluation against the last: 2 gained, none lost
    assert summary["accuracy_change"] == {"from_step": 1, "to_step": 3, "gained": 2, "lost": 0, "p_value": 0.5}
    assert "pass_at_1_change" not in summary  # no sampled evaluation was logged


def test_report_html_has_every_chart_and_the_timeline(tmp_path):
    _run(tmp_path, FakeClock(), steps=3)
    out = write_report(tmp_path, title="demo")
    page = out.read_text()
    for title in ("Reward and held-out accuracy", "Step time", "Acceptance length", "Worker roles over time"):
        assert title in page
    assert page.count("<svg") >= 5
    assert "rollout-1 drafter" in page  # a lent span on the timeline
    assert ">v3</text>" in page  # acceptance labelled with the drafter version
    assert "2 prompts gained, 0 lost from step 1 to 3 (sign test p = 0.5)" in page


def test_report_of_an_empty_run_renders(tmp_path):
    out = write_report(tmp_path)
    assert "no data yet" in out.read_text()
    assert json.loads(json.dumps(summarize([]))) == {"steps": 0}


def test_a_step_rerun_after_resume_counts_once_with_its_latest_figures():
    records = [
        {"kind": "step", "step": 1, "t": 1.0, "reward_mean": 0.1, "time_rollout": 1.0},
        {"kind": "step", "step": 2, "t": 2.0, "reward_mean": 0.2, "time_rollout": 1.0},
        {"kind": "run", "t": 3.0},
        {"kind": "step", "step": 2, "t": 4.0, "reward_mean": 0.25, "time_rollout": 1.0},
    ]
    summary = summarize(records)
    assert summary["steps"] == 2
    assert summary["reward_last"] == 0.25
