"""The end-to-end comparison: the plain synchronous baseline (speculation off, elasticity
off, what a veRL-style run does) and tlt on the same job and seed, in one process.

Verification is coupled to the plain sampler, so both runs sample the same tokens at
every step and therefore train the same policy: the comparison is of the same work, and
it checks that (digests of every sampled sequence, per step, must be equal).

The two runs take turns step by step (`Lockstep`): baseline step 1, tlt step 1, baseline
step 2, ... Run one after the other, a slow stretch of a shared machine (minutes on a
laptop or a small VM) fell on one run only and moved the ratios by 20-30%; interleaved,
each step's pair meets the same machine. Whoever waits is idle: between steps a tlt run
lends nothing (see `EmbeddedRun._phase_roles`).
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from tlt.api.model import ReasoningRLJob
from tlt.coordinator.actors import start_local_ray
from tlt.coordinator.loop import EmbeddedRun
from tlt.report import read_records, write_report
from tlt.report.html import COMPARISON_FILE, STEP_PHASES, accuracy_change, describe_change, latest_per_step


def baseline_of(job: ReasoningRLJob) -> ReasoningRLJob:
    """The same job with speculation and elasticity off."""
    doc = job.model_dump(by_alias=True, exclude_none=True, mode="json")
    doc["spec"]["speculative"]["mode"] = "off"
    doc["spec"]["elasticity"] = {"lendIdle": False, "consolidateTail": {"enabled": False}}
    return ReasoningRLJob.model_validate(doc)


class Lockstep:
    """Runs that take turns: each stretch of work (`turn()`) waits until the runs before it
    in `names` have done theirs, round after round. A run that ends, or fails, leaves the
    rotation so the others go on."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.active = set(self.names)
        self.current = 0  # index into names of whose turn it is
        self.order: list[str] = []  # who held each turn, for the record
        self._cond = threading.Condition()

    def _advance(self) -> None:
        for _ in self.names:
            self.current = (self.current + 1) % len(self.names)
            if self.names[self.current] in self.active:
                return

    @contextmanager
    def turn(self, name: str):
        with self._cond:
            self._cond.wait_for(lambda: self.names[self.current] == name)
            self.order.append(name)
        try:
            yield
        finally:
            with self._cond:
                self._advance()
                self._cond.notify_all()

    def leave(self, name: str) -> None:
        with self._cond:
            self.active.discard(name)
            if self.names[self.current] == name:
                self._advance()
            self._cond.notify_all()


