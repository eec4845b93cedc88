"""The completion estimate: the queue simulated against pace, rolling throttle windows and sending
windows, checked against finishes worked out by hand and against a message-by-message simulation."""

from __future__ import annotations

import heapq
import random
from datetime import UTC, datetime, timedelta

import pytest

from tidings.scheduling.estimate import (
    MAX_STEPS,
    PendingGroup,
    RollingLimit,
    Send,
    estimate_finish,
)
from tidings.scheduling.windows import SendWindow, is_open, next_opening, parse_send_window

NOW = datetime(2025, 6, 11, 10, 0, tzinfo=UTC)  # a Wednesday


def office(zone: str, start: str = "09:00", end: str = "17:00") -> SendWindow:
    window = parse_send_window({"start": start, "end": end, "timezone": zone})
    assert window is not None
    return window


def test_a_paced_backlog_takes_count_over_pace() -> None:
    finish = estimate_finish(groups=[PendingGroup(2000, NOW)], pace=100.0, now=NOW)
    assert finish == NOW + timedelta(seconds=20)


def test_nothing_pending_is_done_now_and_no_pace_is_no_answer() -> None:
    assert estimate_finish(groups=[], pace=None, now=NOW) == NOW
    assert estimate_finish(groups=[PendingGroup(5, NOW)], pace=None, now=NOW) is None


def test_a_coarse_limit_sends_bursts_and_waits() -> None:
    # 10 a second but 300 a minute: 300 in 30 s, a pause to the minute, and so on.
    finish = estimate_finish(
        groups=[PendingGroup(1000, NOW)],
        pace=10.0,
        limits=[RollingLimit(300, 60.0)],
        now=NOW,
    )
    assert finish == NOW + timedelta(seconds=190)


def test_sends_already_made_count_against_the_day() -> None:
    # 800 of a 1,000-a-day limit went out in the last hour: 200 now, the rest a day later.
    history = [Send(NOW - timedelta(minutes=60 - i), 20) for i in range(40)]
    finish = estimate_finish(
        groups=[PendingGroup(500, NOW)],
        pace=100.0,
        limits=[RollingLimit(1000, 86400.0)],
        history=history,
        now=NOW,
    )
    assert finish is not None
    assert NOW + timedelta(hours=23) < finish < NOW + timedelta(hours=24)


def test_each_zone_waits_for_its_own_office_hours() -> None:
    # 10:00 UTC: open in Berlin (12:00) until 15:00 UTC; New York opens at 13:00 UTC.
    berlin, new_york = office("Europe/Berlin"), office("America/New_York")
    groups = [
        PendingGroup(3600, NOW, berlin, "Europe/Berlin"),
        PendingGroup(3600, NOW, new_york, "America/New_York"),
    ]
    finish = estimate_finish(groups=groups, pace=1.0, now=NOW)
    # Berlin's 3600 take 10:00-11:00; New York's start at its opening, 13:00, and end at 14:00.
    assert finish == datetime(2025, 6, 11, 14, 0, tzinfo=UTC)


def test_what_a_window_cannot_take_today_goes_tomorrow() -> None:
    short = office("UTC", "09:00", "10:00")
    finish = estimate_finish(groups=[PendingGroup(5400, NOW, short, "UTC")], pace=1.0, now=NOW)
    # Closed at 10:00: 3600 tomorrow 09:00-10:00, 1800 the day after.
    assert finish == datetime(2025, 6, 13, 9, 30, tzinfo=UTC)


def test_a_group_whose_window_closes_goes_behind_those_ready_before() -> None:
    # The claim takes the oldest not_before first: Tokyo's leftovers wait for its next opening.
    tokyo = office("Asia/Tokyo", "09:00", "19:05")  # closes at 10:05 UTC
    groups = [
        PendingGroup(600, NOW, tokyo, "Asia/Tokyo"),
        PendingGroup(300, NOW + timedelta(seconds=1)),
    ]
    finish = estimate_finish(groups=groups, pace=1.0, now=NOW)
    # 300 Tokyo by 10:05, then 300 unwindowed by 10:10, then Tokyo's 300 from 00:00 UTC.
    assert finish == datetime(2025, 6, 12, 0, 5, tzinfo=UTC)


def brute_force(
    groups: list[PendingGroup], pace: float, limits: list[RollingLimit], now: datetime
) -> datetime:
    """One message at a time, oldest ready first, as the claim would take them."""
    t = now.timestamp()
    starts: list[float] = []
    remaining = [g.count for g in groups]
    queue = [(max(now, g.ready_at).timestamp(), i) for i, g in enumerate(groups)]
    heapq.heapify(queue)
    finish = t
    while queue:
        ready, g = heapq.heappop(queue)
        at = max(t, ready)
        group = groups[g]
        when = datetime.fromtimestamp(at, UTC)
        if group.window is not None and not is_open(group.window, group.timezone, when):
            heapq.heappush(queue, (next_opening(group.window, group.timezone, when).timestamp(), g))
            continue
        allowed = at
        for limit in limits:
            inside = [s for s in starts if s > at - limit.seconds]
            if len(inside) >= limit.count:
                allowed = max(allowed, inside[len(inside) - limit.count] + limit.seconds)
        if allowed > at:
            heapq.heappush(queue, (ready, g))
            t = allowed
            continue
        starts.append(at)
        remaining[g] -= 1
        t = finish = at + 1 / pace
        if remaining[g]:
            heapq.heappush(queue, (ready, g))
    return datetime.fromtimestamp(finish, UTC)


@pytest.mark.parametrize("seed", range(12))
def test_the_chunked_simulation_agrees_with_one_message_at_a_time(seed: int) -> None:
    rng = random.Random(seed)
    zones = ["UTC", "Europe/Berlin", "Asia/Tokyo", "America/New_York", "Australia/Lord_Howe"]
    groups = []
    for _ in range(rng.randint(1, 4)):
        zone = rng.choice(zones)
        start = rng.randint(0, 23)
        window = SendWindow(
            start * 60, (start + rng.randint(1, 8)) * 60 % 1440 or 1440, frozenset(range(7)), zone
        )
        groups.append(
            PendingGroup(
                rng.randint(1, MAX_STEPS // 4),
                NOW + timedelta(minutes=rng.randint(0, 600)),
                window if rng.random() < 0.8 else None,
                zone,
            )
        )
    pace = rng.choice([0.05, 0.5, 2.0])
    limits = (
        [RollingLimit(rng.randint(5, 40), rng.choice([60.0, 3600.0]))] if rng.random() < 0.5 else []
    )
    expected = brute_force(groups, pace, limits, NOW)
    got = estimate_finish(groups=groups, pace=pace, limits=limits, now=NOW)
    assert got is not None
    assert abs((got - expected).total_seconds()) < 1.0
