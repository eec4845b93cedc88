"""Admission for "at most N messages in any rolling window of W seconds", pure and clock-free.

The promise is kept where it is measured, at the receiving server, by every worker process at
once. A claim gives each admitted message a *slot*: a time on the database's clock at which its
send may start, never sooner and at most a little later (``Slot.latest``). Workers start sends at
their slots; what the network and the SMTP conversation add on the way is the message's *delay*.

The bound
---------
Each window tolerates a spread ``J`` of delays: for any two messages, ``delay_a - delay_b <= J``.
If slots are such that every interval ``(s - W - J, s]`` holds at most N slots, then every
interval ``[t, t + W)`` at the server holds at most N arrivals: N + 1 arrivals within W would
come from N + 1 slots within ``W + J``. Two kinds of window make that true:

* ``Spacing`` (per-second limits): GCRA without burst, slots at least ``T = (W + J) / N`` apart,
  so N + 1 slots span at least ``N * T = W + J``. Sustained rate ``N / (W + J)``: with
  ``J = 20 ms`` that is 98 % of a per-second limit, and it is smooth (no bunching at the server).
  A slot skipped because another window (a recipient domain's) held a message back is kept as a
  *hole* that a later message may take: the spacing holds between all slots, in any order.
* ``SlidingCount`` (per-minute, -hour, -day; a domain's limits): the slots of the last ``W + J``
  counted in K buckets per window. A message may take slot s only while the buckets that end
  after ``s - W - J`` hold fewer than N; a bucket counts as a whole as long as any part of it
  does, so the count is never low. This lets a day's limit of 500 send 50 reminders now, and the
  sustained rate is N per ``W + J + W / K`` at worst: 98.9 % with K = 100. Proof that reservations
  in any order keep the bound: in a window ``(u - W - J, u]`` take the slot that was admitted
  *last*; every other slot in that window was counted when it was admitted, and there were fewer
  than N of them.

Two moments of each message count: a server may count it at RCPT (its *envelope*: MAIL, RCPT and
DATA, which an SMTP transport writes its ``lead`` before the slot so that only the message itself
is left for the slot) or at the final dot (the slot). Each window keeps the bound for both
streams: slot ``s`` with lead ``L`` is admitted only where ``s`` fits among the slots and ``s - L``
among the envelope moments. Without the second stream, two workers whose transports lead by
different amounts (each follows the round trip it measures) put their envelopes closer than their
slots: 53 RCPTs in one second at a limit of 50, with one worker's server 40 ms away and the
other's next door (``tests/acceptance/test_throttle_promise.py``). ``Spacing`` keeps a grid for
each stream, so a rising lead costs the rise once (the first slot after it moves by the rise). So
that workers do not pay that at every alternation, a tenant's messages all use the longest lead
asked for lately (``lead_floor``, halving every ``LEAD_HALF_LIFE``), in whole milliseconds.
``SlidingCount`` counts both streams in buckets; a lead costs it nothing.

``J`` is 20 ms for a per-second window and ``W / 1000`` for longer ones (60 ms a minute, 86 s a
day: 0.1 % of the rate). Each write of a message's conversation (MAIL, RCPT, DATA, the message
itself) happens within ``[slot, slot + J - TRANSPORT_SPREAD]`` (the envelope's ``lead`` earlier)
or the message is abandoned before its final dot and goes back to the queue, its slot given back
(the transport's and the worker's guard): whatever moment the server counts a message at, a
stalled worker or a slow round trip cannot bunch messages there. ``TRANSPORT_SPREAD`` is what the wire and the server add after a
write, spread across messages.

Measured (``bench/bench_throttle.py --measure-jitter``, PostgreSQL, aiosmtpd in another process
on this machine, 2 busy cores): a send started 0.10 ms after its slot at the median and 1.6 ms
at p99.9 (the asyncio timer and the clock offset, read right after the claim's clock statement);
arrival after the start of the send, spread p50 0.8 ms, p99.9 3.9 ms, for a whole conversation
(three round trips). Since a send writes only its message at the slot (its envelope goes ahead,
``transports/smtp.py``), what follows a write is one trip on the wire: 4 ms covers that p99.9 of
three, and the other 16 ms of J may go to a late write on a loaded machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

#: The spread of delays (arrival at the server minus slot) a per-second window tolerates.
JITTER = 0.020  # seconds
#: Longer windows tolerate a share of their length instead: a minute 60 ms, a day 86 s.
JITTER_SHARE = 0.001
#: Of a window's jitter, what the wire and the server add between a write and its arrival.
TRANSPORT_SPREAD = 0.004  # seconds
#: Buckets per sliding window: its count may be high by one bucket, W / 100 of rate at worst.
BUCKETS = 100
#: Unused slots remembered by a ``Spacing`` window; more are dropped (which only costs rate).
MAX_HOLES = 64
EPSILON = 1e-6  # seconds; slot times are sums of floats, and rounding must not cost a slot
#: No slot is sooner than this after the claim read the clock: the claim commits and the batch
#: renders first. Only the first slot after an idle spell meets it; under a backlog slots lie ahead.
SLOT_LEAD = 0.1  # seconds
HORIZON = 1.0  # seconds: slots are given at most this far ahead, the rest goes back to the queue
#: Held-back work is claimed again this long before its next slot (less than HORIZON, so that
#: claim gives it the slot): long enough for a claim to finish first on a busy machine.
REFILL = 0.5  # seconds
MAX_BLOCK_SECONDS = 5.0  # a closed tenant is looked at again at least this often
#: The lead a tenant's messages share falls by half in this long after the last rise. A rise
#: costs a per-second window the rise once, so workers whose leads differ pay back what decayed:
#: 7 % of the lead a second, 0.1 % of the rate at a 15 ms lead; and a lead of 200 ms (a worker
#: that measured its server while it started beside seven others) is back to 20 ms in 33 s.
#: The transports' leads follow the median round trip, so one stall does not raise them.
LEAD_HALF_LIFE = 10.0  # seconds
LEAD_QUANTUM = 0.001  # seconds: leads are whole milliseconds, so that holes keep theirs exactly


def jitter_for(seconds: float) -> float:
    """The delay spread a window of ``seconds`` tolerates."""
    return max(JITTER, seconds * JITTER_SHARE)


def quantize_lead(lead: float) -> float:
    """``lead`` rounded up to whole milliseconds: a longer lead is always safe, a shorter one not."""
    return math.ceil(max(0.0, lead) / LEAD_QUANTUM - EPSILON) * LEAD_QUANTUM


class Window(Protocol):
    """One "at most N in any rolling W" promise and the state that keeps it.

    ``lead`` is how long before its slot a message's envelope is written: the window admits the
    slot only where the envelope moment keeps the bound too (the module docstring).
    """

    @property
    def jitter(self) -> float:
        """The spread of delays this window's bound allows for."""
        ...

    def earliest(self, t: float, lead: float = 0.0) -> float:
        """The earliest slot at or after ``t`` this window would admit one more message at."""
        ...

    def take(self, t: float, lead: float = 0.0) -> None:
        """Admit one message at slot ``t``, a time ``earliest`` returned for the same lead."""
        ...

    def lead_floor(self) -> float:
        """The shortest lead this window asks its messages to use (0: any)."""
        ...

    def state(self) -> dict[str, Any]:
        """What to store, JSON-ready."""
        ...


