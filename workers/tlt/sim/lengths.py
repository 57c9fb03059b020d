"""Response lengths: log-normal, Zipf, fixed, or an empirical file of lengths.

Specs on the command line: `lognormal:median=3500,sigma=1.0`, `zipf:a=1.6,scale=400`,
`fixed:1000`, `file:lengths.txt` (one integer per line, or a JSON list, or JSONL with a
`length`/`response_tokens`/`tokens` field; sampled with replacement), or
`trace:lengths.txt` (the same files replayed in order: step 1 takes the first
promptsPerStep x groupSize lengths, step 2 the next, wrapping around). Every length is
clipped to [1, max tokens]: a response that would run longer is cut at the limit, as
the engine cuts it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class LengthSpecError(ValueError):
    """A length spec that cannot be used; the message names the fix."""


@dataclass(frozen=True)
class LengthModel:
    kind: str  # lognormal | zipf | fixed | empirical | trace
    params: tuple[tuple[str, float], ...] = ()
    values: tuple[int, ...] = ()  # empirical lengths

    def param(self, name: str, default: float | None = None) -> float:
        found = dict(self.params).get(name, default)
        if found is None:
            raise LengthSpecError(f"{self.kind} lengths need {name}=...")
        return found

    def sample(self, rng: np.random.Generator, count: int, max_tokens: int) -> np.ndarray:
        if self.kind == "lognormal":
            raw = rng.lognormal(math.log(self.param("median", 3500.0)), self.param("sigma", 1.0), size=count)
        elif self.kind == "zipf":
            raw = rng.zipf(self.param("a", 1.6), size=count) * self.param("scale", 400.0)
        elif self.kind == "fixed":
            raw = np.full(count, self.param("tokens"))
        elif self.kind == "empirical":
            raw = rng.choice(np.asarray(self.values), size=count, replace=True)
        elif self.kind == "trace":
            raw = np.resize(np.asarray(self.values), count)
        else:
            raise LengthSpecError(f"unknown length model {self.kind!r}")
        return np.clip(np.rint(raw), 1, max_tokens).astype(np.int64)

    def replay(self, steps: int, count: int, max_tokens: int) -> list[np.ndarray]:
        """A trace's lengths step after step, in order (wrapping around when the trace is short)."""
        values = np.resize(np.asarray(self.values), steps * count)
        return [np.clip(values[i * count:(i + 1) * count], 1, max_tokens).astype(np.int64) for i in range(steps)]

    def describe(self) -> str:
        if self.kind in ("empirical", "trace"):
            how = "replayed" if self.kind == "trace" else "sampled"
            return f"{how} from a file ({len(self.values)} lengths, mean {np.mean(self.values):.0f})"
        return self.kind + ":" + ",".join(f"{k}={v:g}" for k, v in self.params)


def parse_lengths(text: str) -> LengthModel:
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind == "file":
        return LengthModel("empirical", values=tuple(read_lengths(rest)))
    if kind == "trace":
        return LengthModel("trace", values=tuple(read_lengths(rest)))
    if kind == "fixed":
        try:
            return LengthModel("fixed", (("tokens", float(rest)),))
        except ValueError:
            raise LengthSpecError(f"fixed lengths need a number, e.g. fixed:1000, got {text!r}") from None
    if kind not in ("lognormal", "zipf"):
        raise LengthSpecError(
            f"unknown lengths {text!r}; use lognormal:median=3500,sigma=1.0, zipf:a=1.6,scale=400, fixed:N, "
            "file:PATH or trace:PATH"
        )
    params = []
    for item in filter(None, (p.strip() for p in rest.split(","))):
        name, eq, value = item.partition("=")
        try:
            params.append((name.strip(), float(value)))
        except ValueError:
            raise LengthSpecError(f"{item!r} in {text!r} is not name=number") from None
        if not eq:
            raise LengthSpecError(f"{item!r} in {text!r} is not name=number")
    model = LengthModel(kind, tuple(params))
    if kind == "zipf" and model.param("a", 1.6) <= 1.0:
        raise LengthSpecError("zipf needs a > 1")
    return model


def read_lengths(path: str | Path) -> list[int]:
    """Integers from a file: one per line, a JSON list, or JSONL records with a length field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise LengthSpecError(f"cannot read lengths file {path}: {err.strerror or err}") from None
    stripped = text.strip()
    values: list[int] = []
    if stripped.startswith("["):
        values = [int(v) for v in json.loads(stripped)]
    else:
        for number, line in enumerate(stripped.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("{"):
                record = json.loads(line)
                value = next((record[k] for k in ("length", "response_tokens", "tokens") if k in record), None)
                if value is None:
                    raise LengthSpecError(f"{path}:{number}: record has no length/response_tokens/tokens field")
                values.append(int(value))
            else:
                try:
                    values.append(int(float(line)))
                except ValueError:
                    raise LengthSpecError(f"{path}:{number}: {line!r} is not a length") from None
    if not values or min(values) < 1:
        raise LengthSpecError(f"{path}: need at least one length, all >= 1")
    return values
