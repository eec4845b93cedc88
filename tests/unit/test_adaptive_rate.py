"""The AIMD arithmetic of a domain's adaptive rate: halve on a slow-down, climb back by streaks."""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import pytest

from tidings.delivery.adaptive import (
    FLOOR,
    FORGET_SECONDS,
    MAX_PROBE_WAIT,
    START_RATE,
    STREAK,
    AdaptiveRate,
    RateState,
    ceiling_of,
    is_limiting,
    next_slot,
    slow_down,
    speed_up,
    window_of,
)

NOW = 1_000_000.0


def state(**fields: object) -> AdaptiveRate:
    values: dict[str, object] = {
        "rate": 8.0,
        "state": RateState.probing,
        "successes": 0,
        "slowed_from": 10.0,
        "last_slowdown_at": NOW - 60,
        "tat": NOW - 1,
        "paused_until": 0.0,
    }
    values.update(fields)
    return AdaptiveRate(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("limits", "ceiling"),
    [
        ([], None),
        ([(None, 60.0), (None, 3600.0)], None),
        ([(600, 60.0)], 10.0),
        ([(600, 60.0), (3600, 3600.0)], 1.0),  # the tighter sustained rate wins
        ([(None, 60.0), (7200, 3600.0), (5, 1.0)], 2.0),
    ],
)
def test_the_ceiling_is_the_tightest_configured_limit_as_a_rate(
    limits: list[tuple[int | None, float]], ceiling: float | None
) -> None:
    assert ceiling_of(limits) == ceiling


@pytest.mark.parametrize(
    ("current", "ceiling", "rate", "slowed_from"),
    [
        (None, None, START_RATE, 2 * START_RATE),  # never slowed, nothing configured
        (None, 10.0, 5.0, 10.0),  # never slowed: halved from its ceiling
        (state(rate=8.0), None, 4.0, 8.0),
        (state(rate=8.0), 6.0, 3.0, 6.0),  # a ceiling lowered meanwhile bounds the old rate
        (state(rate=1.5 * FLOOR), None, FLOOR, 1.5 * FLOOR),  # never below the floor
        (None, FLOOR / 2, FLOOR / 2, FLOOR / 2),  # nor above a ceiling under the floor
        (state(state=RateState.steady, rate=10.0), 10.0, 5.0, 10.0),
        # Forgotten: as if it had never slowed us down.
        (state(rate=0.5, last_slowdown_at=NOW - FORGET_SECONDS), 4.0, 2.0, 4.0),
    ],
)
def test_a_slow_down_halves_the_rate(
    current: AdaptiveRate | None, ceiling: float | None, rate: float, slowed_from: float
) -> None:
    lowered = slow_down(current, now=NOW, admitted_at=NOW - 0.5, ceiling=ceiling)
    assert (lowered.rate, lowered.slowed_from) == pytest.approx((rate, slowed_from))
    assert (lowered.state, lowered.successes, lowered.last_slowdown_at) == (
        RateState.backing_off,
        0,
        NOW,
    )
    assert next_slot(lowered, now=NOW) == pytest.approx(NOW + 1 / rate)  # one new interval on


def test_refusals_of_mail_admitted_before_the_last_decrease_lower_nothing() -> None:
    first = slow_down(state(rate=8.0), now=NOW, admitted_at=NOW - 0.2, ceiling=None)
    in_flight = slow_down(first, now=NOW + 0.3, admitted_at=NOW - 0.1, ceiling=None)
    assert in_flight == first


def test_a_refusal_after_mail_got_through_at_the_lowered_rate_halves_it_again() -> None:
    first = slow_down(state(rate=8.0), now=NOW, admitted_at=NOW - 0.2, ceiling=None)
    accepted = speed_up(first, successes=1, ceiling=None)
    again = slow_down(accepted, now=NOW + 0.6, admitted_at=NOW + 0.25, ceiling=None)
    assert (again.rate, again.slowed_from, again.last_slowdown_at) == (2.0, 4.0, NOW + 0.6)


def test_refusals_before_anything_got_through_wait_twice_as_long_each_and_keep_the_rate() -> None:
    first = slow_down(state(rate=8.0), now=NOW, admitted_at=NOW - 0.2, ceiling=None)
    assert first.rate == 4.0 and next_slot(first, now=NOW) == NOW + 0.25
    probes = [NOW + 0.25]
    current = first
    for _ in range(4):  # refused at each probe: the window has not drained yet
        current = slow_down(current, now=probes[-1], admitted_at=probes[-1], ceiling=None)
        probes.append(next_slot(current, now=probes[-1]))
    assert current.rate == 4.0 and current.last_slowdown_at == NOW  # no further decrease
    assert [p - NOW for p in probes] == pytest.approx([0.25, 0.5, 1.0, 2.0, 4.0])
    late = slow_down(current, now=NOW + 500, admitted_at=NOW + 499, ceiling=None)
    assert next_slot(late, now=NOW + 500) == NOW + 500 + MAX_PROBE_WAIT


@pytest.mark.parametrize(
    ("retry_after", "paused_until"),
    [(None, 0.0), (0.0, 0.0), (float("inf"), 0.0), (30.0, NOW + 30.0)],
)
def test_retry_after_pauses_the_domain(retry_after: float | None, paused_until: float) -> None:
    lowered = slow_down(None, now=NOW, admitted_at=NOW, ceiling=None, retry_after=retry_after)
    assert lowered.paused_until == paused_until
    assert next_slot(lowered, now=NOW) == max(paused_until, NOW + 1 / START_RATE)
    # Even from a refusal that lowers nothing, a longer pause is kept, a shorter one ignored.
    stale = slow_down(lowered, now=NOW + 1, admitted_at=NOW - 1, ceiling=None, retry_after=60.0)
    assert (stale.rate, stale.paused_until, stale.tat) == (lowered.rate, NOW + 61, NOW + 61)
    shorter = slow_down(stale, now=NOW + 2, admitted_at=NOW - 1, ceiling=None, retry_after=1.0)
    assert shorter.paused_until == NOW + 61


