"""Chart geometry for the model, compare and experiments pages, drawn as inline SVG by the templates.

No chart library: every mark is an SVG element whose text goes through Jinja's escaping, so
sample text in a tooltip never becomes markup. The plot's data ranges ride on the <svg> as
data attributes; static/app.js maps a brushed pixel range back to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Tableau 10: distinguishable, and readable on white.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
WIDTH, HEIGHT = 640, 320
MARGIN = (12, 16, 40, 56)  # top, right, bottom, left
SMALL = (320, 180)  # width, height of a small multiple (one run's loss curve)


@dataclass(frozen=True)
class Frame:
    """A plot area and its data ranges: x in [x0, x1] maps to [left, right], y to [bottom, top]."""

    x0: float
    x1: float
    y0: float
    y1: float
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def left(self) -> float:
        return MARGIN[3]

    @property
    def right(self) -> float:
        return self.width - MARGIN[1]

    @property
    def top(self) -> float:
        return MARGIN[0]

    @property
    def bottom(self) -> float:
        return self.height - MARGIN[2]

    def x(self, value: float) -> float:
        return round(self.left + (value - self.x0) / (self.x1 - self.x0) * (self.right - self.left), 2)

    def y(self, value: float) -> float:
        return round(self.bottom - (value - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top), 2)

    def x_ticks(self) -> list[tuple[float, str]]:
        return [(self.x(t), _label(t)) for t in nice_ticks(self.x0, self.x1)]

    def y_ticks(self) -> list[tuple[float, str]]:
        return [(self.y(t), _label(t)) for t in nice_ticks(self.y0, self.y1)]


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    color: str
    dataset: str
    start: float
    end: float
    samples: int


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    color: str
    sample_id: int
    dataset: str
    text: str
    zero_shot_loss: float
    one_shot_loss: float
    miwv: float


@dataclass(frozen=True)
class CurvePoint:
    x: float
    y: float
    screen_percent: int
    screened: int
    kept: int
    top_k: int
    recall: float


@dataclass(frozen=True)
class LossPoint:
    x: float
    y: float
    step: int
    loss: float


@dataclass(frozen=True)
class LossCurve:
    """One training run's loss curve, on a frame all runs of a page share."""

    run_id: int
    frame: Frame
    points: list[LossPoint]


@dataclass(frozen=True)
class Chart:
    frame: Frame
    marks: list  # Bars or Points
    legend: list[tuple[str, str]]  # (dataset, colour)


def colours(datasets: list[str]) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(set(datasets)))}


def histogram(rows: list[dict]) -> Chart | None:
    """Stacked bars from (dataset, bin, bin_start, width, samples) rows; None when nothing is scored."""
    if not rows:
        return None
    width = rows[0]["width"]
    lo = min(r["bin_start"] for r in rows)
    hi = max(r["bin_start"] for r in rows) + width
    totals: dict[int, int] = {}
    for row in rows:
        totals[row["bin"]] = totals.get(row["bin"], 0) + row["samples"]
    frame = Frame(lo, hi, 0, _nice_top(max(totals.values())))
    palette = colours([r["dataset"] for r in rows])
    stacked: dict[int, int] = {}
    bars = []
    for row in rows:
        below = stacked.get(row["bin"], 0)
        stacked[row["bin"]] = below + row["samples"]
        left, right = frame.x(row["bin_start"]), frame.x(row["bin_start"] + width)
        top, bottom = frame.y(below + row["samples"]), frame.y(below)
        bars.append(
            Bar(
                left + 0.5,
                top,
                max(right - left - 1, 1),
                bottom - top,
                palette[row["dataset"]],
                row["dataset"],
                row["bin_start"],
                row["bin_start"] + width,
                row["samples"],
            )
        )
    return Chart(frame, bars, list(palette.items()))


def scatter(rows: list[dict]) -> Chart | None:
    """L_one against L_zero, square, both axes from 0; None when nothing is scored."""
    if not rows:
        return None
    top = _nice_top(max(max(r["zero_shot_loss"], r["one_shot_loss"]) for r in rows))
    frame = Frame(0, top, 0, top, width=420, height=420)
    palette = colours([r["dataset"] for r in rows])
    points = [
        Point(
            frame.x(r["zero_shot_loss"]),
            frame.y(r["one_shot_loss"]),
            palette[r["dataset"]],
            r["sample_id"],
            r["dataset"],
            r["user_text"],
            r["zero_shot_loss"],
            r["one_shot_loss"],
            r["miwv"],
        )
        for r in rows
    ]
    return Chart(frame, points, list(palette.items()))


def curve(rows: list[dict]) -> Chart | None:
    """The compare page's agreement curve from (screen_percent, screened, top_k, kept, recall) rows:
    x the share of A's ranking screened (%), y the share of B's top K kept, from (0, 0); None when
    the pool is empty."""
    if not rows:
        return None
    frame = Frame(0, 100, 0, 1)
    points = [
        CurvePoint(
            frame.x(r["screen_percent"]),
            frame.y(r["recall"]),
            r["screen_percent"],
            r["screened"],
            r["kept"],
            r["top_k"],
            r["recall"],
        )
        for r in rows
    ]
    return Chart(frame, points, [])


def loss_curves(rows: list[dict]) -> list[LossCurve]:
    """A small chart per run from (run_id, step, loss) rows, all on the same axes so that runs compare
    at a glance: steps from 0, losses over the range of every run's (rounded out to ticks)."""
    if not rows:
        return []
    losses = [r["loss"] for r in rows]
    frame = Frame(0, _nice_top(max(r["step"] for r in rows)), *_rounded_out(min(losses), max(losses)), *SMALL)
    by_run: dict[int, list[LossPoint]] = {}
    for r in rows:
        by_run.setdefault(r["run_id"], []).append(
            LossPoint(frame.x(r["step"]), frame.y(r["loss"]), r["step"], r["loss"])
        )
    return [LossCurve(run_id, frame, points) for run_id, points in by_run.items()]


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) inside [lo, hi]."""
    if hi <= lo:
        return [lo]
    step = _tick_step(lo, hi, count)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 10) for k in range(first, int(math.floor(hi / step + 1e-9)) + 1)]


def _tick_step(lo: float, hi: float, count: int) -> float:
    """The round distance (1, 2 or 5 times a power of ten) that cuts [lo, hi] into at most `count` parts."""
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _rounded_out(lo: float, hi: float, count: int = 4) -> tuple[float, float]:
    """[lo, hi] widened to round ticks (by half a unit each way when it is a single value)."""
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    step = _tick_step(lo, hi, count)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step


def _nice_top(value: float) -> float:
    """The smallest tick at or above `value` (an axis ends on a round number)."""
    if value <= 0:
        return 1.0
    ticks = nice_ticks(0, value * 1.0001)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else value
    return ticks[-1] if ticks[-1] >= value else ticks[-1] + step


def _label(value: float) -> str:
    return f"{value:g}"
