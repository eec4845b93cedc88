"""Claiming work: one transaction picks ready messages, leases them, and applies the throttles.

The claim is the only place where workers compete, so its guarantees are written here once:

* **No message is claimed twice.** PostgreSQL: the candidate rows are locked with
  ``FOR UPDATE SKIP LOCKED`` — a row another worker is claiming is skipped, never waited for, never
  taken twice — then marked ``sending`` in the same statement. SQLite: the engine opens every
  transaction with ``BEGIN IMMEDIATE``, so claims are serialised by the database's write lock.
* **One busy tenant never starves another.** Candidates are picked per tenant (a ``LATERAL``
  subquery reading the first rows of ``ix_messages_claim``), then interleaved: every tenant's first
  message, then every tenant's second… Transactional messages come before all campaign mail.
  Tenants whose throttle is closed (``blocked_until``) are not even looked at.
* **Throttles hold across every worker.** In the same transaction the throttle rows of the claimed
  tenants are locked (``FOR UPDATE``, in tenant order, so two claims cannot deadlock), and each
  throttled message gets a slot on the database's clock, read after the locks, at most
  ``HORIZON`` ahead (``delivery/throttle.py`` explains the bound). Messages without a slot that
  soon go straight back to the queue, no attempt spent: a closed tenant keeps its queue order
  and is skipped (``blocked_until``) until shortly before its next slot; mail held by its
  recipient domain waits (``not_before``) for that domain's next slot. The claim says when that
  is (``Claim.wake_at``), so a worker wakes for the slot instead of at its next poll.
  A recipient domain that asked us to slow down adds its adaptive rate (``queue/domain_rates.py``)
  as one more window for that domain, locked after the domain limits; other domains have no row
  and cost one unlocked look-up.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.orm import Session

from tidings.db.models import DomainRate, DomainThrottle, Message, Throttle, table
from tidings.db.types import UTCDateTime
from tidings.delivery.throttle import (
    HORIZON,
    REFILL,
    SlidingCount,
    Slot,
    Spacing,
    Window,
    admit_tenant,
    window_for,
)
from tidings.domain import TRANSACTIONAL_PRIORITY_BOOST, MessageStatus
from tidings.domain.addresses import domain_of
from tidings.queue.claimed import Claim, ClaimedMessage, ClockReading
from tidings.queue.clock import db_now
from tidings.queue.compliance import screen_claimed
from tidings.queue.domain_rates import ADAPTIVE, adaptive_window, lock_limiting_rates
from tidings.queue.enqueue import requeue_values
from tidings.queue.windows import defer_outside_windows

CLOCK_TRIES = 3  # readings of the database's clock at most, for one with a short round trip
CLOCK_ROUND_TRIP = 0.001  # seconds: a reading this quick is taken at once
#: Limits by the window name their state is stored under, the column, and the window's length.
TENANT_WINDOWS = (
    ("second", "per_second", 1.0),
    ("minute", "per_minute", 60.0),
    ("hour", "per_hour", 3600.0),
    ("day", "per_day", 86400.0),
)
DOMAIN_WINDOWS = (("minute", "per_minute", 60.0), ("hour", "per_hour", 3600.0))

_CLAIMED_COLUMNS = (
    Message.id,
    Message.tenant_id,
    Message.campaign_id,
    Message.contact_id,
    Message.to_address,
    Message.template_id,
    Message.subject,
    Message.html,
    Message.text,
    Message.data,
    Message.from_address,
    Message.category,
    Message.priority,
    Message.attempts,
    Message.expires_at,
    Message.idempotency_key,
    Message.event_at,
    Message.features,
    Message.track_opens,
    Message.track_clicks,
)


#: A tenant with a per-second limit is given at most what its spacing can admit in one claim:
#: a slot every (1 + J) / N seconds, over the horizon a claim made REFILL before the next slot
#: still has. The rest would only be locked, marked and put back.
_CAP = (
    "CASE WHEN th.enabled AND th.per_second IS NOT NULL"
    " THEN LEAST(:limit, CAST(th.per_second * :cap_seconds AS INTEGER) + 2) ELSE :limit END"
)
CAP_SECONDS = HORIZON - REFILL  # of slots a claim made on its timer still finds within reach

_PG_CANDIDATES = text(
    """
    SELECT picked.id, picked.tenant_id FROM (
        SELECT ready.id, ready.tenant_id, ready.priority, ready.not_before,
               row_number() OVER (PARTITION BY ready.tenant_id
                                  ORDER BY ready.priority DESC, ready.not_before, ready.id) AS turn
        FROM (
            SELECT t.id AS tenant_id, {cap} AS cap FROM tenants t
            LEFT JOIN throttles th ON th.tenant_id = t.id
            WHERE COALESCE(th.blocked_until, 0) <= :now_epoch
        ) AS open_tenants
        CROSS JOIN LATERAL (
            SELECT m.id, m.tenant_id, m.priority, m.not_before FROM messages m
            WHERE m.tenant_id = open_tenants.tenant_id AND m.status = 'queued' AND m.not_before <= :now
            ORDER BY m.priority DESC, m.not_before, m.id
            LIMIT open_tenants.cap
            FOR UPDATE OF m SKIP LOCKED
        ) AS ready
    ) AS picked
    ORDER BY (picked.priority >= :boost) DESC, picked.turn, picked.priority DESC, picked.not_before, picked.id
    LIMIT :limit
    """.replace("{cap}", _CAP)
).bindparams(bindparam("now", type_=UTCDateTime()))


def _pg_candidates(session: Session, *, now: datetime, limit: int) -> list[int]:
    # No JIT for this transaction. The planner cannot know how many rows ``LIMIT cap`` (an
    # expression) keeps, so it assumes a tenth of the ready queue per tenant; past a few hundred
    # thousand queued messages that estimate crosses ``jit_above_cost`` and every claim spent
    # 220-270 ms compiling a query that runs in 1 ms (measured at 300,000 queued).
    session.connection().exec_driver_sql("SET LOCAL jit = off")
    rows = session.connection().execute(
        _PG_CANDIDATES,
        {
            "now": now,
            "now_epoch": now.timestamp(),
            "limit": limit,
            "boost": TRANSACTIONAL_PRIORITY_BOOST,
            "cap_seconds": CAP_SECONDS,
        },
    )
    return [row.id for row in rows]


def _sqlite_candidates(session: Session, *, now: datetime, limit: int) -> list[int]:
    """The same choice as PostgreSQL's; the write lock taken at BEGIN IMMEDIATE makes it exclusive."""
    open_tenants = session.execute(
        text(
            f"SELECT t.id, {_CAP.replace('LEAST', 'MIN')} AS cap FROM tenants t"
            " LEFT JOIN throttles th ON th.tenant_id = t.id"
            " WHERE COALESCE(th.blocked_until, 0) <= :now_epoch"
        ),
        {"now_epoch": now.timestamp(), "limit": limit, "cap_seconds": CAP_SECONDS},
    ).all()
    ranked: list[tuple[bool, int, int, datetime, int]] = []
    for tenant_id, cap in open_tenants:
        rows = session.execute(
            select(Message.id, Message.priority, Message.not_before)
            .where(
                Message.tenant_id == tenant_id,
                Message.status == "queued",
                Message.not_before <= now,
            )
            .order_by(Message.priority.desc(), Message.not_before, Message.id)
            .limit(cap)
        ).all()
        for turn, row in enumerate(rows):
            ranked.append(
                (
                    row.priority < TRANSACTIONAL_PRIORITY_BOOST,
                    turn,
                    -row.priority,
                    row.not_before,
                    row.id,
                )
            )
    ranked.sort()
    return [entry[-1] for entry in ranked[:limit]]