@pytest.mark.parametrize(
    ("current", "successes", "ceiling", "rate", "after", "streak"),
    [
        (state(successes=0), STREAK - 1, None, 8.0, RateState.probing, STREAK - 1),
        (state(state=RateState.backing_off, successes=3), 7, None, 9.0, RateState.probing, 0),
        (state(successes=5), 2 * STREAK + 1, None, 10.0, RateState.probing, 6),
        # No ceiling: on up, by a tenth of the rate once past the rate that slowed it.
        (state(successes=0), 5 * STREAK, None, 12.1, RateState.probing, 9),
        (state(successes=0), 5 * STREAK, 9.5, 9.5, RateState.steady, 0),  # recovered
        (state(rate=12.0), 1, 9.5, 9.5, RateState.steady, 0),  # a lowered ceiling
        (state(rate=120.0, slowed_from=200.0), 119, None, 120.0, RateState.probing, 119),
        (state(rate=120.0, slowed_from=200.0), 120, None, 140.0, RateState.probing, 0),
        (state(state=RateState.steady, rate=9.5), 100, 20.0, 9.5, RateState.steady, 0),
        (state(successes=4), 0, None, 8.0, RateState.probing, 4),
    ],
)
def test_streaks_of_successes_raise_the_rate_by_a_tenth_of_the_rate_that_slowed_it(
    current: AdaptiveRate,
    successes: int,
    ceiling: float | None,
    rate: float,
    after: RateState,
    streak: int,
) -> None:
    raised = speed_up(current, successes=successes, ceiling=ceiling)
    assert raised.rate == pytest.approx(rate)
    assert (raised.state, raised.successes) == (after, streak)
    assert raised.last_slowdown_at == current.last_slowdown_at  # only a slow-down moves it


@pytest.mark.parametrize(
    ("current", "limiting"),
    [
        (state(), True),
        (state(state=RateState.backing_off), True),
        (state(state=RateState.steady), False),
        (state(last_slowdown_at=NOW - FORGET_SECONDS + 1), True),
        (state(last_slowdown_at=NOW - FORGET_SECONDS), False),
    ],
)
def test_a_rate_limits_until_it_recovers_or_is_forgotten(
    current: AdaptiveRate, limiting: bool
) -> None:
    assert is_limiting(current, now=NOW) is limiting


def test_the_window_spaces_starts_by_one_over_the_rate_with_no_burst() -> None:
    window = window_of(replace(state(rate=4.0), tat=NOW))
    assert window.earliest(NOW) == NOW
    window.take(NOW)
    assert window.earliest(NOW) == pytest.approx(NOW + 0.25)  # 1 / rate: no second start now
    window.take(window.earliest(NOW))
    assert window.earliest(NOW) == pytest.approx(NOW + 0.5)


def _simulate(limit: float, seconds: float, delay: float) -> tuple[list[float], list[float]]:
    """A domain that refuses a start when ``limit * span`` were accepted in the last ``span``
    seconds (a second, or one message's worth of time under 1/s), fed from a
    backlog as fast as the adaptive rate allows (at first as fast as the workers go); each reply
    comes back ``delay`` after its start, so about ``rate * delay`` messages are always in flight.
    Returns the accepted starts and the refused ones."""
    span = max(1.0, 1.0 / limit)
    allowed = round(limit * span)
    current: AdaptiveRate | None = None
    accepted: list[float] = []
    replies: deque[tuple[float, float, bool]] = deque()  # (reply arrives, admitted at, ok)
    refused: list[float] = []
    now = 0.0
    while now < seconds:
        now = now + 1 / (20 * limit) if current is None else next_slot(current, now=now)
        while replies and replies[0][0] <= now:  # the replies that came back meanwhile
            at, admitted_at, ok = replies.popleft()
            if ok and current is not None:
                current = speed_up(current, successes=1, ceiling=None)
            elif not ok:
                current = slow_down(current, now=at, admitted_at=admitted_at, ceiling=None)
        if current is not None and next_slot(current, now=now) > now:
            continue  # lowered meanwhile: wait for the new slot
        ok = sum(1 for t in accepted[-allowed:] if now - t < span) < allowed
        (accepted if ok else refused).append(now)
        replies.append((now + delay, now, ok))
        if current is not None:
            current = replace(current, tat=max(current.tat, now) + window_of(current).spacing)
    return accepted, refused


@pytest.mark.parametrize(
    ("limit", "delay"), [(0.5, 0.2), (3.0, 0.2), (20.0, 0.05), (20.0, 0.3), (500.0, 0.1)]
)
def test_the_rate_settles_under_a_domains_hidden_limit_and_keeps_most_of_it(
    limit: float, delay: float
) -> None:
    seconds = 600.0 if limit < 1 else 120.0
    accepted, refused = _simulate(limit, seconds, delay)
    tail = [t for t in accepted if t >= seconds / 2]
    rate = len(tail) / (seconds / 2)
    assert 0.6 * limit <= rate <= limit, rate
    refused_in_tail = [t for t in refused if t >= seconds / 2]
    assert len(refused_in_tail) <= 0.05 * len(tail), (len(refused_in_tail), len(tail))
