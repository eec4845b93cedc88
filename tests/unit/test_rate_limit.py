"""The public pages' rate limit: a sliding window per key, refusals not counted, memory bounded."""

from __future__ import annotations

from tidings.api.rate_limit import Limit, RateLimiter, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, max_keys: int = 100) -> RateLimiter:
    return RateLimiter(
        {"token": Limit(3, 60.0), "client": Limit(5, 10.0)}, clock=clock, max_keys=max_keys
    )


def test_a_key_gets_its_limit_in_any_window_then_waits_for_the_oldest_to_leave() -> None:
    clock = Clock()
    limit = limiter(clock)
    for step in range(3):
        clock.now += 5
        assert limit.check({"token": "t"}) is None, step
    clock.now += 5  # 20 s after the start, the first hit (at 5 s) leaves the window at 65 s
    assert limit.check({"token": "t"}) == 45.0
    clock.now += 44.9
    assert limit.check({"token": "t"}) is not None  # refusals are not counted ...
    clock.now += 0.2
    assert limit.check({"token": "t"}) is None  # ... so the window has room again at 65 s


def test_every_key_of_a_request_must_have_room_and_a_refusal_counts_for_none() -> None:
    clock = Clock()
    limit = limiter(clock)
    for i in range(5):
        assert limit.check({"token": f"t{i}", "client": "c"}) is None
    assert limit.check({"token": "fresh", "client": "c"}) is not None
    assert limit.check({"token": "fresh", "client": "other"}) is None
    assert limit.check({"token": "fresh"}) is None  # the refused request spent nothing of "fresh"


def test_memory_is_bounded_by_forgetting_the_least_recently_used_keys() -> None:
    clock = Clock()
    limit = limiter(clock, max_keys=10)
    for _ in range(3):
        assert limit.check({"token": "busy"}) is None
    for i in range(20):
        limit.check({"token": f"noise-{i}"})
    assert len(limit._hits) == 10
    assert limit.check({"token": "busy"}) is None  # forgotten: a fresh window, never an error


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert [retry_after(s) for s in (0.01, 1.0, 1.2, 59.9)] == ["1", "1", "2", "60"]
