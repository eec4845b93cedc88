"""Every statement on the adaptive per-domain rates (``domain_rates``), written once, with its locks.

The claim and the outcome writes both change these rows, from many workers at once. Each change is
a read-modify-write of the rows under ``FOR UPDATE`` (SQLite: under the write lock that
``BEGIN IMMEDIATE`` took), so none is lost. Every transaction locks them last, in ``(tenant,
domain)`` order: the claim after its ``throttles`` and ``domain_throttles`` rows, an outcome write
after its batch's messages (``queue.outcomes.lock_leased``), so that no two can deadlock. The
arithmetic itself is ``delivery/adaptive.py``'s; the clock is the database's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ARRAY, BigInteger, Select, String, any_, bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tidings.db.models import DomainRate, DomainThrottle, Throttle, table
from tidings.delivery.adaptive import (
    FORGET_SECONDS,
    START_RATE,
    AdaptiveRate,
    Paced,
    RateState,
    ceiling_of,
    is_limiting,
    next_slot,
    slow_down,
    speed_up,
    window_of,
)

Key = tuple[int, str]  # (tenant_id, recipient domain)

#: A row that never slowed anything: what a new row holds until its first slow-down is applied.
FORGOTTEN = AdaptiveRate(
    rate=START_RATE,
    state=RateState.steady,
    successes=0,
    slowed_from=START_RATE,
    last_slowdown_at=0.0,
    tat=0.0,
    paused_until=0.0,
)


@dataclass(frozen=True, slots=True)
class DomainFeedback:
    """What one batch's replies say about one (tenant, domain)."""

    tenant_id: int
    domain: str
    slowdowns: int  # slow-down replies (421, 4.7.x, 429)
    successes: int  # accepted messages that were admitted under the domain's adaptive rate
    admitted_at: float  # when the batch was claimed (epoch seconds, the database's clock)
    retry_after: float | None = None  # the longest Retry-After among the slow-downs


def _limiting_statement(*, arrays: bool) -> Select[int, str]:
    """Which of the claimed tenants' domains are held to a rate now. Core and built once, not the
    ORM: it runs in every claim, and building an ORM statement costs more than the look-up itself.
    PostgreSQL takes the names as one array parameter: an IN list of 50 parameters costs the
    driver more than the query."""
    rates = table(DomainRate)
    if arrays:
        tenant_ids = rates.c.tenant_id == any_(bindparam("tenants", type_=ARRAY(BigInteger)))
        domains = rates.c.domain == any_(bindparam("domains", type_=ARRAY(String)))
    else:
        tenant_ids = rates.c.tenant_id.in_(bindparam("tenants", expanding=True))
        domains = rates.c.domain.in_(bindparam("domains", expanding=True))
    return select(rates.c.tenant_id, rates.c.domain).where(
        tenant_ids,
        domains,
        rates.c.state != RateState.steady.value,
        rates.c.last_slowdown_at > bindparam("recent"),
    )


_LIMITING = {"postgresql": _limiting_statement(arrays=True)}
_LIMITING_PORTABLE = _limiting_statement(arrays=False)


