"""An adaptive sending rate per (tenant, recipient domain): the AIMD arithmetic, pure and clock-free.

A domain that answers "slow down" (SMTP 421 or 4.7.x, HTTP 429) gets a rate of its own, in
messages per second, admitted by a GCRA window with spacing ``1 / rate`` and no burst; every other
domain goes on at full speed. The rate follows TCP's AIMD rule, which is what lets a sender find,
and then hover just under, a limit the receiver does not publish:

* **Multiplicative decrease** on a slow-down reply: ``rate * DECREASE_FACTOR``, never below
  ``FLOOR``. Halving reaches any unknown limit in ``log2(rate / limit)`` slow-downs. Only a reply
  to a message *admitted after* the last decrease counts: the messages already in flight when the
  rate was lowered were admitted at the old rate, and their refusals are not news (without this, one
  batch of 25 refusals would halve the rate 25 times). Nor does a refusal before the domain
  accepted anything at the lowered rate: a provider counts over its own window (a second, a
  minute), and until the excess that drew the first refusal has left it, it refuses whatever the
  new rate. Halving at each of those refusals would crash the rate to the floor in one window (the
  end-to-end test saw 10/s fall to 1.25/s in 1.5 s against a one-second window); the rate stays,
  and the next attempt waits as long again as it has been since the decrease, so the probes
  double apart (at most ``MAX_PROBE_WAIT``) until the window has drained.
* **Additive increase** after a streak of successes: ``+ INCREASE_FRACTION *`` the rate that last
  drew a slow-down (``slowed_from``). From half that rate back up to it therefore takes
  ``0.5 / INCREASE_FRACTION = 5`` streaks at every scale from 0.1/s to 1,000/s, and the saw-tooth
  under the domain's limit averages about 3/4 of it. A streak is ``STREAK`` successes and at least
  ``STREAK_SECONDS`` of them at the current rate: the refusal that answers an increase comes back
  only after the claim, the render and the SMTP conversation (tens to hundreds of milliseconds), so
  increases spaced closer than that would pile up before the domain could object; and the refusals
  of one round are the messages in flight meanwhile (rate * that delay), so a streak of a second or
  more keeps them a few per cent of the accepted mail at any rate (none counts against a message).
  Above ``slowed_from`` the step is a tenth of the current rate instead (10 % per streak): a rate
  that was lowered for a reason long gone, or halved from a guess, regains full speed in tens of
  seconds, not minutes.
* **Bounds**: never above the ceiling, the configured limits (the domain's ``per_minute`` and
  ``per_hour``, the tenant's limits when they are on) as a sustained rate. A rate that climbs back to
  its ceiling is ``steady``: the configured windows already hold it there, so the claim stops
  applying it. With no configured limit there is no ceiling: the rate keeps climbing until the
  domain is forgotten.
* **Forgetting**: ``FORGET_SECONDS`` after its last slow-down a domain is treated as never slowed
  (and its row is deleted): providers' deferral windows last minutes, and a domain that was quiet
  that long costs at most one more round of refusals to find its limit again.
* **Retry-After** (an HTTP 429 says how long): no message to that domain starts before it; the GCRA
  state simply moves past it, so a pause needs nothing more than the window.

With no configured limit the rate before the first slow-down is unknown (it was "as fast as the
workers go"): the domain then restarts at ``START_RATE`` as if it had been halved from twice that,
and regains 2/s a second up to 20/s, then 10 % a second beyond (500/s again within a minute).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from tidings.delivery.throttle import JITTER

DECREASE_FACTOR = 0.5  # a slow-down halves the rate, as TCP halves its window
INCREASE_FRACTION = 0.1  # of ``slowed_from`` per streak: 5 streaks from half back to the limit
STREAK = 10  # successes per increase, at least
STREAK_SECONDS = 1.0  # and at least this long at the current rate (rate * this many successes)
FLOOR = 1 / 60  # messages per second: a domain refusing everything is still probed once a minute
START_RATE = 10.0  # messages per second after the first slow-down of a domain with no limits set
FORGET_SECONDS = 900.0  # a domain quiet this long after its last slow-down is no longer slowed
MAX_PROBE_WAIT = 300.0  # seconds: a domain refusing everything is still tried this often


class RateState(StrEnum):
    backing_off = "backing_off"  # a slow-down lowered the rate; no increase since
    probing = "probing"  # streaks of successes are raising it again
    steady = "steady"  # back at its ceiling: the configured limits alone apply


@dataclass(frozen=True, slots=True)
class AdaptiveRate:
    """One domain's adaptive state; every time is in epoch seconds on the database's clock."""

    rate: float  # messages per second admitted now
    state: RateState
    successes: int  # successes since the last change of rate (the streak so far)
    slowed_from: float  # the rate that last drew a slow-down; the increase step is a tenth of it
    last_slowdown_at: float
    tat: (
        float  # GCRA theoretical arrival time for spacing 1 / rate: the next start is not before it
    )
    paused_until: float  # Retry-After: no start before this (already folded into ``tat``)


def ceiling_of(limits: Iterable[tuple[int | None, float]]) -> float | None:
    """The sustained rate (per second) that ``(limit, window seconds)`` pairs allow; None: no limit."""
    rates = [limit / seconds for limit, seconds in limits if limit is not None]
    return min(rates) if rates else None


def is_limiting(current: AdaptiveRate, *, now: float) -> bool:
    """Whether this rate holds a domain back now: lowered, and not yet forgotten nor recovered."""
    return current.state != RateState.steady and now - current.last_slowdown_at < FORGET_SECONDS


@dataclass(slots=True)
class Paced:
    """The rate as one more admission window (``delivery/throttle.py``'s ``Window`` protocol): one
    start per ``spacing`` seconds, no burst. The rate is what the domain told us it takes, not a
    promise measured at its server, so it keeps no holes, spaces the slots alone (not the
    envelopes) and needs no jitter allowance of its own beyond the engine's usual one."""

    spacing: float
    tat: float  # the next start is not before it (a Retry-After pause included)
    jitter: float = JITTER

    def earliest(self, t: float, lead: float = 0.0) -> float:  # noqa: ARG002 (slots alone)
        return max(t, self.tat)

    def take(self, t: float, lead: float = 0.0) -> None:  # noqa: ARG002 (slots alone)
        self.tat = max(t, self.tat) + self.spacing

    def lead_floor(self) -> float:
        return 0.0

    def state(self) -> dict[str, Any]:
        return {"tat": self.tat}


def window_of(current: AdaptiveRate) -> Paced:
    """The window of the rate: one start per ``1 / rate`` seconds, no burst."""
    return Paced(spacing=1.0 / current.rate, tat=current.tat)


def next_slot(current: AdaptiveRate, *, now: float) -> float:
    """The earliest start the domain allows (the pause included)."""
    return max(current.tat, now)


def slow_down(
    current: AdaptiveRate | None,
    *,
    now: float,
    admitted_at: float,
    ceiling: float | None,
    retry_after: float | None = None,
) -> AdaptiveRate:
    """The state after a slow-down reply to a message admitted at ``admitted_at``."""
    if current is not None and now - current.last_slowdown_at >= FORGET_SECONDS:
        current = None  # forgotten: as if it had never slowed us down
    if current is None:
        lowered = _lowered(None, now=now, ceiling=ceiling)
    elif admitted_at < current.last_slowdown_at:
        lowered = current  # sent at the old rate: that decrease already answered it
    elif current.state == RateState.backing_off and current.successes == 0:
        # Nothing accepted since the decrease: the domain still counts our earlier excess against
        # us (its window has not drained). Halving again would answer the past; wait instead, as
        # long again as since the decrease, so the probes double apart until one gets through.
        wait = min(max(1.0 / current.rate, now - current.last_slowdown_at), MAX_PROBE_WAIT)
        lowered = replace(current, tat=max(current.tat, now + wait))
    else:
        lowered = _lowered(current, now=now, ceiling=ceiling)
    if retry_after is None or retry_after <= 0 or not math.isfinite(retry_after):
        return lowered
    paused_until = max(lowered.paused_until, now + retry_after)
    return replace(lowered, paused_until=paused_until, tat=max(lowered.tat, paused_until))


def _lowered(current: AdaptiveRate | None, *, now: float, ceiling: float | None) -> AdaptiveRate:
    """The multiplicative decrease."""
    if current is None:
        before = ceiling if ceiling is not None else START_RATE / DECREASE_FACTOR
    else:
        before = current.rate if ceiling is None else min(current.rate, ceiling)
    rate = max(FLOOR, before * DECREASE_FACTOR)
    if ceiling is not None:
        rate = min(rate, ceiling)
    return AdaptiveRate(
        rate=rate,
        state=RateState.backing_off,
        successes=0,
        slowed_from=before,
        last_slowdown_at=now,
        tat=max(now if current is None else current.tat, now + 1.0 / rate),
        paused_until=0.0 if current is None else current.paused_until,
    )


def streak_length(rate: float) -> int:
    """Successes needed for the next increase at ``rate``."""
    return max(STREAK, math.ceil(rate * STREAK_SECONDS))


def speed_up(current: AdaptiveRate, *, successes: int, ceiling: float | None) -> AdaptiveRate:
    """The state after ``successes`` more messages to the domain were accepted."""
    if successes <= 0 or current.state == RateState.steady:
        return current
    rate, streak, raised = current.rate, current.successes + successes, False
    while (ceiling is None or rate < ceiling) and streak >= (need := streak_length(rate)):
        streak -= need
        rate += INCREASE_FRACTION * max(current.slowed_from, rate)
        raised = True
    if ceiling is not None and rate >= ceiling:  # recovered, or the ceiling was lowered under it
        return replace(current, rate=ceiling, state=RateState.steady, successes=0)
    if not raised:
        return replace(current, successes=streak)
    return replace(current, rate=rate, state=RateState.probing, successes=streak)