def claim_batch(
    *,
    session: Session,
    owner: str,
    limit: int,
    lease_seconds: float,
    lead: float = 0.0,
    address_key: bytes | None = None,
) -> Claim:
    """Lease up to ``limit`` ready messages to ``owner``; call inside a transaction and commit at
    once. ``lead``: how far ahead of its slot the owner's transport would write an envelope.
    ``address_key``: the erasure key, so erased addresses stay suppressed (``screen_claimed``)."""
    now = db_now(session)
    token = secrets.token_hex(16)
    if session.get_bind().dialect.name == "postgresql":
        ids = _pg_candidates(session, now=now, limit=limit)
    else:
        ids = _sqlite_candidates(session, now=now, limit=limit)
    if not ids:
        return Claim(token=token, now=now, messages=[])
    messages = table(Message)
    # Core, not the ORM's bulk update: this runs for every batch, and the ORM's bookkeeping (it
    # would look for these rows in the session) costs more than the statement itself.
    rows = (
        session.connection()
        .execute(
            update(messages)
            .where(messages.c.id.in_(ids))
            .values(
                status=MessageStatus.sending.value,
                lease_owner=owner,
                lease_token=token,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                updated_at=now,
            )
            .returning(*(messages.c[column.key] for column in _CLAIMED_COLUMNS))
        )
        .all()
    )
    claimed = [ClaimedMessage(*row) for row in rows]
    # Compliance first: a message that must not go out never spends a throttle slot.
    allowed = screen_claimed(session=session, messages=claimed, now=now, address_key=address_key)
    allowed = defer_outside_windows(session, allowed, now)  # outside: back at its next opening
    admission = _apply_throttles(session, allowed, now=now, lead=lead)
    admitted = sorted(admission.messages, key=lambda m: (-m.priority, m.id))
    return Claim(
        token=token,
        now=now,
        messages=admitted,
        held_back=len(allowed) - len(admitted),
        clock=admission.clock,
        wake_at=admission.wake_at,
        adaptive=frozenset(admission.adaptive),
    )


