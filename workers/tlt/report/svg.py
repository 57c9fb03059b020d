"""Small self-contained SVG charts (no plotting library needed on a laptop or in a pod)."""

from __future__ import annotations

import html
import math

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"]
ROLE_COLORS = {
    "rollout": "#2563eb",
    "drafter": "#16a34a",
    "trainer": "#9333ea",
    "reward": "#ea580c",
    "idle": "#d1d5db",
}


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * step:
            step *= mult
            break
    first = math.floor(lo / step) * step
    ticks, value = [], first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


class _Frame:
    """Axes of one chart: maps data coordinates to pixels."""

    def __init__(self, width, height, x_range, y_range, left=56, right=16, top=44, bottom=36):
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = left, right, top, bottom
        self.x_ticks = _ticks(*x_range)
        self.y_ticks = _ticks(*y_range)
        self.x0, self.x1 = min(self.x_ticks[0], x_range[0]), max(self.x_ticks[-1], x_range[1])
        self.y0, self.y1 = min(self.y_ticks[0], y_range[0]), max(self.y_ticks[-1], y_range[1])

    def x(self, v):
        span = (self.x1 - self.x0) or 1.0
        return self.left + (v - self.x0) / span * (self.width - self.left - self.right)

    def y(self, v):
        span = (self.y1 - self.y0) or 1.0
        return self.height - self.bottom - (v - self.y0) / span * (self.height - self.top - self.bottom)

    def axes(self, title, x_label, y_label) -> list[str]:
        parts = [f'<text x="{self.left}" y="16" class="title">{html.escape(title)}</text>']
        for t in self.y_ticks:
            y = self.y(t)
            parts.append(f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
            parts.append(f'<text x="{self.left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_fmt(t)}</text>')
        for t in self.x_ticks:
            x = self.x(t)
            parts.append(f'<text x="{x:.1f}" y="{self.height - self.bottom + 16}" class="tick" text-anchor="middle">{_fmt(t)}</text>')
        parts.append(
            f'<text x="{(self.left + self.width - self.right) / 2:.1f}" y="{self.height - 4}" class="label" '
            f'text-anchor="middle">{html.escape(x_label)}</text>'
        )
        parts.append(
            f'<text x="12" y="{(self.top + self.height - self.bottom) / 2:.1f}" class="label" text-anchor="middle" '
            f'transform="rotate(-90 12 {(self.top + self.height - self.bottom) / 2:.1f})">{html.escape(y_label)}</text>'
        )
        return parts


def _svg(width, height, parts) -> str:
    style = (
        # Explicit dark fills: an SVG inherits no text colour from the page, and viewers differ.
        "<style>.title{font:600 14px sans-serif;fill:#111}.tick{font:11px sans-serif;fill:#222}"
        ".label{font:12px sans-serif;fill:#111}.grid{stroke:#d1d5db}.legend{font:12px sans-serif;fill:#111}</style>"
    )
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">{style}{"".join(parts)}</svg>'


def _legend(names, colors, x, y) -> list[str]:
    parts = []
    for i, (name, color) in enumerate(zip(names, colors)):
        parts.append(f'<rect x="{x + i * 150}" y="{y - 9}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{x + i * 150 + 14}" y="{y}" class="legend">{html.escape(name)}</text>')
    return parts


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], x_label="step", y_label="", width=560, height=260,
               labels: dict[tuple[float, float], str] | None = None) -> str:
    """Lines with markers, one per named series of (x, y) points; `labels` annotate points."""
    points = [p for pts in series.values() for p in pts]
    if not points:
        return _svg(width, 60, [f'<text x="10" y="30" class="title">{html.escape(title)}: no data yet</text>'])
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    frame = _Frame(width, height, (min(xs), max(xs)), (min(0.0, min(ys)), max(ys)))
    parts = frame.axes(title, x_label, y_label)
    for color, (name, pts) in zip(PALETTE, series.items()):
        pts = sorted(pts)
        path = " ".join(f"{'M' if i == 0 else 'L'}{frame.x(x):.1f},{frame.y(y):.1f}" for i, (x, y) in enumerate(pts))
        parts.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in pts:
            parts.append(f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="3" fill="{color}"><title>{html.escape(name)} {_fmt(x)}: {y:.4g}</title></circle>')
    for (x, y), text in (labels or {}).items():
        parts.append(f'<text x="{frame.x(x):.1f}" y="{frame.y(y) - 7:.1f}" class="tick" text-anchor="middle">{html.escape(text)}</text>')
    parts += _legend(list(series), PALETTE, frame.left, 34)
    return _svg(width, height, parts)


def stacked_bars(title: str, steps: list[int], parts_by_name: dict[str, list[float]], y_label="seconds", width=560, height=260) -> str:
    """One stacked bar per step (e.g. rollout / reward / train time)."""
    if not steps:
        return line_chart(title, {})
    totals = [sum(values[i] for values in parts_by_name.values()) for i in range(len(steps))]
    frame = _Frame(width, height, (min(steps) - 0.5, max(steps) + 0.5), (0.0, max(totals) or 1.0))
    out = frame.axes(title, "step", y_label)
    bar = max(2.0, (frame.x(1) - frame.x(0)) * 0.7 if len(steps) > 1 else 40.0)
    for i, step in enumerate(steps):
        bottom = 0.0
        for color, (name, values) in zip(PALETTE, parts_by_name.items()):
            value = values[i]
            y_top, y_bottom = frame.y(bottom + value), frame.y(bottom)
            out.append(
                f'<rect x="{frame.x(step) - bar / 2:.1f}" y="{y_top:.1f}" width="{bar:.1f}" height="{max(0.0, y_bottom - y_top):.1f}" '
                f'fill="{color}"><title>step {step} {html.escape(name)}: {value:.2f}s</title></rect>'
            )
            bottom += value
    out += _legend(list(parts_by_name), PALETTE, frame.left, 34)
    return _svg(width, height, out)


def grouped_bars(title: str, steps: list[int], series: dict[str, list[float]], y_label="seconds", width=560,
                 height=260) -> str:
    """Bars side by side per step, one per named series (e.g. baseline and tlt step time)."""
    if not steps:
        return line_chart(title, {})
    top = max((v for values in series.values() for v in values), default=0.0) or 1.0
    frame = _Frame(width, height, (min(steps) - 0.5, max(steps) + 0.5), (0.0, top))
    out = frame.axes(title, "step", y_label)
    group = (frame.x(1) - frame.x(0)) * 0.8 if len(steps) > 1 else 80.0
    bar = group / max(1, len(series))
    for i, step in enumerate(steps):
        for j, (color, (name, values)) in enumerate(zip(PALETTE, series.items())):
            if i >= len(values):
                continue
            x = frame.x(step) - group / 2 + j * bar
            y = frame.y(values[i])
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{max(0.0, frame.y(0) - y):.1f}" '
                       f'fill="{color}"><title>step {step} {html.escape(name)}: {values[i]:.2f}</title></rect>')
    out += _legend(list(series), PALETTE, frame.left, 34)
    return _svg(width, height, out)