@dataclass(slots=True)
class Spacing:
    """GCRA without burst: any two slots at least ``(W + J) / N`` apart, and any two envelope
    moments too."""

    limit: int
    seconds: float
    tat: float = 0.0  # theoretical arrival time: the next slot on the grid (epoch seconds)
    etat: float = 0.0  # and the next envelope moment on the envelopes' grid
    #: Free (slot, lead) pairs before ``tat``, ascending: a hole fits between its neighbours'
    #: envelopes only with the lead it was cut with.
    holes: list[tuple[float, float]] = field(default_factory=list)
    now: float = 0.0  # no slot is given before this, so no hole is kept before it either
    lead: float = 0.0  # the longest lead asked for when it last rose ...
    lead_at: float = 0.0  # ... at this time: it decays from there (``lead_floor``)

    @property
    def jitter(self) -> float:
        return jitter_for(self.seconds)

    @property
    def spacing(self) -> float:
        return (self.seconds + self.jitter) / self.limit

    @classmethod
    def load(
        cls, limit: int, seconds: float, state: Mapping[str, Any] | None, *, now: float
    ) -> Spacing:
        window = cls(limit, seconds, now=now)
        if state:
            window.tat = float(state.get("tat", 0.0))
            # Stored before envelopes were spaced: as if every envelope went at its slot, which
            # holds the next envelope back by its lead once.
            window.etat = float(state.get("etat", window.tat))
            window.lead = float(state.get("lead", 0.0))
            window.lead_at = float(state.get("lead_at", 0.0))
            # Holes lie on the grid of the spacing they were cut with: after a change of limit
            # they might sit closer than the new spacing to a slot, so they are dropped.
            if math.isclose(float(state.get("spacing", 0.0)), window.spacing):
                window.holes = [
                    (float(h[0]), float(h[1]))
                    for h in state.get("holes", ())
                    if isinstance(h, list) and h[0] >= now
                ]
        return window

    def lead_floor(self) -> float:
        if self.lead <= 0.0:
            return 0.0
        halvings = max(0.0, self.now - self.lead_at) / LEAD_HALF_LIFE
        return self.lead * math.pow(0.5, halvings)

    def earliest(self, t: float, lead: float = 0.0) -> float:
        for hole, hole_lead in self.holes:
            if hole >= t and abs(hole_lead - lead) < EPSILON:
                return hole
        return max(t, self.tat, self.etat + lead)

    def take(self, t: float, lead: float = 0.0) -> None:
        for index, (hole, hole_lead) in enumerate(self.holes):
            if hole == t and abs(hole_lead - lead) < EPSILON:
                del self.holes[index]
                return
        if t < self.tat - EPSILON or t - lead < self.etat - EPSILON:
            raise ValueError(f"slot {t} (lead {lead}) is before the next free one {self.tat}")
        # Grid slots between the old TAT and this one stay free for messages admitted later,
        # with the lead that puts their envelopes on the envelopes' grid, as far as this
        # envelope leaves room for them.
        step, cut_lead = self.spacing, self.tat - self.etat
        hole = max(self.tat, self.now)
        while (
            hole + step <= t + EPSILON
            and hole - cut_lead + step <= t - lead + EPSILON
            and len(self.holes) < MAX_HOLES
        ):
            self.holes.append((hole, cut_lead))
            hole += step
        self.holes.sort()
        self.tat = max(t, self.tat) + step
        self.etat = max(t - lead, self.etat) + step
        if lead > quantize_lead(self.lead_floor()) + EPSILON:
            self.lead, self.lead_at = lead, self.now

    def give_back(self, t: float, lead: float = 0.0) -> None:
        """Slot ``t`` was not used (its send could not start in time): a later message with the
        same lead may take it while it is still ahead, the spacing holding between it and every
        other slot and envelope."""
        if self.now <= t < self.tat and (t, lead) not in self.holes and len(self.holes) < MAX_HOLES:
            self.holes.append((t, lead))
            self.holes.sort()

    def state(self) -> dict[str, Any]:
        return {
            "tat": self.tat,
            "etat": self.etat,
            "spacing": self.spacing,
            "holes": [list(h) for h in self.holes],
            "lead": self.lead,
            "lead_at": self.lead_at,
        }


