"""metrics.jsonl: one JSON record per line, appended as the job runs.

Record kinds (field `kind`):
- `run`: start of a run or a resume (job name, totals, wall time `t0`).
- `step`: one completed RL step (rewards, step time split, acceptance, lent fraction).
- `eval`: held-out evaluation (accuracy, response lengths).
- `role`: a worker switched role at time `t` (seconds since the run's first start).
- `rollouts`: one step's sampled responses as short digests (group-major), so two runs can
  be checked to have sampled the same tokens (`tlt bench e2e`).
- `lengths`: one step's per-sequence response lengths by group, the mean prompt length, the
  resolved speculation threshold and the rollout time (replayed by `tlt simulate --calibrate`).
The report is rendered from this file alone, so it can be rebuilt at any time
(`tlt report RUN_DIR`).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path


class MetricsLog:
    """Thread-safe appender of metrics records, flushed per record (a killed run keeps them)."""

    def __init__(self, path: str | Path, clock=time.time):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        first = next((r for r in read_records(self.path) if r.get("kind") == "run"), None)
        self.t0 = first["t0"] if first else clock()

    def now(self) -> float:
        """Seconds since the run first started (resumes continue the same clock)."""
        return self._clock() - self.t0

    def write(self, kind: str, **fields) -> dict:
        record = {"kind": kind, "t": round(self.now(), 3), **fields}
        line = json.dumps(record, sort_keys=True, default=float)
        with self._lock, self.path.open("a") as f:
            f.write(line + "\n")
        return record


def read_records(path: str | Path) -> list[dict]:
    """All records of a metrics file; a torn last line (killed mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