def timeline(title: str, spans: dict[str, list[tuple[float, float, str]]], width=1140, row=22) -> str:
    """Gantt chart: per worker, spans (start, end, role) colored by role; the axis starts at the
    first span (model loading and start-up before it are not worker time)."""
    workers = sorted(spans)
    if not workers:
        return line_chart(title, {})
    end = max(e for ss in spans.values() for _, e, _ in ss) or 1.0
    begin = min(s for ss in spans.values() for s, _, _ in ss)
    height = 44 + 32 + row * len(workers)  # top margin (title, legend) + axis + rows
    frame = _Frame(width, height, (begin, max(end, begin + 1e-3)), (0.0, 1.0), left=110, top=44, bottom=32)
    out = [f'<text x="{frame.left}" y="16" class="title">{html.escape(title)}</text>']
    for t in frame.x_ticks:
        x = frame.x(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{frame.top}" y2="{height - frame.bottom}" class="grid"/>')
        out.append(f'<text x="{x:.1f}" y="{height - frame.bottom + 14}" class="tick" text-anchor="middle">{_fmt(t)}s</text>')
    for i, worker in enumerate(workers):
        y = frame.top + i * row
        out.append(f'<text x="{frame.left - 6}" y="{y + row * 0.7:.1f}" class="tick" text-anchor="end">{html.escape(worker)}</text>')
        for start, stop, role in spans[worker]:
            color = ROLE_COLORS.get(role, "#6b7280")
            out.append(
                f'<rect x="{frame.x(start):.1f}" y="{y + 2}" width="{max(0.5, frame.x(stop) - frame.x(start)):.1f}" '
                f'height="{row - 4}" fill="{color}"><title>{html.escape(worker)} {html.escape(role)} '
                f'{start:.1f}-{stop:.1f}s</title></rect>'
            )
    out += _legend(list(ROLE_COLORS), list(ROLE_COLORS.values()), frame.left, 34)
    return _svg(width, height, out)