@dataclass(slots=True)
class _Buckets:
    """Moments counted in buckets of ``width``: bucket i covers ``[i * width, (i+1) * width)``."""

    width: float
    first: int = 0  # the bucket index of ``counts[0]``
    counts: list[int] = field(default_factory=list)

    def add(self, index: int, count: int = 1) -> None:
        if not self.counts:
            self.first, self.counts = index, [0]
        elif index < self.first:
            self.counts[:0] = [0] * (self.first - index)
            self.first = index
        elif index >= self.first + len(self.counts):
            self.counts.extend([0] * (index - self.first - len(self.counts) + 1))
        self.counts[index - self.first] += count

    def add_moment(self, t: float) -> None:
        self.add(math.floor(t / self.width))

    def remove_moment(self, t: float) -> bool:
        offset = math.floor(t / self.width) - self.first
        if 0 <= offset < len(self.counts) and self.counts[offset] > 0:
            self.counts[offset] -= 1
            return True
        return False

    def load(self, state: Mapping[str, Any], old_width: float) -> None:
        """Stored buckets; of another width, each moves to the new bucket holding its end: it
        expires no sooner than it would have."""
        first = int(state["first"])
        for offset, count in enumerate(state.get("counts", ())):
            if count:
                end = (first + offset + 1) * old_width
                self.add(math.ceil(end / self.width - EPSILON) - 1, int(count))

    def forget_before(self, horizon: float) -> None:
        """Drop the buckets that end by ``horizon``."""
        drop = 0
        while drop < len(self.counts) and (self.first + drop + 1) * self.width <= horizon:
            drop += 1
        del self.counts[:drop]
        self.first += drop

    def free_at(self, limit: int, span: float) -> float:
        """The first moment at which the buckets ending after it minus ``span`` hold fewer than
        ``limit``."""
        remaining = sum(self.counts)
        if remaining < limit:
            return -math.inf
        for offset, count in enumerate(self.counts):
            remaining -= count
            if remaining < limit:
                return (self.first + offset + 1) * self.width + span
        raise AssertionError("unreachable: the last bucket leaves nothing counted")

    def state(self) -> dict[str, Any]:
        return {"first": self.first, "counts": list(self.counts)}


