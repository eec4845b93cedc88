"""A tenant's sending limits, overall and per recipient domain.

Only the limit columns are written here. The GCRA state in the same rows (``tat_*``,
``blocked_until``) belongs to the workers, which update it in single statements on the database's
clock; writing it from here would race with them, so every change is a column-wise ``UPDATE``, never
a read-modify-write of the whole row.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tidings.db.models import DomainThrottle, Throttle
from tidings.errors import InvalidInput, NotFound
from tidings.services.pagination import Page, paginate

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


def list_domain_throttles(
    *, session: Session, tenant_id: int, limit: int, cursor: str | None
) -> Page[DomainThrottle]:
    query = select(DomainThrottle).where(DomainThrottle.tenant_id == tenant_id)
    return paginate(session, query, DomainThrottle.id, limit=limit, cursor=cursor)


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
