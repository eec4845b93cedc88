"""A tenant's sending limits, overall and per recipient domain, and the domains' adaptive rates.

Only the limit columns are written here. The GCRA state in the same rows (``tat_*``,
``blocked_until``) belongs to the workers, which update it in single statements on the database's
clock; writing it from here would race with them, so every change is a column-wise ``UPDATE``, never
a read-modify-write of the whole row. The adaptive rates (``domain_rates``) are the workers' alone:
they are only read here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, delete, select, union, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tidings.db.models import DomainRate, DomainThrottle, Throttle
from tidings.delivery.adaptive import FORGET_SECONDS, RateState, is_limiting
from tidings.errors import InvalidInput, NotFound
from tidings.queue import domain_rates
from tidings.services.pagination import Page, check_limit

#: The largest limit accepted for any window: far beyond any real sender, well inside a 32-bit column.
MAX_RATE = 1_000_000_000  # messages per window
TENANT_LIMITS = ("per_second", "per_minute", "per_hour", "per_day")
DOMAIN_LIMITS = ("per_minute", "per_hour")
MAX_DOMAIN_LENGTH = 253


def check_rate(value: object, *, field: str) -> int | None:
    """A limit is a positive whole number of messages per window, or None for no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RATE:
        raise InvalidInput(
            f"{field} must be a whole number from 1 to {MAX_RATE}, or null for no limit",
            field=field,
        )
    return value


def get_throttle(*, session: Session, tenant_id: int, now: datetime) -> Throttle:
    """The tenant's limits; a tenant without a row has none (a detached, unsaved default)."""
    throttle = session.get(Throttle, tenant_id)
    if throttle is None:
        return Throttle(tenant_id=tenant_id, enabled=False, updated_at=now)
    return throttle


