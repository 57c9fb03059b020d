"""The embedded RL loop: `tlt run job.yaml` on one machine.

Rollout shards and the trainer are Ray actors; a local control loop polls shard
progress and applies `tlt.elastic.plan` (lend drained shards to drafter training,
return them, consolidate the tail), exactly as the operator does on a cluster.
Each completed step is checkpointed (policy, optimizer, drafter, data position,
step), logged to metrics.jsonl, and the report is re-rendered.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from tlt.api.model import ReasoningRLJob, ReasoningRLJobSpec
from tlt.api.topology import shard_role
from tlt.coordinator.actors import WorkerPool
from tlt.coordinator.metrics import coordinator_metrics
from tlt.coordinator.prompts import PromptSource, load_tokenizer, reward_name
from tlt.elastic import Consolidate, Lend, Progress, Return, ShardState, Worker, plan
from tlt.engine.types import Request
from tlt.models.resolve import resolve_model
from tlt.report import MetricsLog, write_report
from tlt.report.html import summarize
from tlt.rewards.pool import RewardPool
from tlt.trainer.algorithm import shaped_rewards, step_advantages
from tlt.trainer.losses import dynamic_sampling

CHECKPOINTS = "checkpoints"
POLL_SECONDS = 0.2  # the coordinator's control interval; a shard that drains wakes it at once
PROBE_PROMPTS = 8  # prompts the drafter's acceptance length is measured on for `batchThreshold: auto`


def request_seed(seed: int, step: int, group: int, sample: int) -> int:
    """A per-sequence seed: outputs do not depend on which shard or batch runs them."""
    digest = hashlib.blake2b(f"{seed}/{step}/{group}/{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 62) - 1)


def rollout_digest(tokens) -> str:
    """A short fingerprint of one sampled response (its token ids)."""
    return hashlib.blake2b(",".join(map(str, tokens)).encode(), digest_size=6).hexdigest()


@dataclass
class Checkpoint:
    step: int
    position: int
    drafter_version: int
    folder: Path


def checkpoint_root(spec: ReasoningRLJobSpec | None, run_dir: Path) -> Path:
    """Where a run's checkpoints go: `runPolicy.checkpoint.path` when set, else `<run folder>/checkpoints`."""
    path = spec.run_policy.checkpoint.path if spec is not None else None
    return Path(path).absolute() if path else Path(run_dir) / CHECKPOINTS


def latest_checkpoint(run_dir: Path, spec: ReasoningRLJobSpec | None = None) -> Checkpoint | None:
    """The newest complete checkpoint (written to a temporary name, then renamed)."""
    root = checkpoint_root(spec, run_dir)
    if not root.is_dir():
        return None
    done = sorted((p for p in root.glob("step-*") if (p / "state.json").is_file()), key=lambda p: int(p.name[5:]))
    if not done:
        return None
    meta = json.loads((done[-1] / "state.json").read_text())
    return Checkpoint(meta["step"], meta["position"], meta["drafter_version"], done[-1])


