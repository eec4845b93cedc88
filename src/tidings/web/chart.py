"""The sends-per-minute chart of a campaign as plain geometry, drawn as inline SVG by its template.

Drawn on the server: no charting library, no script, and the same figures are also given as a
table for screen readers and for anyone who prefers numbers to bars.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

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
