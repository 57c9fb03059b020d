"""The coordinator's report to the operator: progress (rate-limited), completed step and drafter.

The pods may not write their job's status (the operator alone does): the head pod
writes its report into the job's progress ConfigMap (`<job>-progress`, the one
object its Role lets it patch, through `tlt.worker.kube`), as JSON under the keys
`progress`, `step` and `drafter`; the operator validates it and copies it into
`status.progress`, `status.step` and `status.drafter`. Progress goes out at most once per `interval`
seconds (the operator plans on it; more often would only load the API server); the
latest report always gets out, from a background thread, so a phase change during a
long blocking call (training) is not lost. A failed write is logged and retried with
the next one: the run never stops for the API server.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Callable

from tlt.api.model import DrafterStatus, ProgressStatus, ShardProgress

log = logging.getLogger("tlt.worker.status")

PROGRESS_INTERVAL = 2.0


def progress_body(step: int, phase: str, shards: list[ShardProgress], now: datetime | None = None,
                  batch_threshold: int | None = None) -> dict:
    """`status.progress` as the operator reads it (camelCase, shards by index)."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ProgressStatus(step=step, phase=phase, batch_threshold=batch_threshold,
                          shards=sorted(shards, key=lambda s: s.shard), updated_at=stamp).to_manifest()


def progress_map_name(job: str) -> str:
    """The ConfigMap the coordinator reports into (the only object the pods may write)."""
    return f"{job}-progress"


def report_data(body: dict) -> dict[str, str]:
    """A report (`progress`, `step`, `drafter` as the status has them) as the ConfigMap's data."""
    return {k: (str(v) if k == "step" else json.dumps(v, sort_keys=True, separators=(",", ":"))) for k, v in body.items()}


class ProgressWriter:
    """Writes the coordinator's report; `patch(body)` is the only I/O (tests pass their own).
    `body` holds the status fields being reported: progress, step, drafter."""

    def __init__(self, patch: Callable[[dict], None], interval: float = PROGRESS_INTERVAL, clock=time.monotonic):
        self._patch = patch
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._io = threading.Lock()  # one write at a time, so an older report never lands after a newer one
        self._pending: dict | None = None
        self._last_write = float("-inf")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.writes = 0

    @classmethod
    def for_job(cls, namespace: str, name: str, api_client=None, **options) -> "ProgressWriter":
        """Into the job's progress ConfigMap (the operator creates it with the job's other children)."""
        from tlt.worker.kube import WorkerApi

        api = WorkerApi(api_client)
        config_map = progress_map_name(name)

        def patch(body: dict) -> None:
            api.patch_config_map_data(namespace, config_map, report_data(body))

        return cls(patch, **options)

    # ---- what the coordinator calls ----
    def progress(self, step: int, phase: str, shards: list[ShardProgress], batch_threshold: int | None = None) -> None:
        """Report live progress; written now if the interval has passed, else as soon as it has."""
        body = progress_body(step, phase, shards, batch_threshold=batch_threshold)
        with self._lock:
            self._pending = {**(self._pending or {}), "progress": body}
        self._wake.set()
        self.flush(force=False)

    def step_completed(self, step: int, drafter_version: int, acceptance_length: float) -> None:
        """A completed step is written at once (with any pending progress)."""
        drafter = DrafterStatus(version=drafter_version, acceptance_length=round(max(0.0, acceptance_length), 2)).to_manifest()
        with self._lock:
            self._pending = {**(self._pending or {}), "step": step, "drafter": drafter}
        self.flush(force=True)

    def flush(self, force: bool = True) -> bool:
        """Write what is pending (respecting the interval unless `force`); True when written.

        Writes go out one at a time: a forced flush waits for a write under way; an unforced
        one leaves its report pending for the background thread."""
        if not self._io.acquire(blocking=force):
            return False
        try:
            with self._lock:
                if self._pending is None:
                    return False
                if not force and self._clock() - self._last_write < self.interval:
                    return False
                body, self._pending = self._pending, None
                self._last_write = self._clock()
            try:
                self._patch(body)
            except Exception as err:  # the API server may be briefly away: keep the report for the next try
                log.warning("writing the job status failed (retrying): %s", getattr(err, "reason", None) or err)
                with self._lock:
                    self._pending = {**body, **(self._pending or {})}
                return False
            self.writes += 1
            return True
        finally:
            self._io.release()

    # ---- background delivery of the latest report ----
    def start(self) -> "ProgressWriter":
        self._thread = threading.Thread(target=self._run, name="status-writer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            wait = self.interval - (self._clock() - self._last_write)
            if wait > 0 and self._stop.wait(wait):
                break
            self.flush(force=False)

    def close(self) -> None:
        """Stop the thread and write what is still pending."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush(force=True)