@dataclass(slots=True)
class _Admission:
    messages: list[ClaimedMessage]  # admitted, throttled ones with their slots
    clock: ClockReading | None = None  # the clock the slots were given on
    wake_at: float | None = None  # when something held back may be claimed again (epoch)
    #: (tenant, domain) pairs admitted under an adaptive rate: their successes raise it again.
    adaptive: set[tuple[int, str]] = field(default_factory=set)


def _apply_throttles(
    session: Session, claimed: list[ClaimedMessage], *, now: datetime, lead: float
) -> _Admission:
    """Give what the tenants' and domains' limits admit a slot within the horizon; requeue the
    rest untouched, to be claimed again shortly before its slot."""
    by_tenant: dict[int, list[ClaimedMessage]] = defaultdict(list)
    for message in claimed:
        by_tenant[message.tenant_id].append(message)
    throttles, domain_limits = _lock_limits(
        session, tenant_ids=by_tenant, domains={_domain_of(m) for m in claimed}
    )
    # Then the adaptive rates of domains that asked to slow down, in the same order.
    rates = lock_limiting_rates(
        session, tenant_ids=by_tenant, domains={_domain_of(m) for m in claimed}, now=now
    )
    if not throttles and not domain_limits and not rates:
        return _Admission(claimed)
    # Read after the locks: claims of the same tenant see the clock in the order they hold them.
    clock = _read_clock(session)
    admission = _Admission([], clock)
    held: dict[float | None, list[int]] = defaultdict(list)  # by new not_before; None: as it was
    for tenant_id, messages in by_tenant.items():
        tenant_rates = {domain: row for (t, domain), row in rates.items() if t == tenant_id}
        _admit_tenant(
            throttles.get(tenant_id),
            domain_limits[tenant_id],
            tenant_rates,
            messages,
            clock.db,
            lead,
            admission,
            held,
        )
    for not_before, ids in held.items():
        _requeue_unstarted(
            session,
            ids,
            not_before=None if not_before is None else datetime.fromtimestamp(not_before, UTC),
            now=datetime.fromtimestamp(clock.db, UTC),
        )
    return admission