@dataclass(slots=True)
class SlidingCount:
    """At most N slots in any ``W + J``, and N envelope moments, counted in buckets of
    ``W / BUCKETS``."""

    limit: int
    seconds: float
    slots: _Buckets = field(init=False)
    envelopes: _Buckets = field(init=False)
    _free_at: tuple[float, float] = (-math.inf, -math.inf)  # of the slots, of the envelopes
    #: False when the stored buckets had another width: they were moved to the buckets holding
    #: their ends, so a slot's own bucket is no longer known and nothing can be given back.
    _exact: bool = True

    def __post_init__(self) -> None:
        self.slots = _Buckets(self.width)
        self.envelopes = _Buckets(self.width)

    @property
    def jitter(self) -> float:
        return jitter_for(self.seconds)

    @property
    def width(self) -> float:
        return self.seconds / BUCKETS

    @classmethod
    def load(
        cls, limit: int, seconds: float, state: Mapping[str, Any] | None, *, now: float
    ) -> SlidingCount:
        window = cls(limit, seconds)
        if state and state.get("counts"):
            old_width = float(state["width"])
            window._exact = math.isclose(old_width, window.width)
            window.slots.load(state, old_width)
            # Stored before envelopes were counted: each envelope at its slot's bucket, which
            # expires no sooner than the envelope's own.
            window.envelopes.load(state.get("envelope", state), old_width)
            horizon = now - window.seconds - window.jitter
            window.slots.forget_before(horizon)
            window.envelopes.forget_before(horizon)
        window._free_at = window._compute_free_at()
        return window

    def lead_floor(self) -> float:
        return 0.0

    def earliest(self, t: float, lead: float = 0.0) -> float:
        return max(t, self._free_at[0], self._free_at[1] + lead)

    def take(self, t: float, lead: float = 0.0) -> None:
        self.slots.add_moment(t)
        self.envelopes.add_moment(t - lead)
        self._free_at = self._compute_free_at()

    def give_back(self, t: float, lead: float = 0.0) -> None:
        """Slot ``t`` was not used (its send could not start in time): it stops counting. Without
        this a worker that falls behind a burst would cost a whole window its missed slots."""
        if self._exact and self.slots.remove_moment(t):
            self.envelopes.remove_moment(t - lead)
            self._free_at = self._compute_free_at()

    def state(self) -> dict[str, Any]:
        return {"width": self.width, **self.slots.state(), "envelope": self.envelopes.state()}

    def _compute_free_at(self) -> tuple[float, float]:
        """The first slot, and the first envelope moment, at which the buckets still counted hold
        fewer than N."""
        span = self.seconds + self.jitter
        return self.slots.free_at(self.limit, span), self.envelopes.free_at(self.limit, span)


def window_for(
    limit: int, seconds: float, state: Mapping[str, Any] | None, *, now: float
) -> Spacing | SlidingCount:
    """A per-second limit is spaced out; a longer one is a sliding count that allows a burst."""
    if seconds <= 1.0:
        return Spacing.load(limit, seconds, state, now=now)
    return SlidingCount.load(limit, seconds, state, now=now)


def earliest_start(windows: Sequence[Window], t: float, lead: float = 0.0) -> float:
    """The earliest slot at or after ``t`` that every window admits with envelopes ``lead`` ahead."""
    while True:
        at = max((w.earliest(t, lead) for w in windows), default=t)
        if at <= t:
            return t
        t = at


@dataclass(frozen=True, slots=True)
class Slot:
    at: float  # the send starts no sooner than this (epoch seconds, the database's clock)
    latest: float  # and no later than this, or not at all: later would break a window's bound
    lead: float = 0.0  # its envelope is written this long before (each moment within its bounds)


@dataclass(frozen=True, slots=True)
class Hold:
    until: float  # the earliest slot the windows would give it now; beyond the horizon


