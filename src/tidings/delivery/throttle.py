"""GCRA arithmetic for "at most N messages in any rolling window of W seconds", pure and clock-free.

GCRA keeps one number per window, the theoretical arrival time (TAT). With spacing T and burst B
(tolerance tau = (B - 1) * T) a start at time t is allowed when ``max(TAT, t) - tau <= t`` and then
moves TAT to ``max(TAT, t) + T``. Such a limiter lets ``B - 1 + W / T`` starts into any window of
length W, so a strict limit of N needs ``T = W / (N - B + 1)``. A plain token bucket of size N
would let almost 2N through one window; GCRA with this spacing never lets N + 1 through.

``SPACING_MARGIN`` widens T a little: the limit is promised at the *receiving* server, and the
network and the SMTP conversation add a few milliseconds of jitter between a start here and its
arrival there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SPACING_MARGIN = 1.05  # T is 5 % wider than the exact bound, absorbing delivery jitter
BURST_FRACTION = 10  # burst B = N / 10: a day's limit of 1,000 may start 100 at once, then spread
EPSILON = 1e-6  # seconds; TATs are sums of many floats, and rounding must not cost a whole slot


@dataclass(frozen=True, slots=True)
class Window:
    """At most ``limit`` starts in any rolling ``seconds``."""

    limit: int
    seconds: float

    @property
    def burst(self) -> int:
        return max(1, self.limit // BURST_FRACTION)

    @property
    def spacing(self) -> float:
        return self.seconds / (self.limit - self.burst + 1) * SPACING_MARGIN

    @property
    def tolerance(self) -> float:
        return (self.burst - 1) * self.spacing


@dataclass(frozen=True, slots=True)
class Admission:
    count: int  # how many of the wanted starts may go now
    tats: tuple[float, ...]  # the new TAT of each window, to store
    next_free_at: float  # when one more start will be allowed (epoch seconds); <= now when open


def windows_of(limits: Sequence[tuple[int | None, float]]) -> list[Window]:
    """The windows of the limits that are set (``None`` = no limit)."""
    return [Window(limit, seconds) for limit, seconds in limits if limit is not None]


def admit(
    windows: Sequence[Window], tats: Sequence[float], *, now: float, wanted: int
) -> Admission:
    """Admit up to ``wanted`` starts at ``now`` such that every window keeps its promise."""
    current = list(tats)
    count = 0
    while count < wanted and all(
        max(tat, now) - w.tolerance <= now + EPSILON
        for w, tat in zip(windows, current, strict=True)
    ):
        current = [max(tat, now) + w.spacing for w, tat in zip(windows, current, strict=True)]
        count += 1
    next_free = max(
        (max(tat, now) - w.tolerance for w, tat in zip(windows, current, strict=True)), default=now
    )
    return Admission(count=count, tats=tuple(current), next_free_at=next_free)
