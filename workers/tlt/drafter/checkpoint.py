"""Asynchronous checkpoints: the training loop hands over an in-memory snapshot and
goes on; a background thread writes it (atomic rename), so the loop never waits for disk.

Only the newest pending snapshot is kept: if the writer is still busy with an older
one, a newer snapshot replaces the queued one (a checkpoint is a recovery point, not
a log).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

STATE_FILE = "trainer.pt"


def snapshot(obj):
    """Detached copies of every tensor in a nested dict/list (the loop may keep training)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.to("cpu")
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def write_state(folder: Path, state: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATE_FILE
    tmp = folder / f".{STATE_FILE}.tmp-{os.getpid()}-{threading.get_ident()}"
    torch.save(_to_cpu(state), tmp)
    os.replace(tmp, path)
    return path


def read_state(folder: str | Path, map_location="cpu") -> dict | None:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location=map_location, weights_only=False)


class AsyncCheckpointer:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._cond = threading.Condition()
        self._pending: dict | None = None
        self._busy = False
        self._closed = False
        self.written = 0
        self.last_written_step: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="drafter-checkpoint", daemon=True)
        self._thread.start()

    def submit(self, state: dict) -> None:
        """Queue an already-detached snapshot (see `snapshot`); returns at once."""
        with self._cond:
            if self._closed:
                raise RuntimeError("checkpointer is closed")
            self._pending = state
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None and self._closed:
                    return
                state, self._pending = self._pending, None
                self._busy = True
            try:
                write_state(self.folder, state)
                self.written += 1
                self.last_written_step = state.get("step")
            except BaseException as err:  # kept for the owner to see; the loop goes on
                self.error = err
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted snapshot is on disk (tests, shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def close(self, timeout: float | None = None) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