class EmbeddedRun:
    def __init__(self, job: ReasoningRLJob, *, run_dir: str | Path | None = None, fresh: bool = False,
                 progress: bool = True, max_steps: int | None = None, label: str = ""):
        self.job = job
        self.spec = job.spec
        self.run_dir = Path(run_dir or self.spec.output.path).absolute()
        if fresh and self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        if fresh:  # checkpoints kept outside the run folder (runPolicy.checkpoint.path) start over too
            for old in checkpoint_root(self.spec, self.run_dir).glob("*step-*"):
                shutil.rmtree(old, ignore_errors=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.max_steps = max_steps  # stop after this many steps in this invocation (tests, demos)
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.metrics = coordinator_metrics()
        self.roles: dict[str, str] = {}
        self.download_models = False  # embedded runs read models from disk only
        self.threshold: int | None = None  # speculation's batch threshold, once resolved
        # `turn()` wraps each stretch of work (start-up, every step, the export): `tlt bench e2e`
        # sets one that lets two runs take turns step by step, so both meet the same machine.
        self.turn = contextlib.nullcontext
        self.label = label  # prefixes progress lines when two runs share a terminal

    # ---- helpers ----
    def _say(self, text: str) -> None:
        if self.progress:
            tqdm.write(f"[{self.label}] {text}" if self.label else text, file=sys.stderr)

    def _set_role(self, worker: str, role: str) -> None:
        if self.roles.get(worker) != role:
            self.roles[worker] = role
            self.log.write("role", worker=worker, role=role)

    def _threshold(self, prompts: PromptSource, position: int, eos) -> int:
        value = self.spec.speculative.batch_threshold
        if value != "auto":
            return int(value)
        items, _ = prompts.take(position, PROBE_PROMPTS)  # the run's next prompts; its position stays
        return self.pool.calibrate_threshold([list(item.ids) for item in items], eos)

    # ---- the run ----
    def run(self) -> dict:
        spec = self.spec
        self.pool = None
        try:
            # Start-up is one turn from the first line: two runs in one process (`tlt bench e2e`)
            # must not even import lazily at once (transformers' lazy imports race between threads).
            with self.turn():
                model_dir = resolve_model(spec.model, progress=self.progress, download=self.download_models)
                tokenizer = load_tokenizer(spec, model_dir)
                prompts = PromptSource(spec, tokenizer)
                eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
                ckpt = latest_checkpoint(self.run_dir, spec)
                start_step, position, drafter_version = (
                    (ckpt.step, ckpt.position, ckpt.drafter_version) if ckpt else (0, 0, 0))
                self.log.write("run", job=self.job.metadata.name, t0=self.log.t0, resumed_from=start_step,
                               total_steps=spec.algorithm.steps)
                if ckpt:
                    self._say(f"resuming {self.job.metadata.name} after step {start_step} from {ckpt.folder}")
                self.pool = self._make_pool(model_dir, ckpt)
                threshold = self.threshold = self._threshold(prompts, position, eos)
                self.pool.start_shards(threshold)
                for w in self.pool.shard_names:
                    self._set_role(w, "rollout")
                self._set_role(self.pool.trainer_name, "trainer")
                if start_step == 0 and spec.eval.every_steps:
                    self._evaluate(prompts, 0, eos)
            steps_bar = tqdm(total=spec.algorithm.steps, initial=start_step, desc="steps", unit="step",
                             disable=not self.progress or bool(self.label), file=sys.stderr, position=0)
            done_here = 0
            for step in range(start_step + 1, spec.algorithm.steps + 1):
                if self.max_steps is not None and done_here >= self.max_steps:
                    break
                with self.turn():
                    position, drafter_version = self._step(step, prompts, position, drafter_version, eos)
                done_here += 1
                steps_bar.update(1)
            steps_bar.close()
            if self.max_steps is None or done_here < self.max_steps or step == spec.algorithm.steps:
                with self.turn():
                    self._finish()
        finally:
            if self.pool is not None:
                self.pool.shutdown()
        summary = summarize(self.log_records())
        write_report(self.run_dir, f"tlt run: {self.job.metadata.name}")
        return summary

    # ---- what a cluster run overrides (tlt.coordinator.cluster) ----
    def _make_pool(self, model_dir: Path, ckpt: Checkpoint | None) -> WorkerPool:
        return WorkerPool(self.spec, str(model_dir), checkpoint=ckpt.folder if ckpt else None)

    def _control(self, step: int, progress: dict) -> None:
        """One control tick during rollout: embedded, this process runs the elastic policy itself."""
        progress_now = Progress(step=step, phase="rollout", batch_threshold=self.threshold)
        self._apply(plan(self.spec, self._workers(progress), progress_now), progress)

    def _step_done(self, step: int, record: dict) -> None:
        """After a step is logged (a cluster run reports it in the job's status)."""

    def log_records(self):
        from tlt.report import read_records

        return read_records(self.run_dir / "metrics.jsonl")

    def _requests(self, step: int, items, first_group: int, eos) -> list[Request]:
        a = self.spec.algorithm
        return [
            Request(prompt=list(item.ids), max_tokens=a.max_response_tokens, stop_ids=eos, temperature=a.temperature,
                    top_p=a.top_p, seed=request_seed(a.seed, step, first_group + g, k), group=first_group + g,
                    id=(first_group + g, k))
            for g, item in enumerate(items)
            for k in range(a.group_size)
        ]

    def _step(self, step: int, prompts: PromptSource, position: int, drafter_version: int, eos) -> tuple[int, int]:
        spec, a = self.spec, self.spec.algorithm
        t_start = time.perf_counter()
        groups: list[tuple] = []  # (prompt item, its group_size results), in sampling order
        scores: dict = {}
        seconds = {"rollout": 0.0, "reward": 0.0}
        acceptance, lent_seconds, rounds, near_ties = [], 0.0, 0, 0
        pool = RewardPool(reward_name(spec), workers=spec.reward.workers, timeout=spec.reward.timeout_seconds)
        try:
            want = a.prompts_per_step
            while True:
                items, position = prompts.take(position, want)
                first = len(groups)
                t0 = time.perf_counter()
                results, stats = self._rollout(step, self._requests(step, items, first, eos), pool, items, first)
                seconds["rollout"] += time.perf_counter() - t0
                lent_seconds += stats["lent_seconds"]
                near_ties += stats["near_ties"]
                if stats["acceptance_length"]:
                    acceptance.append(stats["acceptance_length"])
                groups += [(item, [results[(first + g, k)] for k in range(a.group_size)]) for g, item in enumerate(items)]
                t0 = time.perf_counter()
                scores.update(pool.gather())  # most were scored while the tail decoded
                seconds["reward"] += time.perf_counter() - t0
                keep = list(range(len(groups)))
                if not a.dynamic_sampling.enabled:
                    break
                # DAPO: judge groups on the shaped rewards the advantages come from.
                shaped = [self._shaped(scores, i, results, a) for i, (_, results) in enumerate(groups)]
                decision = dynamic_sampling(shaped, a.prompts_per_step, rounds, a.dynamic_sampling.max_rounds)
                keep = decision.keep
                if not decision.sample_more:
                    break
                rounds, want = rounds + 1, decision.missing
        finally:
            pool.close()
        flat = [(i, k, groups[i][1][k]) for i in keep for k in range(a.group_size)]
        raw = torch.tensor([scores[(i, k)] for i, k, _ in flat], dtype=torch.float32)
        lengths = torch.tensor([len(r.tokens) for _, _, r in flat], dtype=torch.float32)
        train_seconds, metrics = 0.0, {}
        if flat:  # no group kept: skip the update (AdamW would still move the weights)
            t0 = time.perf_counter()
            self._phase_roles(step, "train")
            metrics = self.pool.train(
                prompts=[list(groups[i][0].ids) for i, _, _ in flat],
                responses=[list(r.tokens) for _, _, r in flat],
                advantages=step_advantages(raw, lengths, a).tolist(),
                old_logprobs=[list(r.logprobs) for _, _, r in flat],
                policy_version=step,
            )
            train_seconds = time.perf_counter() - t0
        # Drafter sync: average the replicas trained this step into the next version, then set
        # `auto` at the acceptance length measured this step (or the new version's, probed): part
        # of the step's time, which the baseline does not spend.
        t0 = time.perf_counter()
        self._phase_roles(step, "sync")
        if spec.drafter.enabled and step % spec.drafter.sync_every == 0:
            drafter_version = self.pool.sync_drafters(drafter_version)
        threshold, self.threshold = self.threshold, self.pool.tune_threshold()
        sync_seconds = time.perf_counter() - t0
        self._phase_roles(step, "idle")
        record = dict(
            step=step,
            reward_mean=float(raw.mean()) if raw.numel() else 0.0,
            response_len_mean=float(lengths.mean()) if lengths.numel() else 0.0,
            response_len_max=float(lengths.max()) if lengths.numel() else 0.0,
            time_rollout=seconds["rollout"], time_reward=seconds["reward"], time_train=train_seconds,
            time_sync=sync_seconds, acceptance_length=sum(acceptance) / len(acceptance) if acceptance else 0.0,
            drafter_version=drafter_version,
            lent_fraction=lent_seconds / max(1e-9, seconds["rollout"] * len(self.pool.shard_names)),
            groups_kept=len(keep), sampling_rounds=rounds + 1, step_seconds=time.perf_counter() - t_start,
            near_ties=near_ties,
            reward_timeouts=len(pool.timed_out),
            **{f"train_{k}": v for k, v in metrics.items()},
        )
        self.log.write("step", **record)
        # Per-sequence response lengths by group (group n ran on shard n mod shards), for
        # replaying this step's rollout in the simulator (`tlt simulate --calibrate`).
        # What was sampled, one short digest per sequence (group-major): `tlt bench e2e` checks
        # that the baseline and tlt runs sampled the same tokens at every step.
        self.log.write("rollouts", step=step, digests=[rollout_digest(r.tokens) for _, results in groups for r in results])
        self.log.write("lengths", step=step, shards=len(self.pool.shard_names),
                       groups=[[len(r.tokens) for r in results] for _, results in groups],
                       prompt_tokens=round(sum(len(item.ids) for item, _ in groups) / max(1, len(groups)), 1),
                       batch_threshold=threshold, time_rollout=seconds["rollout"], sampling_rounds=rounds + 1)
        self.metrics.record_step(record)
        self._step_done(step, record)
        if spec.eval.every_steps and (step % spec.eval.every_steps == 0 or step == spec.algorithm.steps):
            self._evaluate(prompts, step, eos)
        if step % spec.run_policy.checkpoint.every_steps == 0 or step == spec.algorithm.steps:
            self._checkpoint(step, position, drafter_version)
        write_report(self.run_dir, f"tlt run: {self.job.metadata.name}")
        self._say(
            f"step {step}/{spec.algorithm.steps}: reward {record['reward_mean']:.3f}, rollout {seconds['rollout']:.1f}s, "
            f"train {train_seconds:.1f}s, acceptance {record['acceptance_length']:.2f}, drafter v{drafter_version}"
        )
        return position, drafter_version

    @staticmethod
    def _shaped(scores: dict, group: int, results, algorithm) -> list[float]:
        rewards = torch.tensor([scores[(group, k)] for k in range(len(results))])
        lengths = torch.tensor([len(r.tokens) for r in results], dtype=torch.float32)
        return shaped_rewards(rewards, lengths, algorithm).tolist()

    def _phase_roles(self, step: int, phase: str) -> None:
        """Apply the policy's decisions for a phase without rollout progress (train, sync, idle).

        Embedded, training, syncing, evaluation and checkpoints run on every core of this
        machine, so a worker lent to drafter training outside rollout would only take CPU
        from them: lending is kept to the rollout phase and lent workers pause (on a
        cluster a lent rollout GPU is nobody else's, and the policy keeps it lent).
        """
        actions = plan(self.spec, self._workers({}), Progress(step=step, phase=phase))
        self._apply([a for a in actions if not isinstance(a, Lend)], {})
        for name in self.pool.shard_names:
            if self.pool.lent(name):
                self.pool.reclaim(name)
                self._set_role(name, "idle")
        if phase == "train":
            self._set_role(self.pool.trainer_name, "trainer")

    def _workers(self, progress: dict) -> list[Worker]:
        role = shard_role(self.spec)
        out = []
        for i, name in enumerate(self.pool.shard_names):
            p = progress.get(name)
            state = ShardState(running=p.running, waiting=p.waiting, finished=p.finished) if p else ShardState()
            out.append(Worker(name=name, role=role, index=i, assigned="drafter" if self.pool.lent(name) else None, shard=state))
        return out

    def _apply(self, actions, progress) -> None:
        for action in actions:
            if isinstance(action, Lend):
                if self.pool.lend(action.worker):
                    self._set_role(action.worker, "drafter")
            elif isinstance(action, Return):
                self.pool.reclaim(action.worker)
                self._set_role(action.worker, "rollout")
            elif isinstance(action, Consolidate):
                moved = self.pool.consolidate(action.target, action.sources, action.sequences)
                if moved:
                    self.log.write("consolidate", target=action.target, sources=list(action.sources), moved=moved)

    def _rollout(self, step, requests, rewards_pool, items, first) -> tuple[dict, dict]:
        """Decode `requests` over the shards (all samples of a group on one shard)."""
        by_group: dict[int, list[Request]] = {}
        for r in requests:
            by_group.setdefault(r.group, []).append(r)
        shards = self.pool.shard_names
        assignment: dict[str, list[Request]] = {name: [] for name in shards}
        for n, (group, reqs) in enumerate(sorted(by_group.items())):
            assignment[shards[n % len(shards)]].extend(reqs)
        for name in shards:
            self._set_role(name, "rollout")
        self.pool.start_rollout(step, assignment)
        results: dict = {}
        bar = tqdm(total=len(requests), desc=f"{self.label} rollout {step}".lstrip(), unit="seq", leave=False, disable=not self.progress,
                   file=sys.stderr, position=1)
        lent_seconds, last = 0.0, time.perf_counter()
        acceptance, near_ties = 0.0, {}
        while True:
            progress, finished = self.pool.poll()
            near_ties.update({name: p.near_ties for name, p in progress.items()})
            now = time.perf_counter()
            lent_seconds += (now - last) * sum(1 for s in shards if self.pool.lent(s))
            last = now
            for res in finished:
                results[res.id] = res
                g, _ = res.id
                item = items[g - first]
                rewards_pool.submit(res.id, item.prompt, self.pool.decode(res.tokens), item.answer, **item.meta)
                bar.update(1)
            running = sum(p.running + p.waiting for p in progress.values())
            spec_on = sum(1 for p in progress.values() if p.speculating)
            acc = [p.acceptance_length for p in progress.values() if p.acceptance_length]
            acceptance = sum(acc) / len(acc) if acc else acceptance
            bar.set_postfix(running=running, tail=sum(1 for p in progress.values() if 0 < p.running <= 4),
                            spec=f"{spec_on}/{len(shards)}", acc=f"{acceptance:.2f}",
                            lent=sum(1 for s in shards if self.pool.lent(s)))
            if len(results) == len(requests):
                break
            self._control(step, progress)
            self.pool.wait_for_drain([n for n, p in progress.items() if p.busy], POLL_SECONDS)
        bar.close()
        return results, {"lent_seconds": lent_seconds, "acceptance_length": acceptance,
                         "near_ties": sum(near_ties.values())}

    def _evaluate(self, prompts: PromptSource, step: int, eos) -> None:
        """Held-out greedy accuracy, and pass@1 at the evaluation temperature (default: the
        rollout's), one sample per prompt; every evaluation draws with the same seeds, so
        two evaluations differ by the policy only."""
        spec = self.spec
        if not prompts.heldout:
            return
        a, ev = spec.algorithm, spec.eval
        sampled_t = a.temperature if ev.temperature is None else ev.temperature
        modes = {"": (0.0, 1.0)}
        if sampled_t > 0:
            modes["_sampled"] = (sampled_t, a.top_p)
        from tlt.eval import score
        from tlt.eval.evaluate import pack_solved
        from tlt.rewards import get_reward

        reward = get_reward(reward_name(spec))
        figures: dict = {"prompts": len(prompts.heldout)}
        for suffix, (temperature, top_p) in modes.items():
            reqs = [
                Request(prompt=list(item.ids), max_tokens=a.max_response_tokens, stop_ids=eos, temperature=temperature,
                        top_p=top_p, seed=request_seed(a.seed, -1, i, 0), id=i)
                for i, item in enumerate(prompts.heldout)
            ]
            results = self.pool.evaluate(reqs)
            summary = score(prompts.heldout, [self.pool.decode(r.tokens) for r in results], [r.tokens for r in results],
                            reward, eos, temperature, a.max_response_tokens)
            figures[f"accuracy{suffix}"] = summary.accuracy
            figures[f"solved{suffix}"] = pack_solved(summary.solved)  # which prompts: paired comparisons
            figures[f"len_mean{suffix}"] = summary.mean_length
            figures[f"len_max{suffix}"] = summary.max_length
            if not suffix:
                figures["len_p90"] = summary.p90_length
        self.metrics.accuracy.set(figures["accuracy"])
        self.log.write("eval", step=step, **figures)
        sampled = f", pass@1 at t={sampled_t:g} {figures['accuracy_sampled']:.3f}" if "accuracy_sampled" in figures else ""
        self._say(f"eval after step {step}: held-out greedy accuracy {figures['accuracy']:.3f}{sampled} "
                  f"on {len(prompts.heldout)} prompts")

    def _checkpoint(self, step: int, position: int, drafter_version: int) -> None:
        root = checkpoint_root(self.spec, self.run_dir)
        tmp = root / f".step-{step}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        self.pool.save(tmp)
        (tmp / "state.json").write_text(json.dumps({"step": step, "position": position, "drafter_version": drafter_version}))
        final = root / f"step-{step}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        keep = self.spec.run_policy.checkpoint.keep
        old = sorted((p for p in root.glob("step-*")), key=lambda p: int(p.name[5:]))[:-keep]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)

    def _finish(self) -> None:
        out = self.run_dir
        self.pool.export(out / "policy", out / "drafter" if self.spec.output.export_drafter else None)
        self._say(f"exported the policy to {out / 'policy'}")
