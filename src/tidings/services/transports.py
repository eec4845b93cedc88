"""A tenant's own sending accounts: register, list, test and remove them.

The URL, with its password or API key, is checked (``transports.tenant_urls``: the factory's own
parsers, then what a tenant may not aim us at), sealed at rest and never shown again: reads carry
the masked URL. The workers pick the list up within ``routing.ROUTES_TTL`` seconds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tidings.config import Settings
from tidings.db.models import TenantTransport
from tidings.errors import Conflict, InvalidInput, NotFound
from tidings.transports import directory
from tidings.transports.factory import ProbeResult, mask_url, probe_url
from tidings.transports.tenant_urls import Resolver, TenantUrlPolicy, check_tenant_url

MAX_TRANSPORTS_PER_TENANT = 20
MAX_PRIORITY = 100
MAX_WEIGHT = 1000


def url_policy(settings: Settings) -> TenantUrlPolicy:
    return TenantUrlPolicy(
        data_dir=settings.data_dir,
        allow_private=settings.transport_allow_private,
        allowed_hosts=tuple(settings.transport_allowed_hosts),
    )


def create_transport(
    *,
    session: Session,
    tenant_id: int,
    name: str,
    url: str,
    priority: int,
    weight: int,
    settings: Settings,
    secret_key: str,
    now: datetime,
    resolve: Resolver | None = None,
) -> TenantTransport:
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput("name must be 1 to 200 characters", field="name")
    if not 1 <= priority <= MAX_PRIORITY:
        raise InvalidInput(f"priority must be 1 (first) to {MAX_PRIORITY}", field="priority")
    if not 1 <= weight <= MAX_WEIGHT:
        raise InvalidInput(f"weight must be 1 to {MAX_WEIGHT}", field="weight")
    check_tenant_url(url, tenant_id=tenant_id, policy=url_policy(settings), resolve=resolve)
    count = session.scalar(
        select(func.count())
        .select_from(TenantTransport)
        .where(TenantTransport.tenant_id == tenant_id)
    )
    if (count or 0) >= MAX_TRANSPORTS_PER_TENANT:
        raise Conflict(f"a tenant may have at most {MAX_TRANSPORTS_PER_TENANT} transports")
    row = TenantTransport(
        tenant_id=tenant_id,
        name=name,
        url_sealed=directory.seal_url(secret_key, tenant_id, url),
        url_masked=mask_url(url),
        priority=priority,
        weight=weight,
        healthy=True,
        failures=0,
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        raise Conflict(f"a transport named {name!r} exists already", field="name") from None
    return row


def list_transports(*, session: Session, tenant_id: int) -> list[TenantTransport]:
    """The tenant's transports in the order they are tried: priority, then age."""
    return list(
        session.scalars(
            select(TenantTransport)
            .where(TenantTransport.tenant_id == tenant_id)
            .order_by(TenantTransport.priority, TenantTransport.id)
        )
    )


def get_transport(*, session: Session, tenant_id: int, transport_id: int) -> TenantTransport:
    row = session.scalar(
        select(TenantTransport).where(
            TenantTransport.id == transport_id, TenantTransport.tenant_id == tenant_id
        )
    )
    if row is None:
        raise NotFound("no such transport")
    return row


def delete_transport(*, session: Session, tenant_id: int, transport_id: int) -> None:
    """Removes it; workers close it at their next read of the list. The tenant's last one gone,
    its mail goes through the service's default transport again."""
    removed = session.execute(
        delete(TenantTransport)
        .where(TenantTransport.id == transport_id, TenantTransport.tenant_id == tenant_id)
        .returning(TenantTransport.id)
    ).all()
    if not removed:
        raise NotFound("no such transport")


def transport_url(*, row: TenantTransport, secret_key: str) -> str:
    """The unsealed URL, for a test connection; never for an answer or a log."""
    return directory.unseal_url(secret_key, row)


def record_test(
    *, session: Session, tenant_id: int, transport_id: int, result: ProbeResult, now: datetime
) -> TenantTransport:
    """A test counts as a probe: success makes the transport healthy again, failure counts."""
    get_transport(session=session, tenant_id=tenant_id, transport_id=transport_id)
    if result.ok:
        directory.record_success(session, tenant_id=tenant_id, transport_id=transport_id, now=now)
    else:
        directory.record_failure(
            session, tenant_id=tenant_id, transport_id=transport_id, reason=result.answer, now=now
        )
    session.expire_all()
    return get_transport(session=session, tenant_id=tenant_id, transport_id=transport_id)


@dataclass(frozen=True, slots=True)
class TransportHealth:
    """One line of the dashboard's "Sending" page."""

    id: int
    name: str
    url: str  # masked
    priority: int
    weight: int
    healthy: bool
    failures: int
    last_error: str | None
    last_checked_at: datetime | None
    next_probe_at: datetime | None


def transports_health(*, session: Session, tenant_id: int) -> list[TransportHealth]:
    """The tenant's transports with their health, in the order they are tried (empty: the mail
    goes through the service's default transport)."""
    return [
        TransportHealth(
            id=r.id,
            name=r.name,
            url=r.url_masked,
            priority=r.priority,
            weight=r.weight,
            healthy=r.healthy,
            failures=r.failures,
            last_error=r.last_error,
            last_checked_at=r.last_checked_at,
            next_probe_at=r.next_probe_at if not r.healthy else None,
        )
        for r in list_transports(session=session, tenant_id=tenant_id)
    ]


async def test_transport(
    *,
    session: Session,
    settings: Settings,
    secret_key: str,
    tenant_id: int,
    transport_id: int,
    now: datetime,
) -> tuple[ProbeResult, TenantTransport]:
    """Connect and say hello (``factory.probe_url``: SMTP connect, TLS, EHLO, AUTH; Resend an
    authenticated read), sending nothing, and record the answer as a health probe. The database
    parts run in a thread each, so that the wait for the server holds no connection's thread."""

    def unsealed() -> str:
        row = get_transport(session=session, tenant_id=tenant_id, transport_id=transport_id)
        # The host again: what it resolves to may have changed since it was registered.
        return check_tenant_url(
            transport_url(row=row, secret_key=secret_key),
            tenant_id=tenant_id,
            policy=url_policy(settings),
        )

    result = await probe_url(await asyncio.to_thread(unsealed))
    row = await asyncio.to_thread(
        record_test,
        session=session,
        tenant_id=tenant_id,
        transport_id=transport_id,
        result=result,
        now=now,
    )
    return result, row
