"""The coordinator on a cluster: the embedded loop, with the job's pods as its workers.

It runs in the head pod (`tlt worker --head`: trainer-0, or worker-0 colocated). What
differs from `tlt run`:
- every actor is pinned to its own pod's Ray node (`PodNodes`);
- the elastic policy runs in the operator, not here: this loop reports per-shard
  progress into `status.progress`, and carries out the tail consolidations the
  operator requests on the head pod; lends and returns happen in the pods
  themselves (operator -> `tlt.dev/assigned-role` -> role watcher -> `set_role`);
- each completed step goes to `status.step` and `status.drafter`.
"""

from __future__ import annotations

import logging
import queue
from pathlib import Path

from tlt.api.model import ReasoningRLJob, ShardProgress
from tlt.api.topology import pod_nodes
from tlt.coordinator.actors import WorkerPool
from tlt.coordinator.loop import Checkpoint, EmbeddedRun
from tlt.models.resolve import resolve_model
from tlt.worker.status import ProgressWriter


log = logging.getLogger("tlt.coordinator")


def shard_progress(progress: dict) -> list[ShardProgress]:
    """The shards' reports as `status.progress.shards` (index from the worker name `<role>-<index>`)."""
    return [
        ShardProgress(shard=int(name.rsplit("-", 1)[1]), running=p.running, waiting=p.waiting, finished=p.finished,
                      generated_tokens=p.generated_tokens, speculating=p.speculating, role=p.role)
        for name, p in progress.items()
    ]


class ConfigurationError(Exception):
    """What a retry cannot fix, found before training starts: the pod exits 2 and the job fails at once."""


def _hub_not_found(err: Exception) -> bool:
    """A hub id, revision or access the hub refuses for good (not a network error, which is retried)."""
    try:
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:
        return False
    return isinstance(err, (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError))


class ClusterRun(EmbeddedRun):
    def __init__(self, job: ReasoningRLJob, *, status: ProgressWriter, run_dir: str | Path | None = None,
                 progress: bool = True):
        super().__init__(job, run_dir=run_dir, progress=progress)
        self.status = status
        self.download_models = True
        self._consolidation_requests: queue.SimpleQueue = queue.SimpleQueue()
        self._last_progress: dict = {}

    def _say(self, text: str) -> None:
        log.info("%s", text)  # a pod's log, not a terminal: lines, no progress bars

    def check_configuration(self) -> None:
        """Raise ConfigurationError for what the job's spec gets wrong and a retry cannot fix: a model
        folder without a model, a hub id the hub does not know, missing data files, a tokenizer that
        does not load. Anything failing later (or a network error here) is retried by the operator."""
        try:
            model_dir = resolve_model(self.spec.model, progress=False, download=True)
            from tlt.coordinator.prompts import load_tokenizer

            load_tokenizer(self.spec, model_dir)  # spec.model.tokenizer when set
        except (FileNotFoundError, ValueError) as err:
            raise ConfigurationError(str(err)) from err
        except Exception as err:
            if _hub_not_found(err):
                raise ConfigurationError(f"spec.model.hubId: {err}") from err
            raise
        data = self.spec.data
        for field, path in (("path", data.path if data else None), ("evalPath", data.eval_path if data else None)):
            if path and not Path(path).is_file():
                raise ConfigurationError(f"spec.data.{field}: {path} does not exist in the pod; mount it (spec.storage)")

    # ---- called from the head pod's role watcher (another thread) ----
    def request_consolidation(self, request: dict) -> None:
        self._consolidation_requests.put(request)

    # ---- the hooks of the embedded loop ----
    def _make_pool(self, model_dir: Path, ckpt: Checkpoint | None) -> WorkerPool:
        return WorkerPool(self.spec, str(model_dir), checkpoint=ckpt.folder if ckpt else None, nodes=pod_nodes(self.spec))

    def _control(self, step: int, progress: dict) -> None:
        for fault in self.pool.take_faults():  # a lost rollout or drafter pod, and its worker re-created
            self.log.write("fault", **fault)
        self._last_progress = progress
        self.status.progress(step, "rollout", shard_progress(progress), self.threshold)
        self._consolidate(step)

    def _phase_roles(self, step: int, phase: str) -> None:
        # The operator returns lent pods when it sees the phase; shards also reclaim on their own
        # as soon as new weights or work arrive, so nothing waits for it here.
        self.status.progress(step, phase, shard_progress(self._last_progress), self.threshold)
        if phase == "train":
            self._set_role(self.pool.trainer_name, "trainer")

    def _step_done(self, step: int, record: dict) -> None:
        self.status.step_completed(step, record["drafter_version"], record["acceptance_length"])

    # ---- tail consolidation, as the operator asked ----
    def _consolidate(self, step: int) -> None:
        while True:
            try:
                request = self._consolidation_requests.get_nowait()
            except queue.Empty:
                return
            if not isinstance(request, dict) or request.get("step") != step:
                continue  # a request of an earlier step (or a restarted run): its shards have moved on
            moves = request.get("moves")
            for move in moves if isinstance(moves, list) else []:
                parsed = self._parse_move(move)
                if parsed is None:
                    self._say(f"ignoring a malformed consolidation request: {move}")
                    continue
                target, sources, counts = parsed
                moved = self.pool.consolidate(target, sources, counts)
                if moved:
                    self.log.write("consolidate", target=target, sources=sources, moved=moved)

    def _parse_move(self, move) -> tuple[str, list[str], list[int]] | None:
        """(target, sources, counts) of one requested move, by shard name; None when it names no shards of this run."""
        if not isinstance(move, dict) or not isinstance(move.get("sources"), list) or not isinstance(move.get("sequences"), list):
            return None
        prefix = f"{self.job.metadata.name}-"
        target = str(move.get("target", "")).removeprefix(prefix)
        sources = [str(s).removeprefix(prefix) for s in move["sources"]]
        counts = move["sequences"]
        known = set(self.pool.shard_names)
        if (target not in known or not set(sources) <= known or target in sources or len(counts) != len(sources)
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts)):
            return None
        return target, sources, counts