def run_lockstep(runs: dict[str, EmbeddedRun], start=None) -> list[str]:
    """Run `runs` in threads of this process, taking turns; re-raise the first failure.
    `start()` runs first, in this thread (default: Ray, which must not belong to a run's
    thread: it would die with it). Returns who held each turn."""
    (start or start_local_ray)()
    lock = Lockstep(list(runs))
    errors: dict[str, BaseException] = {}

    def go(name: str) -> None:
        try:
            runs[name].run()
        except BaseException as err:  # noqa: BLE001 - handed to the caller below
            errors[name] = err
        finally:
            lock.leave(name)

    for name, run in runs.items():
        run.turn = lambda name=name: lock.turn(name)
    threads = [threading.Thread(target=go, args=(name,), name=f"bench-{name}") for name in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in runs:
        if name in errors:
            raise RuntimeError(f"the {name} run failed: {errors[name]}") from errors[name]
    return lock.order


def _later(values: list[float]) -> list[float]:
    """The steps after the first (which pays one-time warm-up), unless there is only one."""
    return values[1:] if len(values) > 1 else values


def run_figures(run_dir: Path) -> dict:
    """Per-step times, sampled digests and headline figures of one run folder."""
    records = read_records(Path(run_dir) / "metrics.jsonl")
    steps = latest_per_step(records, "step")
    evals = latest_per_step(records, "eval")
    lengths = {r["step"]: r for r in latest_per_step(records, "lengths")}
    rollout = [s["time_rollout"] for s in steps]
    whole = [sum(s.get(f"time_{p}", 0.0) for p in STEP_PHASES) for s in steps]
    generated = [sum(map(sum, lengths[s["step"]]["groups"])) if s["step"] in lengths else 0 for s in steps]
    trained = [s.get("train_tokens", 0.0) for s in steps]
    train_time = [s.get("time_train", 0.0) for s in steps]
    return {
        "steps": [s["step"] for s in steps],
        "step_seconds_per_step": whole,
        "rollout_seconds_per_step": rollout,
        "reward_per_step": [s.get("reward_mean") for s in steps],
        "digests": {r["step"]: r["digests"] for r in latest_per_step(records, "rollouts")},
        "step_seconds": statistics.median(_later(whole)),
        "rollout_seconds": statistics.median(_later(rollout)),
        "rollout_share": statistics.median([r / w for r, w in zip(rollout, whole) if w > 0]),
        "rollout_tokens_per_second": sum(_later(generated)) / max(1e-9, sum(_later(rollout))),
        "train_tokens_per_second": sum(_later(trained)) / max(1e-9, sum(_later(train_time))),
        "accuracy": {e["step"]: e["accuracy"] for e in evals},
        "accuracy_sampled": {e["step"]: e["accuracy_sampled"] for e in evals if "accuracy_sampled" in e},
        "accuracy_change": accuracy_change(evals),
        "accuracy_sampled_change": accuracy_change(evals, "_sampled"),
        "acceptance_length": statistics.fmean([s["acceptance_length"] for s in steps]) if steps else 0.0,
        "acceptance_per_step": [s.get("acceptance_length", 0.0) for s in steps],
        "lent_fraction": statistics.fmean([s.get("lent_fraction", 0.0) for s in steps]) if steps else 0.0,
        "near_ties": sum(s.get("near_ties", 0) for s in steps),
    }


def compare_runs(base: dict, tlt: dict) -> dict:
    """Ratios (baseline / tlt, > 1 is faster) of two runs' figures and the sameness checks."""
    common = [s for s in base["steps"] if s in tlt["steps"]]
    b_at = {s: i for i, s in enumerate(base["steps"])}
    t_at = {s: i for i, s in enumerate(tlt["steps"])}
    step_ratios = [base["step_seconds_per_step"][b_at[s]] / tlt["step_seconds_per_step"][t_at[s]] for s in common]
    rollout_ratios = [base["rollout_seconds_per_step"][b_at[s]] / tlt["rollout_seconds_per_step"][t_at[s]] for s in common]
    differing = {}
    for s in common:
        a, b = base["digests"].get(s), tlt["digests"].get(s)
        if a is None or b is None:
            differing[s] = None  # not recorded: cannot be checked
        else:
            differing[s] = sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
    rewards_equal = all(base["reward_per_step"][b_at[s]] == tlt["reward_per_step"][t_at[s]] for s in common)
    strip = ("digests", "step_seconds_per_step", "rollout_seconds_per_step", "reward_per_step")
    return {
        "baseline": {k: v for k, v in base.items() if k not in strip},
        "tlt": {k: v for k, v in tlt.items() if k not in strip},
        "step_speedup": statistics.median(_later(step_ratios)) if common else None,
        "rollout_speedup": statistics.median(_later(rollout_ratios)) if common else None,
        "step_speedup_per_step": step_ratios,
        "rollout_speedup_per_step": rollout_ratios,
        "differing_rollouts": differing,
        "identical_rollouts": bool(common) and all(v == 0 for v in differing.values()),
        "rewards_equal": rewards_equal,
    }


def compare(job: ReasoningRLJob, out: Path, progress: bool = True) -> dict:
    out = Path(out)
    runs = {"baseline": baseline_of(job), "tlt": copy.deepcopy(job)}
    for variant in runs.values():  # each run checkpoints in its own folder, never in a shared runPolicy.checkpoint.path
        variant.spec.run_policy.checkpoint.path = None
    order = run_lockstep({name: EmbeddedRun(variant, run_dir=out / name, fresh=True, progress=progress, label=name)
                          for name, variant in runs.items()})
    figures = {name: run_figures(out / name) for name in runs}
    result = compare_runs(figures["baseline"], figures["tlt"])
    result["schedule"] = "lockstep"  # the runs took turns step by step
    result["turns"] = len(order)
    result["seed"] = job.spec.algorithm.seed
    # The tlt run's report shows the baseline beside it.
    (out / "tlt" / COMPARISON_FILE).write_text(json.dumps({"baseline": str((out / "baseline").absolute())}))
    write_report(out / "tlt", f"tlt run: {job.metadata.name} (against the baseline)")
    (out / "comparison.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def print_comparison(result: dict, file=None) -> None:
    file = file or sys.stdout  # looked up now: a default bound at import would keep a replaced stdout
    b, t = result["baseline"], result["tlt"]
    last = lambda d: d[max(d)] if d else float("nan")  # noqa: E731
    first = lambda d: d[min(d)] if d else float("nan")  # noqa: E731
    rows = [
        ("median step seconds (after step 1)", b["step_seconds"], t["step_seconds"]),
        ("median rollout seconds", b["rollout_seconds"], t["rollout_seconds"]),
        ("rollout share of the step", b["rollout_share"], t["rollout_share"]),
        ("rollout tokens per second", b["rollout_tokens_per_second"], t["rollout_tokens_per_second"]),
        ("trained tokens per second", b["train_tokens_per_second"], t["train_tokens_per_second"]),
        ("mean acceptance length", b["acceptance_length"], t["acceptance_length"]),
        ("fraction of worker time lent", b["lent_fraction"], t["lent_fraction"]),
        ("near-tie draws recomputed (all steps)", b["near_ties"], t["near_ties"]),
        ("held-out greedy accuracy, first", first(b["accuracy"]), first(t["accuracy"])),
        ("held-out greedy accuracy, last", last(b["accuracy"]), last(t["accuracy"])),
        ("held-out pass@1 (sampled), first", first(b["accuracy_sampled"]), first(t["accuracy_sampled"])),
        ("held-out pass@1 (sampled), last", last(b["accuracy_sampled"]), last(t["accuracy_sampled"])),
    ]
    print(f"{'':38} {'baseline':>10} {'tlt':>10}", file=file)
    for label, x, y in rows:
        print(f"{label:38} {x:10.3f} {y:10.3f}", file=file)
    for key, label in (("accuracy_change", "greedy accuracy"), ("accuracy_sampled_change", "pass@1")):
        c = t.get(key)
        if c:
            print(f"held-out {label} (tlt run): {describe_change(c)}", file=file)
    diff = result["differing_rollouts"]
    print("differing rollouts per step: " + ", ".join(f"{s}: {n}" for s, n in diff.items())
          + ("  (identical)" if result["identical_rollouts"] else "  (NOT identical)"), file=file)
    print(f"rewards equal at every step: {result['rewards_equal']}", file=file)
    print(f"whole-step speedup {result['step_speedup']:.2f}x, rollout-phase speedup {result['rollout_speedup']:.2f}x "
          f"(medians over the steps after the first; algorithm seed {result['seed']}; the runs took turns "
          "step by step)", file=file)
    print(json.dumps(result, default=float), file=file)