def _lock_limits(
    session: Session, *, tenant_ids: Iterable[int], domains: Iterable[str]
) -> tuple[dict[int, Throttle], dict[int, dict[str, DomainThrottle]]]:
    """Lock the enabled throttles of these tenants, then their limits for these domains.

    Every claim and release locks in this order, tenant rows by tenant, then domain rows by
    (tenant, domain), so two of them cannot deadlock. The domains of all tenants are locked in one
    statement (not one per tenant: a claim may interleave dozens); the IN lists select a superset,
    whose extra rows are only locked for the length of the transaction.
    """
    tenants = sorted(set(tenant_ids))
    throttles = {
        t.tenant_id: t
        for t in session.scalars(
            select(Throttle)
            .where(Throttle.tenant_id.in_(tenants), Throttle.enabled.is_(True))
            .order_by(Throttle.tenant_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }
    domain_limits: dict[int, dict[str, DomainThrottle]] = defaultdict(dict)
    for limit in session.scalars(
        select(DomainThrottle)
        .where(DomainThrottle.tenant_id.in_(tenants), DomainThrottle.domain.in_(sorted(domains)))
        .order_by(DomainThrottle.tenant_id, DomainThrottle.domain)
        .with_for_update()
        .execution_options(populate_existing=True)
    ):
        domain_limits[limit.tenant_id][limit.domain] = limit
    return throttles, domain_limits


def _read_clock(session: Session) -> ClockReading:
    """The database's clock with the shortest round trip of a few tries: a slow answer (a busy
    server, this thread waiting for the GIL) makes every slot of the claim start that much later
    than it could, or not at all when it eats the slot's allowed lateness."""
    best: ClockReading | None = None
    for _ in range(CLOCK_TRIES):
        before = time.monotonic()
        db = db_now(session).timestamp()
        reading = ClockReading(db=db, before=before, after=time.monotonic())
        if best is None or reading.after - reading.before < best.after - best.before:
            best = reading
        if best.after - best.before <= CLOCK_ROUND_TRIP:
            break
    assert best is not None
    return best


def _admit_tenant(
    throttle: Throttle | None,
    domain_rows: dict[str, DomainThrottle],
    rates: dict[str, DomainRate],
    messages: list[ClaimedMessage],
    now: float,
    lead: float,
    admission: _Admission,
    held: dict[float | None, list[int]],
) -> None:
    """Schedule one tenant's claimed messages against its windows and its domains' windows."""
    tenant_windows = _load_windows(throttle, TENANT_WINDOWS, now) if throttle else {}
    domain_windows: dict[str, dict[str, Window]] = {
        domain: dict(_load_windows(row, DOMAIN_WINDOWS, now)) for domain, row in domain_rows.items()
    }
    for domain, row in rates.items():
        domain_windows.setdefault(domain, {})[ADAPTIVE] = adaptive_window(row)
    throttled: list[ClaimedMessage] = []
    # Transactional mail first: within a tenant's own budget it still outranks campaigns.
    for message in sorted(messages, key=lambda m: (-m.priority, m.id)):
        if tenant_windows or domain_windows.get(_domain_of(message)):
            throttled.append(message)
        else:
            admission.messages.append(message)
    if not throttled:
        return
    result = admit_tenant(
        list(tenant_windows.values()),
        [list(domain_windows.get(_domain_of(m), {}).values()) for m in throttled],
        now=now,
        lead=lead,
    )
    if throttle is not None:
        throttle.window_state = {name: w.state() for name, w in tenant_windows.items()}
        if result.blocked_until is not None:
            throttle.blocked_until = result.blocked_until
    _store_domains(domain_rows, rates, domain_windows, {_domain_of(m) for m in throttled})
    for message, decision in zip(throttled, result.decisions, strict=True):
        if isinstance(decision, Slot):
            admission.messages.append(
                replace(
                    message, send_at=decision.at, send_by=decision.latest, send_lead=decision.lead
                )
            )
            if _domain_of(message) in rates:
                admission.adaptive.add((message.tenant_id, _domain_of(message)))
        else:
            held[decision.not_before].append(message.id)
    if result.wake_at is not None:
        earlier = admission.wake_at if admission.wake_at is not None else math.inf
        admission.wake_at = min(earlier, result.wake_at)


def _store_domains(
    rows: dict[str, DomainThrottle],
    rates: dict[str, DomainRate],
    windows: dict[str, dict[str, Window]],
    sent_to: set[str],
) -> None:
    """Write back the state of the domains this claim scheduled mail to: the configured limits'
    to their row, an adaptive rate's next start to its own row."""
    for domain in sent_to:
        named = windows.get(domain, {})
        if domain in rows:
            rows[domain].window_state = {n: w.state() for n, w in named.items() if n != ADAPTIVE}
        if domain in rates:
            rates[domain].tat = named[ADAPTIVE].state()["tat"]


def _load_windows(
    row: Throttle | DomainThrottle, spec: tuple[tuple[str, str, float], ...], now: float
) -> dict[str, Spacing | SlidingCount]:
    """The windows of the limits ``row`` sets, with their stored state."""
    stored = row.window_state or {}
    windows: dict[str, Spacing | SlidingCount] = {}
    for name, column, seconds in spec:
        limit = getattr(row, column)
        if limit is not None:
            windows[name] = window_for(limit, seconds, stored.get(name), now=now)
    return windows


def _domain_of(message: ClaimedMessage) -> str:
    return domain_of(message.to_address)


def _requeue_unstarted(
    session: Session, ids: Sequence[int], *, not_before: datetime | None, now: datetime
) -> None:
    """Back to the queue untouched: a message held back by a throttle has not used an attempt."""
    values = requeue_values(now)
    if not_before is not None:
        values["not_before"] = not_before
    session.execute(update(Message).where(Message.id.in_(ids)).values(**values))


def release_unsent(
    *, session: Session, token: str, messages: Sequence[ClaimedMessage], now: datetime
) -> None:
    """Back to the queue, unsent, what the worker leased under ``token`` but did not send: a
    throttled message that would have reached the server later than its slot allowed. No attempt
    is spent, and its place in the queue is kept. A slot the server saw nothing of (``send_at``
    still set) stops counting against the windows that gave it: after a burst a worker could not
    start in time, the window's room is not lost for its length. One whose envelope went out
    (``send_at`` None) stays counted, as the server may count it.
    """
    released = set(
        session.scalars(
            update(Message)
            .where(
                Message.id.in_([m.id for m in messages]),
                Message.lease_token == token,
                Message.status == MessageStatus.sending.value,
            )
            .values(**requeue_values(now))
            .returning(Message.id)
        )
    )
    unused = [m for m in messages if m.id in released and m.send_at is not None]
    if not unused:
        return
    throttles, domain_limits = _lock_limits(
        session, tenant_ids={m.tenant_id for m in unused}, domains={_domain_of(m) for m in unused}
    )
    epoch = now.timestamp()
    for throttle in throttles.values():
        mine = [m for m in unused if m.tenant_id == throttle.tenant_id]
        _give_back(throttle, TENANT_WINDOWS, mine, epoch)
    for tenant_id, rows in domain_limits.items():
        for domain, row in rows.items():
            mine = [m for m in unused if m.tenant_id == tenant_id and _domain_of(m) == domain]
            _give_back(row, DOMAIN_WINDOWS, mine, epoch)


def _give_back(
    row: Throttle | DomainThrottle,
    spec: tuple[tuple[str, str, float], ...],
    unused: list[ClaimedMessage],
    now: float,
) -> None:
    windows = _load_windows(row, spec, now)
    for message in unused:
        for window in windows.values():
            window.give_back(cast(float, message.send_at), message.send_lead)
    row.window_state = {name: w.state() for name, w in windows.items()}
    if isinstance(row, Throttle):
        row.blocked_until = 0.0  # the next claim looks again, and closes it again if need be
