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
  tenants are locked (``FOR UPDATE``, in tenant order, so two claims cannot deadlock), the GCRA
  state is advanced on the database's clock, and messages over the limit go straight back to the
  queue with ``not_before`` at the next free slot. Nothing over the limit ever becomes ``sending``.
  A recipient domain that asked us to slow down adds its adaptive rate (``queue/domain_rates.py``)
  as one more window, locked after the domain limits; other domains have no row and cost nothing.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.orm import Session

from tidings.db.models import DomainRate, DomainThrottle, Message, Throttle, table
from tidings.db.types import UTCDateTime
from tidings.delivery.throttle import admit, windows_of
from tidings.domain import TRANSACTIONAL_PRIORITY_BOOST, MessageStatus
from tidings.domain.addresses import domain_of
from tidings.queue.claimed import Claim, ClaimedMessage
from tidings.queue.clock import db_now
from tidings.queue.compliance import screen_claimed
from tidings.queue.domain_rates import adaptive_window, lock_limiting_rates
from tidings.queue.enqueue import requeue_status
from tidings.queue.windows import defer_outside_windows

MAX_BLOCK_SECONDS = 5.0  # a throttled tenant is looked at again at least this often

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
)


_PG_CANDIDATES = text(
    """
    SELECT picked.id, picked.tenant_id FROM (
        SELECT ready.id, ready.tenant_id, ready.priority, ready.not_before,
               row_number() OVER (PARTITION BY ready.tenant_id
                                  ORDER BY ready.priority DESC, ready.not_before, ready.id) AS turn
        FROM (
            SELECT t.id AS tenant_id FROM tenants t
            LEFT JOIN throttles th ON th.tenant_id = t.id
            WHERE COALESCE(th.blocked_until, 0) <= :now_epoch
        ) AS open_tenants
        CROSS JOIN LATERAL (
            SELECT m.id, m.tenant_id, m.priority, m.not_before FROM messages m
            WHERE m.tenant_id = open_tenants.tenant_id AND m.status = 'queued' AND m.not_before <= :now
            ORDER BY m.priority DESC, m.not_before, m.id
            LIMIT :limit
            FOR UPDATE OF m SKIP LOCKED
        ) AS ready
    ) AS picked
    ORDER BY (picked.priority >= :boost) DESC, picked.turn, picked.priority DESC, picked.not_before, picked.id
    LIMIT :limit
    """
).bindparams(bindparam("now", type_=UTCDateTime()))


def _pg_candidates(session: Session, *, now: datetime, limit: int) -> list[int]:
    rows = session.execute(
        _PG_CANDIDATES,
        {
            "now": now,
            "now_epoch": now.timestamp(),
            "limit": limit,
            "boost": TRANSACTIONAL_PRIORITY_BOOST,
        },
    )
    return [row.id for row in rows]