def lock_limiting_rates(
    session: Session, *, tenant_ids: Iterable[int], domains: Iterable[str], now: datetime
) -> dict[Key, DomainRate]:
    """The claim's rows: rates that hold a claimed domain back now, locked in ``(tenant, domain)``
    order.

    An unlocked look-up comes first: when none of the claimed domains is held to a rate (the
    common case) the claim pays that one statement, as cheap as a ``SELECT 1``, and nothing more.
    Only then are the rows found locked; a row that starts limiting between the two statements is
    seen by the next claim, as if this one had come a moment earlier. The IN lists select a
    superset of the claimed pairs (a domain only another claimed tenant sends to); those rows are
    locked for the length of the claim only, as the domain limits' are."""
    tenants = sorted(set(tenant_ids))
    recent = now.timestamp() - FORGET_SECONDS
    statement = _LIMITING.get(session.get_bind().dialect.name, _LIMITING_PORTABLE)
    found = session.connection().execute(
        statement, {"tenants": tenants, "domains": sorted(set(domains)), "recent": recent}
    )
    limiting = {(int(tenant_id), str(domain)) for tenant_id, domain in found}
    if not limiting:
        return {}
    rows = session.scalars(
        select(DomainRate)
        .where(
            DomainRate.tenant_id.in_(sorted({tenant_id for tenant_id, _ in limiting})),
            DomainRate.domain.in_(sorted({domain for _, domain in limiting})),
            DomainRate.state != RateState.steady.value,
            DomainRate.last_slowdown_at > recent,
        )
        .order_by(DomainRate.tenant_id, DomainRate.domain)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {(row.tenant_id, row.domain): row for row in rows}


#: The name of the adaptive window among a domain's windows in the claim.
ADAPTIVE = "adaptive"


def adaptive_window(row: DomainRate) -> Paced:
    """The window a locked, limiting rate adds to the mail for its domain, on top of the domain's
    and the tenant's configured ones. Its GCRA state is ``row.tat``: read it, and store the TAT the
    admission leaves back into it. A Retry-After pause is already in it."""
    return window_of(state_of(row))


def record_feedback(
    session: Session, *, feedback: Sequence[DomainFeedback], now: datetime
) -> dict[Key, datetime]:
    """Lower the rate of every domain that asked us to slow down, count successes toward the
    increase of the others; returns each slowed domain's next free slot, for its refused mail."""
    if not feedback:
        return {}
    epoch = now.timestamp()
    keys = sorted({(f.tenant_id, f.domain) for f in feedback})
    bounds = ceilings(session, keys)
    slowed = sorted({(f.tenant_id, f.domain) for f in feedback if f.slowdowns})
    if slowed:
        _insert_missing(session, slowed, now=now)
    # A superset again (every tenant's rows for every domain named), for the same reason.
    rows = {
        (row.tenant_id, row.domain): row
        for row in session.scalars(
            select(DomainRate)
            .where(
                DomainRate.tenant_id.in_(sorted({tenant_id for tenant_id, _ in keys})),
                DomainRate.domain.in_(sorted({domain for _, domain in keys})),
            )
            .order_by(DomainRate.tenant_id, DomainRate.domain)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }
    slots: dict[Key, datetime] = {}
    for item in feedback:
        key = (item.tenant_id, item.domain)
        row = rows.get(key)
        if row is None:
            continue  # only successes, to a domain forgotten meanwhile
        current = state_of(row)
        if item.slowdowns:
            current = slow_down(
                current,
                now=epoch,
                admitted_at=item.admitted_at,
                ceiling=bounds.get(key),
                retry_after=item.retry_after,
            )
            slots[key] = datetime.fromtimestamp(next_slot(current, now=epoch), UTC)
        elif is_limiting(current, now=epoch):
            current = speed_up(current, successes=item.successes, ceiling=bounds.get(key))
        _store(row, current, now=now)
    return slots


def forget_quiet_domains(session: Session, *, now: datetime) -> int:
    """Delete the rows of domains that have not slowed us down for ``FORGET_SECONDS``; how many."""
    result = session.execute(
        delete(DomainRate)
        .where(DomainRate.last_slowdown_at <= now.timestamp() - FORGET_SECONDS)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def state_of(row: DomainRate) -> AdaptiveRate:
    return AdaptiveRate(
        rate=row.rate,
        state=RateState(row.state),
        successes=row.successes,
        slowed_from=row.slowed_from,
        last_slowdown_at=row.last_slowdown_at,
        tat=row.tat,
        paused_until=row.paused_until,
    )


def _store(row: DomainRate, current: AdaptiveRate, *, now: datetime) -> None:
    if state_of(row) == current:
        return
    row.rate = current.rate
    row.state = current.state.value
    row.successes = current.successes
    row.slowed_from = current.slowed_from
    row.last_slowdown_at = current.last_slowdown_at
    row.tat = current.tat
    row.paused_until = current.paused_until
    row.updated_at = now


def _insert_missing(session: Session, keys: Sequence[Key], *, now: datetime) -> None:
    """Rows for domains slowing us down for the first time, inserted in key order.

    Each starts forgotten, as if its last slow-down were long ago, and is then lowered like any
    other row; ``ON CONFLICT DO NOTHING`` makes a row another worker inserted first just that."""
    fresh = [
        {"tenant_id": tenant_id, "domain": domain, **_columns(FORGOTTEN), "updated_at": now}
        for tenant_id, domain in keys
    ]
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(DomainRate).values(fresh).on_conflict_do_nothing())


def _columns(current: AdaptiveRate) -> dict[str, object]:
    return {
        "rate": current.rate,
        "state": current.state.value,
        "successes": current.successes,
        "slowed_from": current.slowed_from,
        "last_slowdown_at": current.last_slowdown_at,
        "tat": current.tat,
        "paused_until": current.paused_until,
    }


def ceilings(session: Session, keys: Sequence[Key]) -> dict[Key, float | None]:
    """Each pair's configured bound as a sustained rate: its domain limits, and its tenant's limits
    when they are on. Read without a lock: a limit changed meanwhile is seen by the next batch."""
    tenant_ids = sorted({tenant_id for tenant_id, _ in keys})
    domain_limits = {
        (row.tenant_id, row.domain): row
        for row in session.scalars(
            select(DomainThrottle).where(
                DomainThrottle.tenant_id.in_(tenant_ids),
                DomainThrottle.domain.in_(sorted({domain for _, domain in keys})),
            )
        )
    }
    tenant_limits: dict[int, list[tuple[int | None, float]]] = defaultdict(list)
    for throttle in session.scalars(
        select(Throttle).where(Throttle.tenant_id.in_(tenant_ids), Throttle.enabled.is_(True))
    ):
        tenant_limits[throttle.tenant_id] = [
            (throttle.per_second, 1.0),
            (throttle.per_minute, 60.0),
            (throttle.per_hour, 3600.0),
            (throttle.per_day, 86400.0),
        ]
    found: dict[Key, float | None] = {}
    for key in keys:
        limits = list(tenant_limits[key[0]])
        domain = domain_limits.get(key)
        if domain is not None:
            limits += [(domain.per_minute, 60.0), (domain.per_hour, 3600.0)]
        found[key] = ceiling_of(limits)
    return found