def update_throttle(
    *, session: Session, tenant_id: int, changes: Mapping[str, object], now: datetime
) -> Throttle:
    """Change the given fields (``enabled`` and the ``per_*`` limits) and nothing else."""
    values: dict[str, object] = {}
    for name, value in changes.items():
        if name == "enabled":
            if not isinstance(value, bool):
                raise InvalidInput("enabled must be true or false", field="enabled")
            values[name] = value
        elif name in TENANT_LIMITS:
            values[name] = check_rate(value, field=name)
        else:
            raise InvalidInput(f"unknown throttle field {name}", field=name)
    _insert_if_missing(
        session, Throttle, {"tenant_id": tenant_id, "enabled": False, "updated_at": now}
    )
    session.execute(
        update(Throttle)
        .where(Throttle.tenant_id == tenant_id)
        .values(**values, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    throttle = session.scalar(
        select(Throttle)
        .where(Throttle.tenant_id == tenant_id)
        .execution_options(populate_existing=True)
    )
    assert throttle is not None
    return throttle


def normalise_domain(domain: str) -> str:
    """A recipient domain as addresses store it: lower case, Unicode labels (IDNA decoded)."""
    value = domain.strip().rstrip(".").lower()
    try:
        ascii_form = value.encode("idna").decode("ascii")
        unicode_form = ascii_form.encode("ascii").decode("idna")
    except UnicodeError as exc:
        raise InvalidInput(f"{domain!r} is not a domain name", field="domain") from exc
    labels = ascii_form.split(".")
    if (
        not value
        or len(ascii_form) > MAX_DOMAIN_LENGTH
        or len(labels) < 2
        or not all(
            label
            and len(label) <= 63
            and label.replace("-", "").isalnum()
            and label.isascii()
            and not label.startswith("-")
            and not label.endswith("-")
            for label in labels
        )
    ):
        raise InvalidInput(f"{domain!r} is not a domain name", field="domain")
    return unicode_form


@dataclass(frozen=True, slots=True)
class DomainState:
    """One recipient domain as the tenant sees it: its configured limits and its adaptive rate."""

    domain: str
    per_minute: int | None  # configured; None: no limit
    per_hour: int | None
    adaptive_rate: float | None  # messages per second while the domain holds us to one, else None
    ceiling: float | None  # the configured limits as a rate per second; None: no limit at all
    state: str  # backing_off | probing | steady (steady: only the configured limits apply)
    last_slowdown_at: datetime | None
    paused_until: datetime | None  # a Retry-After still running


def list_domains(
    *, session: Session, tenant_id: int, limit: int, cursor: str | None, now: datetime
) -> Page[DomainState]:
    """Every domain with configured limits or an adaptive rate, in byte order of the name.

    The cursor is the last name shown, hex-encoded, so a page never shifts when a domain is
    added or forgotten meanwhile."""
    check_limit(limit)
    after = _decode_domain_cursor(cursor)
    recent = now.timestamp() - FORGET_SECONDS
    names = union(
        select(DomainThrottle.domain.label("domain")).where(DomainThrottle.tenant_id == tenant_id),
        select(DomainRate.domain.label("domain")).where(
            DomainRate.tenant_id == tenant_id, DomainRate.last_slowdown_at > recent
        ),
    ).subquery()
    # Byte order on both databases: SQLite compares text as bytes; PostgreSQL's "C" collation does.
    name: ColumnElement[str] = names.c.domain
    if session.get_bind().dialect.name == "postgresql":
        name = name.collate("C")
    query = select(names.c.domain).order_by(name).limit(limit + 1)
    if after is not None:
        query = query.where(name > after)
    page = list(session.scalars(query))
    more = len(page) > limit
    page = page[:limit]
    if not page:
        return Page(items=[], next_cursor=None)
    limits = {
        row.domain: row
        for row in session.scalars(
            select(DomainThrottle).where(
                DomainThrottle.tenant_id == tenant_id, DomainThrottle.domain.in_(page)
            )
        )
    }
    rates = {
        row.domain: row
        for row in session.scalars(
            select(DomainRate).where(
                DomainRate.tenant_id == tenant_id,
                DomainRate.domain.in_(page),
                DomainRate.last_slowdown_at > recent,
            )
        )
    }
    ceilings = domain_rates.ceilings(session, [(tenant_id, domain) for domain in page])
    items = [
        _domain_state(
            domain, limits.get(domain), rates.get(domain), ceilings[(tenant_id, domain)], now
        )
        for domain in page
    ]
    return Page(items=items, next_cursor=page[-1].encode().hex() if more else None)


def _domain_state(
    domain: str,
    limits: DomainThrottle | None,
    rate: DomainRate | None,
    ceiling: float | None,
    now: datetime,
) -> DomainState:
    adaptive = None if rate is None else domain_rates.state_of(rate)
    limiting = adaptive is not None and is_limiting(adaptive, now=now.timestamp())
    paused = adaptive is not None and adaptive.paused_until > now.timestamp()
    return DomainState(
        domain=domain,
        per_minute=None if limits is None else limits.per_minute,
        per_hour=None if limits is None else limits.per_hour,
        adaptive_rate=adaptive.rate if adaptive is not None and limiting else None,
        ceiling=ceiling,
        state=adaptive.state.value if adaptive is not None else RateState.steady.value,
        last_slowdown_at=None
        if adaptive is None
        else datetime.fromtimestamp(adaptive.last_slowdown_at, UTC),
        paused_until=datetime.fromtimestamp(adaptive.paused_until, UTC)
        if adaptive is not None and paused
        else None,
    )


def _decode_domain_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        return bytes.fromhex(cursor).decode()
    except ValueError:
        raise InvalidInput("cursor is not one this server returned", field="cursor") from None


def set_domain_throttle(
    *,
    session: Session,
    tenant_id: int,
    domain: str,
    per_minute: int | None,
    per_hour: int | None,
) -> DomainThrottle:
    """Create or change the limits for one recipient domain."""
    name = normalise_domain(domain)
    limits = {
        "per_minute": check_rate(per_minute, field="per_minute"),
        "per_hour": check_rate(per_hour, field="per_hour"),
    }
    _insert_if_missing(session, DomainThrottle, {"tenant_id": tenant_id, "domain": name})
    session.execute(
        update(DomainThrottle)
        .where(DomainThrottle.tenant_id == tenant_id, DomainThrottle.domain == name)
        .values(**limits)
        .execution_options(synchronize_session=False)
    )
    row = session.scalar(
        select(DomainThrottle)
        .where(DomainThrottle.tenant_id == tenant_id, DomainThrottle.domain == name)
        .execution_options(populate_existing=True)
    )
    assert row is not None
    return row


def delete_domain_throttle(*, session: Session, tenant_id: int, domain: str) -> DomainThrottle:
    """Remove a domain's limits; the removed row is returned."""
    name = normalise_domain(domain)
    row = session.scalar(
        select(DomainThrottle).where(
            DomainThrottle.tenant_id == tenant_id, DomainThrottle.domain == name
        )
    )
    if row is None:
        raise NotFound(f"no limits are set for {name}", field="domain")
    session.execute(
        delete(DomainThrottle).where(
            DomainThrottle.tenant_id == tenant_id, DomainThrottle.id == row.id
        )
    )
    session.expunge(row)
    return row


def _insert_if_missing(
    session: Session, model: type[Throttle] | type[DomainThrottle], values: dict[str, object]
) -> None:
    """Create the row unless it exists; ``ON CONFLICT DO NOTHING`` keeps two first writers safe."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(model).values(**values).on_conflict_do_nothing())