def _sqlite_candidates(session: Session, *, now: datetime, limit: int) -> list[int]:
    """The same choice as PostgreSQL's; the write lock taken at BEGIN IMMEDIATE makes it exclusive."""
    open_tenants = session.scalars(
        text(
            "SELECT t.id FROM tenants t LEFT JOIN throttles th ON th.tenant_id = t.id "
            "WHERE COALESCE(th.blocked_until, 0) <= :now_epoch"
        ),
        {"now_epoch": now.timestamp()},
    ).all()
    ranked: list[tuple[bool, int, int, datetime, int]] = []
    for tenant_id in open_tenants:
        rows = session.execute(
            select(Message.id, Message.priority, Message.not_before)
            .where(
                Message.tenant_id == tenant_id,
                Message.status == "queued",
                Message.not_before <= now,
            )
            .order_by(Message.priority.desc(), Message.not_before, Message.id)
            .limit(limit)
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


def claim_batch(*, session: Session, owner: str, limit: int, lease_seconds: float) -> Claim:
    """Lease up to ``limit`` ready messages to ``owner``; call inside a transaction and commit at once."""
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
    allowed = screen_claimed(session=session, messages=claimed, now=now)
    allowed = defer_outside_windows(session, allowed, now)  # outside: back at its next opening
    admitted, adaptive = _apply_throttles(session, allowed, now=now)
    admitted.sort(key=lambda m: (-m.priority, m.id))
    return Claim(
        token=token,
        now=now,
        messages=admitted,
        held_back=len(allowed) - len(admitted),
        adaptive=adaptive,
    )


def _apply_throttles(
    session: Session, claimed: list[ClaimedMessage], *, now: datetime
) -> tuple[list[ClaimedMessage], frozenset[tuple[int, str]]]:
    """Keep what the tenants' and domains' limits and the domains' adaptive rates allow now;
    requeue the rest at their next free slot. Also returns the (tenant, domain) pairs whose mail
    was admitted under an adaptive rate."""
    by_tenant: dict[int, list[ClaimedMessage]] = defaultdict(list)
    for message in claimed:
        by_tenant[message.tenant_id].append(message)
    throttles = {
        t.tenant_id: t
        for t in session.scalars(
            select(Throttle)
            .where(Throttle.tenant_id.in_(sorted(by_tenant)), Throttle.enabled.is_(True))
            .order_by(Throttle.tenant_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }
    # Every claimed tenant's domain limits in one statement (not one per tenant: a claim may
    # interleave dozens), locked after the tenant rows and in (tenant, domain) order, as every
    # claim does, so two claims cannot deadlock. The IN lists select a superset; extra rows are
    # only locked for the length of this transaction.
    domain_limits: dict[int, list[DomainThrottle]] = defaultdict(list)
    for limit in session.scalars(
        select(DomainThrottle)
        .where(
            DomainThrottle.tenant_id.in_(sorted(by_tenant)),
            DomainThrottle.domain.in_(sorted({_domain_of(m) for m in claimed})),
        )
        .order_by(DomainThrottle.tenant_id, DomainThrottle.domain)
        .with_for_update()
        .execution_options(populate_existing=True)
    ):
        domain_limits[limit.tenant_id].append(limit)
    # Then the adaptive rates of domains that asked to slow down, in the same order.
    rates = lock_limiting_rates(
        session, tenant_ids=by_tenant, domains={_domain_of(m) for m in claimed}, now=now
    )
    epoch = now.timestamp()
    kept: list[ClaimedMessage] = []
    deferred: dict[float, list[int]] = defaultdict(list)
    for tenant_id, messages in by_tenant.items():
        throttle = throttles.get(tenant_id)
        if throttle is not None:
            messages = _admit_tenant(throttle, messages, epoch, deferred)
        kept.extend(_admit_domains(domain_limits[tenant_id], rates, messages, epoch, deferred))
    for free_at, ids in deferred.items():
        if ids:
            _requeue_unstarted(
                session, ids, not_before=datetime.fromtimestamp(free_at, UTC), now=now
            )
    adaptive = {(m.tenant_id, _domain_of(m)) for m in kept} & rates.keys() if rates else set()
    return kept, frozenset(adaptive)


def _admit_tenant(
    throttle: Throttle,
    messages: list[ClaimedMessage],
    epoch: float,
    deferred: dict[float, list[int]],
) -> list[ClaimedMessage]:
    windows = windows_of(
        [
            (throttle.per_second, 1.0),
            (throttle.per_minute, 60.0),
            (throttle.per_hour, 3600.0),
            (throttle.per_day, 86400.0),
        ]
    )
    if not windows:
        return messages
    columns = [
        name
        for name, limit in (
            ("tat_second", throttle.per_second),
            ("tat_minute", throttle.per_minute),
            ("tat_hour", throttle.per_hour),
            ("tat_day", throttle.per_day),
        )
        if limit is not None
    ]
    # Transactional mail first: within a tenant's own budget it still outranks campaigns.
    messages = sorted(messages, key=lambda m: (-m.priority, m.id))
    result = admit(
        windows, [getattr(throttle, c) for c in columns], now=epoch, wanted=len(messages)
    )
    for column, tat in zip(columns, result.tats, strict=True):
        setattr(throttle, column, tat)
    if result.count < len(messages):
        # Closed until the next slot: claims skip this tenant entirely until then. Capped, so that
        # a raised limit is seen within seconds rather than after the old slot.
        throttle.blocked_until = min(result.next_free_at, epoch + MAX_BLOCK_SECONDS)
        deferred[result.next_free_at].extend(m.id for m in messages[result.count :])
    return messages[: result.count]


def _domain_of(message: ClaimedMessage) -> str:
    return domain_of(message.to_address)


def _admit_domains(
    limits: list[DomainThrottle],
    rates: dict[tuple[int, str], DomainRate],
    messages: list[ClaimedMessage],
    epoch: float,
    deferred: dict[float, list[int]],
) -> list[ClaimedMessage]:
    """Keep what one tenant's per-domain limits and adaptive rates allow; ``limits`` are its
    locked rows, ``rates`` every claimed tenant's."""
    if not limits and not rates:
        return messages
    by_domain: dict[str, list[ClaimedMessage]] = defaultdict(list)
    for message in messages:
        by_domain[_domain_of(message)].append(message)
    limit_of = {limit.domain: limit for limit in limits}
    for domain, group in by_domain.items():
        limit = limit_of.get(domain)
        configured = (
            [
                (column, value, seconds)
                for column, value, seconds in (
                    ("tat_minute", limit.per_minute, 60.0),
                    ("tat_hour", limit.per_hour, 3600.0),
                )
                if value is not None
            ]
            if limit is not None
            else []
        )
        windows = windows_of([(value, seconds) for _, value, seconds in configured])
        tats = [getattr(limit, column) for column, _, _ in configured]
        # The domain's adaptive rate, when it asked us to slow down: one more window.
        rate = rates.get((group[0].tenant_id, domain))
        if rate is not None:
            windows.append(adaptive_window(rate))
            tats.append(rate.tat)
        if not windows:
            continue
        result = admit(windows, tats, now=epoch, wanted=len(group))
        for (column, _, _), tat in zip(configured, result.tats, strict=False):
            setattr(limit, column, tat)
        if rate is not None:
            rate.tat = result.tats[-1]
        deferred[result.next_free_at].extend(m.id for m in group[result.count :])
        by_domain[domain] = group[: result.count]
    return [m for group in by_domain.values() for m in group]


def _requeue_unstarted(
    session: Session, ids: Sequence[int], *, not_before: datetime, now: datetime
) -> None:
    """Back to the queue untouched: a message held back by a throttle has not used an attempt."""
    session.execute(
        update(Message)
        .where(Message.id.in_(ids))
        .values(
            status=requeue_status(),
            not_before=not_before,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
            updated_at=now,
        )
    )
