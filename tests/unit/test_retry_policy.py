"""Backoff: doubling, capped, jittered within [d/2, d], Retry-After as a floor, TTL ends it."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from tidings.delivery.retry import RetryPolicy

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FAR = NOW + timedelta(days=5)


def test_delays_double_from_the_base_and_stop_at_the_cap() -> None:
    policy = RetryPolicy(300, 3600, rng=random.Random(1))
    for attempt, nominal in ((1, 300), (2, 600), (3, 1200), (4, 2400), (5, 3600), (9, 3600)):
        for _ in range(50):
            assert nominal / 2 <= policy.delay(attempt) <= nominal


def test_jitter_spreads_retries() -> None:
    policy = RetryPolicy(300, 3600, rng=random.Random(2))
    assert len({round(policy.delay(1), 3) for _ in range(20)}) > 15


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy(1, 2, rng=random.Random(3))
    retry_at = policy.next_attempt_at(attempt=1, now=NOW, expires_at=FAR, retry_after=120)
    assert retry_at == NOW + timedelta(seconds=120)


def test_gives_up_when_the_next_try_is_past_the_time_to_live() -> None:
    policy = RetryPolicy(300, 3600, rng=random.Random(4))
    assert (
        policy.next_attempt_at(attempt=1, now=NOW, expires_at=NOW + timedelta(seconds=100)) is None
    )
    assert (
        policy.next_attempt_at(attempt=1, now=NOW, expires_at=NOW + timedelta(seconds=400))
        is not None
    )
