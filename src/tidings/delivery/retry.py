"""When to try a message again: ``(attempt, now, expires_at, retry_after) -> retry_at | None``.

Delays double from ``base_seconds`` and are capped at ``max_seconds`` (Postfix-like: first retry
after minutes, then hourly). "Equal jitter" spreads them: the delay is drawn uniformly from
``[d/2, d]``, so retries of a failed batch do not come back as one thundering herd, yet never
sooner than half the nominal delay (full jitter could retry at once). A server's ``Retry-After`` is
a floor. When the next try would fall after the message's time to live, the answer is ``None``:
give up, the message is dead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 300.0
    max_seconds: float = 3600.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int) -> float:
        """The jittered delay after the ``attempt``-th failed try (1-based)."""
        nominal = min(self.max_seconds, self.base_seconds * 2 ** max(0, attempt - 1))
        return self.rng.uniform(nominal / 2, nominal)

    def next_attempt_at(
        self, *, attempt: int, now: datetime, expires_at: datetime, retry_after: float | None = None
    ) -> datetime | None:
        delay = self.delay(attempt)
        if retry_after is not None:
            delay = max(delay, retry_after)
        retry_at = now + timedelta(seconds=delay)
        return None if retry_at > expires_at else retry_at
