"""A campaign's charts as plain geometry, drawn as inline SVG by its templates: sends per minute,
and people's and machines' opens and clicks over time.

Drawn on the server: no charting library, no script, and the same figures are also given as a
table for screen readers and for anyone who prefers numbers to bars.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tidings.services.campaign_stats import MAX_POINTS, TimelinePoint

CHART_HEIGHT = 120  # px, the tallest bar
BAR_WIDTH = 10  # px
BAR_GAP = 2  # px
MAX_BARS = 60  # minutes shown, the latest ones
MIN_WIDTH = 240  # px, so that the time labels fit under a single bar


@dataclass(frozen=True, slots=True)
class Bar:
    minute: datetime  # the start of the minute, UTC
    count: int  # messages sent in that minute
    x: int
    y: int
    height: int


@dataclass(frozen=True, slots=True)
class Chart:
    bars: list[Bar]
    width: int
    height: int
    peak: int  # the largest count, the top of the scale

    @property
    def total(self) -> int:
        return sum(bar.count for bar in self.bars)


def sends_per_minute_chart(points: Sequence[tuple[datetime, int]]) -> Chart:
    """Bars for consecutive minutes from the first to the last send (quiet minutes show as 0)."""
    if not points:
        return Chart(bars=[], width=0, height=CHART_HEIGHT, peak=0)
    by_minute = dict(points)
    last = max(by_minute)
    first = max(min(by_minute), last - timedelta(minutes=MAX_BARS - 1))
    peak = max(n for minute, n in by_minute.items() if minute >= first)
    bars: list[Bar] = []
    minute = first
    while minute <= last:
        n = by_minute.get(minute, 0)
        height = round(n * CHART_HEIGHT / peak) if peak else 0
        if n and not height:
            height = 1  # a minute with sends is never drawn as empty
        x = len(bars) * (BAR_WIDTH + BAR_GAP)
        bars.append(Bar(minute=minute, count=n, x=x, y=CHART_HEIGHT - height, height=height))
        minute += timedelta(minutes=1)
    width = max(len(bars) * (BAR_WIDTH + BAR_GAP), MIN_WIDTH)
    return Chart(bars=bars, width=width, height=CHART_HEIGHT, peak=peak)


# -- opens and clicks over time ------------------------------------------------------------------

PLOT_WIDTH = 600  # px, the drawing area of the engagement chart (the SVG scales down)
PLOT_HEIGHT = 160  # px
MARGIN_LEFT = 44  # px: the count labels
MARGIN_BOTTOM = 34  # px: the time labels and the axis title
MARGIN_TOP = 8  # px
MARKERS_UP_TO = 60  # points: past this, a series is told by its line's dashes alone


@dataclass(frozen=True, slots=True)
class Series:
    """One line of the engagement chart. Told apart by its dashes and marker shape as well as its
    colour (the CSS class), so it reads in greyscale and to the colour-blind."""

    key: str  # the CSS class and the name of the table column
    label: str
    marker: str  # "circle" or "square"
    hollow: bool  # machines' markers are hollow
    points: list[tuple[float, float]]  # x, y in the SVG
    values: list[int]

    @property
    def path(self) -> str:
        return " ".join(f"{x:g},{y:g}" for x, y in self.points)

    @property
    def total(self) -> int:
        return sum(self.values)


@dataclass(frozen=True, slots=True)
class Tick:
    value: int
    y: float


@dataclass(frozen=True, slots=True)
class EngagementChart:
    times: list[datetime]  # the start of each interval, UTC
    interval_seconds: int
    series: list[Series]
    ticks: list[Tick]  # the count scale
    width: int
    height: int
    left: int  # the plot's edges in the SVG
    top: int
    right: int
    bottom: int
    markers: bool

    @property
    def interval_text(self) -> str:
        """The interval as it follows "per": "minute", "5 minutes", "hour", "6 hours", "day"."""
        minutes = self.interval_seconds // 60
        if minutes >= 24 * 60:
            return "day"
        count, unit = (minutes // 60, "hour") if minutes >= 60 else (minutes, "minute")
        return unit if count == 1 else f"{count} {unit}s"

    @property
    def peak(self) -> int:
        return max((max(s.values, default=0) for s in self.series), default=0)

    def rows(self) -> list[tuple[datetime, list[int]]]:
        """The figures by interval, for the table that repeats the chart."""
        return [(at, [s.values[i] for s in self.series]) for i, at in enumerate(self.times)]


#: The four lines: people's opens and clicks (solid), machines' (dashed), circles for opens and
#: squares for clicks.
SERIES = (
    ("opens", "Opens by people", "circle", False),
    ("clicks", "Clicks by people", "square", False),
    ("opens_machine", "Opens by machines", "circle", True),
    ("clicks_machine", "Clicks by machines", "square", True),
)


def _scale_top(peak: int) -> int:
    """The top of the count scale: the smallest of 2, 4, 6, 8, 10, 20, 40 ... at or above the
    peak, so that its half, the middle tick, is a whole number too."""
    step = 1
    while step * 10 < peak:
        step *= 10
    return next(nice * step for nice in (2, 4, 6, 8, 10) if nice * step >= peak)


def engagement_chart(
    points: Sequence[TimelinePoint], interval_seconds: int, since: datetime | None = None
) -> EngagementChart | None:
    """Lines for consecutive intervals from the campaign's start (``since``, else the first
    hit) to the last hit, quiet ones 0, the latest ``MAX_POINTS`` of them; None when there is
    nothing to draw."""
    if not points:
        return None
    step = timedelta(seconds=interval_seconds)
    by_time = {p.at: p for p in points}
    last = max(by_time)
    first = min(by_time)
    if since is not None:
        # The interval the start falls in, on the same grid as the points (unix time).
        start = datetime.fromtimestamp(
            since.timestamp() // interval_seconds * interval_seconds, first.tzinfo
        )
        first = min(first, start)
    first = max(first, last - step * (MAX_POINTS - 1))
    times = []
    at = first
    while at <= last:
        times.append(at)
        at += step
    values = {
        key: [int(getattr(by_time[t], key)) if t in by_time else 0 for t in times]
        for key, *_ in SERIES
    }
    top_value = _scale_top(max(max(v) for v in values.values()))
    left, top = MARGIN_LEFT, MARGIN_TOP
    right, bottom = left + PLOT_WIDTH, top + PLOT_HEIGHT

    def x(i: int) -> float:
        if len(times) == 1:
            return left + PLOT_WIDTH / 2
        return round(left + i * PLOT_WIDTH / (len(times) - 1), 1)

    def y(n: int) -> float:
        return round(bottom - n * PLOT_HEIGHT / top_value, 1)

    series = [
        Series(
            key=key,
            label=label,
            marker=marker,
            hollow=hollow,
            points=[(x(i), y(n)) for i, n in enumerate(values[key])],
            values=values[key],
        )
        for key, label, marker, hollow in SERIES
    ]
    return EngagementChart(
        times=times,
        interval_seconds=interval_seconds,
        series=series,
        ticks=[Tick(value, y(value)) for value in (0, top_value // 2, top_value)],
        width=right + 16,
        height=bottom + MARGIN_BOTTOM,
        left=left,
        top=top,
        right=right,
        bottom=bottom,
        markers=len(times) <= MARKERS_UP_TO,
    )
