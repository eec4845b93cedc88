"""When a backlog will be sent: the queue simulated against the sending pace, the throttle's rolling
windows and each recipient group's sending window.

The model follows the claim: messages go out oldest ``not_before`` first, at most ``pace`` a second
(the finest throttle limit, or the rate measured, whichever is lower), never more than a coarser
limit's count in any of its rolling windows (the sends already made in them included), and a group
only while its window is open; a group whose window closes waits for the next opening, behind the
groups that were ready before.

The backlog moves in chunks of at most ``1/MAX_STEPS`` of it, so a simulation takes at most a few
thousand steps whatever its size; a coarse limit smaller than a chunk is folded into the pace (its
sustained rate), which misjudges by at most one of its windows in more than ``MAX_STEPS``. What the
model does not know: other campaigns and transactional mail of the same tenant sharing the throttle,
per-domain limits, and retries still to come.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tidings.scheduling.windows import SendWindow, openings

MAX_STEPS = 500  # chunks the backlog is cut into
MAX_ITERATIONS = 20_000  # steps, waits included, before giving up (None)
HORIZON = timedelta(days=400)  # beyond it, "when" is not worth an answer


@dataclass(frozen=True, slots=True)
class PendingGroup:
    """Messages that become ready together and share a sending window."""

    count: int
    ready_at: datetime  # the earliest ``not_before`` among them
    window: SendWindow | None = None
    timezone: str = "UTC"  # the zone the window is read in


@dataclass(frozen=True, slots=True)
class RollingLimit:
    count: int  # at most this many starts
    seconds: float  # in any rolling window of this length


@dataclass(frozen=True, slots=True)
class Send:
    at: datetime  # a past start (or several at one instant)
    count: int


def estimate_finish(
    *,
    groups: Sequence[PendingGroup],
    pace: float | None,
    limits: Sequence[RollingLimit] = (),
    history: Sequence[Send] = (),
    now: datetime,
) -> datetime | None:
    """When the last of ``groups`` will have started; None without a pace, or beyond the horizon.

    ``pace``: messages a second while sending. ``limits``: the throttle's rolling windows coarser
    than the pace. ``history``: recent starts that still count in those windows.
    """
    total = sum(g.count for g in groups)
    if total == 0:
        return now
    if pace is None or pace <= 0:
        return None
    chunk = math.ceil(total / MAX_STEPS)
    counted: list[RollingLimit] = []
    for limit in limits:
        if limit.count >= chunk:
            counted.append(limit)
        else:
            pace = min(pace, limit.count / limit.seconds)
    simulation = _Simulation(groups, pace, counted, history, now, chunk)
    return simulation.run()


class _Window:
    """A group's open intervals, advanced as simulated time passes."""

    def __init__(self, window: SendWindow, timezone: str, now: datetime) -> None:
        self._intervals: Iterator[tuple[datetime, datetime]] = openings(window, timezone, now)
        self.opens, self.closes = (t.timestamp() for t in next(self._intervals))

    def opening_at_or_after(self, t: float) -> float:
        while self.closes <= t:
            self.opens, self.closes = (x.timestamp() for x in next(self._intervals))
        return max(self.opens, t)


class _Throttle:
    """The coarse rolling windows, with the starts that still count in each."""

    def __init__(self, limits: Sequence[RollingLimit], history: Sequence[Send]) -> None:
        self._limits = limits
        self._starts: list[deque[tuple[float, int]]] = [deque() for _ in limits]
        self._sums = [0] * len(limits)
        for send in sorted(history, key=lambda s: s.at):
            self.record(send.at.timestamp(), send.count)

    def earliest(self, t: float, size: int) -> float:
        """The first instant from ``t`` at which ``size`` more starts fit in every window."""
        at = t
        for i, limit in enumerate(self._limits):
            starts = self._starts[i]
            while starts and starts[0][0] <= t - limit.seconds:
                self._sums[i] -= starts.popleft()[1]
            excess = self._sums[i] + size - limit.count
            for when, count in starts:
                if excess <= 0:
                    break
                excess -= count
                at = max(at, when + limit.seconds)
        return at

    def record(self, t: float, size: int) -> None:
        for i in range(len(self._limits)):
            self._starts[i].append((t, size))
            self._sums[i] += size


class _Simulation:
    def __init__(
        self,
        groups: Sequence[PendingGroup],
        pace: float,
        limits: Sequence[RollingLimit],
        history: Sequence[Send],
        now: datetime,
        chunk: int,
    ) -> None:
        self.pace, self.chunk, self.now = pace, chunk, now
        self.throttle = _Throttle(limits, history)
        self.remaining = [g.count for g in groups]
        self.windows = [
            None if g.window is None else _Window(g.window, g.timezone, now) for g in groups
        ]
        start = now.timestamp()
        # (when it is ready, its place in the queue): the claim takes the oldest not_before first.
        self.queue = [
            (max(start, g.ready_at.timestamp()), i, i) for i, g in enumerate(groups) if g.count
        ]
        heapq.heapify(self.queue)

    def run(self) -> datetime | None:
        t = finish = self.now.timestamp()
        horizon = (self.now + HORIZON).timestamp()
        for _ in range(MAX_ITERATIONS):
            if not self.queue:
                return datetime.fromtimestamp(round(finish, 3), UTC)
            ready, order, g = heapq.heappop(self.queue)
            start = max(t, ready)
            if start > horizon:
                return None
            window = self.windows[g]
            if window is not None and window.opening_at_or_after(start) > start:
                # Closed: the group waits for its opening, and goes behind those ready before.
                heapq.heappush(self.queue, (window.opening_at_or_after(start), order, g))
                continue
            size = min(self.chunk, self.remaining[g])
            if window is not None:  # no chunk runs past the close
                size = min(size, max(1, int((window.closes - start) * self.pace)))
            allowed = self.throttle.earliest(start, size)
            if allowed > start:
                # The throttle is shared: nothing starts before then (its window may close meanwhile).
                heapq.heappush(self.queue, (ready, order, g))
                t = allowed
                continue
            self.throttle.record(start, size)
            self.remaining[g] -= size
            t = finish = start + size / self.pace
            if self.remaining[g]:
                heapq.heappush(self.queue, (ready, order, g))
        return None
