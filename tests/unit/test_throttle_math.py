"""GCRA admission: the promise "at most N in any rolling window" holds for any arrival pattern."""

from __future__ import annotations

import random

from tidings.delivery.throttle import Window, admit


def _simulate(windows: list[Window], arrivals: list[float]) -> list[float]:
    tats = [0.0] * len(windows)
    starts: list[float] = []
    for now in arrivals:
        result = admit(windows, tats, now=now, wanted=random.randint(1, 50))
        tats = list(result.tats)
        starts.extend([now] * result.count)
    return starts


def _max_in_window(starts: list[float], seconds: float) -> int:
    best, left = 0, 0
    for right, t in enumerate(starts):
        while t - starts[left] >= seconds:
            left += 1
        best = max(best, right - left + 1)
    return best


def test_no_rolling_window_ever_holds_more_than_its_limit() -> None:
    random.seed(7)
    windows = [Window(10, 1.0), Window(120, 60.0)]
    arrivals = sorted(random.uniform(0, 300) for _ in range(20_000))
    starts = _simulate(windows, arrivals)
    assert _max_in_window(starts, 1.0) <= 10
    assert _max_in_window(starts, 60.0) <= 120
    assert len(starts) > 500  # and it does let traffic through


def test_a_day_limit_allows_a_burst_then_spreads_the_rest() -> None:
    result = admit([Window(1000, 86400.0)], [0.0], now=1_000.0, wanted=5000)
    assert result.count == 100
    assert result.next_free_at > 1_000.0


def test_next_free_at_is_when_one_more_start_fits() -> None:
    window = Window(1, 1.0)
    first = admit([window], [0.0], now=100.0, wanted=2)
    assert first.count == 1
    again = admit([window], list(first.tats), now=first.next_free_at, wanted=1)
    assert again.count == 1
    too_soon = admit([window], list(first.tats), now=first.next_free_at - 0.01, wanted=1)
    assert too_soon.count == 0