def schedule(
    requests: Sequence[Sequence[Window]], *, start: float, horizon: float, lead: float = 0.0
) -> list[Slot | Hold]:
    """Slots in ``[start, horizon]`` for as many requests as the windows admit, greedily, each
    with its envelope ``lead`` ahead.

    ``requests`` are in priority order, each the windows that apply to one message (shared
    objects: the tenant's windows appear in all of its messages). Each step admits the message
    that can go soonest, the first in priority order on a tie: a message held back by its
    recipient domain never takes a tenant slot that mail to another domain could use sooner.
    """
    queues: dict[tuple[int, ...], list[int]] = {}
    for index, windows in enumerate(requests):
        queues.setdefault(tuple(id(w) for w in windows), []).append(index)
    heads = dict.fromkeys(queues, 0)  # the next request of each group
    placed: list[Slot | Hold | None] = [None] * len(requests)
    while heads:
        best: tuple[float, int, tuple[int, ...]] | None = None
        for key, position in heads.items():
            index = queues[key][position]
            candidate = (earliest_start(requests[index], start, lead), index, key)
            if best is None or candidate < best:
                best = candidate
        assert best is not None
        at, index, key = best
        if at > horizon + EPSILON:
            break
        windows = requests[index]
        for window in windows:
            window.take(at, lead)
        slack = min((w.jitter for w in windows), default=JITTER) - TRANSPORT_SPREAD
        placed[index] = Slot(at=at, latest=at + slack, lead=lead)
        heads[key] += 1
        if heads[key] == len(queues[key]):
            del heads[key]
    for key, position in heads.items():
        until = earliest_start(requests[queues[key][position]], start, lead)
        for index in queues[key][position:]:
            placed[index] = Hold(until)
    assert all(p is not None for p in placed)  # each request was admitted or held
    return cast("list[Slot | Hold]", placed)


@dataclass(frozen=True, slots=True)
class Requeue:
    """Back to the queue, no attempt spent, to be claimed again from ``not_before`` (epoch
    seconds); None: at its old place, the tenant being closed (``blocked_until``) meanwhile."""

    not_before: float | None


@dataclass(frozen=True, slots=True)
class TenantAdmission:
    decisions: list[Slot | Requeue]  # one a message, in the order given
    blocked_until: float | None  # the tenant is closed: claims skip it until then

    @property
    def wake_at(self) -> float | None:
        """When something held back here may be claimed again."""
        times = [d.not_before for d in self.decisions if isinstance(d, Requeue) and d.not_before]
        if self.blocked_until is not None:
            times.append(self.blocked_until)
        return min(times, default=None)


def admit_tenant(
    tenant: Sequence[Window], domains: Sequence[Sequence[Window]], *, now: float, lead: float = 0.0
) -> TenantAdmission:
    """One tenant's claimed messages, in priority order: a slot for each that its windows admit
    within ``HORIZON``, a time to come back for the others.

    ``tenant`` are the tenant's windows, ``domains[i]`` those of message i's recipient domain
    (shared objects for one domain). When the tenant's own windows are closed beyond the horizon
    it is blocked until ``REFILL`` before its next slot (at most ``MAX_BLOCK_SECONDS``, so that a
    raised limit is seen soon) and its messages keep their place in the queue; a message whose
    domain is closed comes back ``REFILL`` before that domain's slot, and takes no tenant slot
    from mail to other domains meanwhile.

    ``lead`` is how far ahead of its slot the claiming worker's transport writes an envelope.
    All of the tenant's messages use the longest lead asked for lately (``lead_floor``), so that
    workers with different round trips do not pay for each other's at every claim. Times are
    reckoned for the envelope: it is what must be written after the claim and within the horizon.
    """
    every = [*tenant, *(window for domain in domains for window in domain)]
    lead = quantize_lead(max([lead, *(w.lead_floor() for w in every)]))
    start, horizon = now + SLOT_LEAD + lead, now + HORIZON + lead
    placements = schedule(
        [[*tenant, *domain] for domain in domains], start=start, horizon=horizon, lead=lead
    )
    tenant_free = earliest_start(tenant, start, lead)
    blocked_until = (
        min(tenant_free - lead - REFILL, now + MAX_BLOCK_SECONDS) if tenant_free > horizon else None
    )
    decisions: list[Slot | Requeue] = []
    for domain, placement in zip(domains, placements, strict=True):
        if isinstance(placement, Slot):
            decisions.append(placement)
        elif blocked_until is not None and earliest_start(domain, start, lead) <= horizon:
            decisions.append(Requeue(None))
        else:
            decisions.append(Requeue(placement.until - lead - REFILL))
    return TenantAdmission(decisions, blocked_until)


def busiest(times: list[float], seconds: float) -> int:
    """The most arrivals in any window ``[t, t + seconds)``: what the promise is measured by, at
    the receiving server (the tests and ``bench/bench_throttle.py``)."""
    times = sorted(times)
    worst, left = 0, 0
    for right, moment in enumerate(times):
        while moment - times[left] >= seconds:
            left += 1
        worst = max(worst, right - left + 1)
    return worst
