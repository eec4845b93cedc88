"""Tenants' transports in the database, for the router (``routing.RouteDirectory``) and the API.

Health is written here and only here: one statement per change, each counting on the row itself
(``failures = failures + 1``), so two workers failing at once count two failures, and the state
every process and the dashboard read is the row's. Timestamps are the database's clock.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from tidings.db.engine import transaction
from tidings.db.models import TenantSettings, TenantTransport
from tidings.errors import ConfigurationError
from tidings.queue.clock import db_now
from tidings.sealing import seal, unseal
from tidings.transports.routing import (
    UNHEALTHY_AFTER,
    Health,
    Route,
    TenantRoutes,
    probe_delay,
)

MAX_ERROR_LENGTH = 500  # characters of a failure kept in ``last_error``


def url_purpose(tenant_id: int) -> str:
    """What a tenant's transport URL is sealed for: a sealed URL copied to another tenant's row
    does not open there."""
    return f"transport:tenant={tenant_id}"


def seal_url(secret_key: str, tenant_id: int, url: str) -> str:
    return seal(secret_key, url.encode(), purpose=url_purpose(tenant_id))


def unseal_url(secret_key: str, row: TenantTransport) -> str:
    return unseal(secret_key, row.url_sealed, purpose=url_purpose(row.tenant_id)).decode()


def record_failure(
    session: Session, *, tenant_id: int, transport_id: int, reason: str, now: datetime
) -> Health:
    """One more failure in a row; the ``UNHEALTHY_AFTER``-th marks it unhealthy, and every one
    after that pushes the next probe further (``routing.probe_delay``)."""
    failures = session.execute(
        update(TenantTransport)
        .where(TenantTransport.id == transport_id, TenantTransport.tenant_id == tenant_id)
        .values(
            failures=TenantTransport.failures + 1,
            last_error=reason[:MAX_ERROR_LENGTH],
            last_checked_at=now,
        )
        .returning(TenantTransport.failures)
    ).scalar()
    if failures is None:  # deleted meanwhile
        return Health(healthy=True, failures=0, probe_in=0.0)
    if failures < UNHEALTHY_AFTER:
        return Health(healthy=True, failures=failures, probe_in=0.0)
    wait = probe_delay(failures)
    session.execute(
        update(TenantTransport)
        .where(TenantTransport.id == transport_id, TenantTransport.tenant_id == tenant_id)
        .values(healthy=False, next_probe_at=now + timedelta(seconds=wait))
    )
    return Health(healthy=False, failures=failures, probe_in=wait)


def record_success(session: Session, *, tenant_id: int, transport_id: int, now: datetime) -> Health:
    session.execute(
        update(TenantTransport)
        .where(TenantTransport.id == transport_id, TenantTransport.tenant_id == tenant_id)
        .values(healthy=True, failures=0, next_probe_at=None, last_error=None, last_checked_at=now)
    )
    return Health(healthy=True, failures=0, probe_in=0.0)


def load_routes(
    session: Session, *, tenant_ids: Collection[int], secret_key: str, now: datetime
) -> dict[int, TenantRoutes]:
    """The asked tenants' routes (priority, then id) and bounce domains, in two reads."""
    wanted = sorted(set(tenant_ids))
    routes: dict[int, list[Route]] = {}
    for row in session.scalars(
        select(TenantTransport)
        .where(TenantTransport.tenant_id.in_(wanted))
        .order_by(TenantTransport.tenant_id, TenantTransport.priority, TenantTransport.id)
    ):
        url, error = "", None
        try:
            url = unseal_url(secret_key, row)
        except ConfigurationError as exc:
            error = exc.message
        probe_in = 0.0
        if not row.healthy and row.next_probe_at is not None:
            probe_in = max(0.0, (row.next_probe_at - now).total_seconds())
        routes.setdefault(row.tenant_id, []).append(
            Route(
                id=row.id,
                tenant_id=row.tenant_id,
                name=row.name,
                url=url,
                masked=row.url_masked,
                priority=row.priority,
                weight=row.weight,
                healthy=row.healthy,
                failures=row.failures,
                probe_in=probe_in,
                error=error,
            )
        )
    bounce_domains: dict[int, str] = {}
    for tenant_id, domain in session.execute(
        select(TenantSettings.tenant_id, TenantSettings.bounce_domain).where(
            TenantSettings.tenant_id.in_(wanted), TenantSettings.bounce_domain.is_not(None)
        )
    ):
        if domain:
            bounce_domains[tenant_id] = domain
    return {
        t: TenantRoutes(routes=tuple(routes.get(t, ())), bounce_domain=bounce_domains.get(t))
        for t in wanted
        if t in routes or t in bounce_domains
    }


class DatabaseRouteDirectory:
    """``routing.RouteDirectory`` on the database (blocking: the router calls it in a thread)."""

    def __init__(self, sessions: sessionmaker[Session], secret_key: str) -> None:
        self._sessions = sessions
        self._secret = secret_key

    def load(self, tenant_ids: Collection[int]) -> dict[int, TenantRoutes]:
        with transaction(self._sessions) as session:
            return load_routes(
                session, tenant_ids=tenant_ids, secret_key=self._secret, now=db_now(session)
            )

    def record_failure(self, route: Route, reason: str) -> Health:
        with transaction(self._sessions) as session:
            return record_failure(
                session,
                tenant_id=route.tenant_id,
                transport_id=route.id,
                reason=reason,
                now=db_now(session),
            )

    def record_success(self, route: Route) -> Health:
        with transaction(self._sessions) as session:
            return record_success(
                session, tenant_id=route.tenant_id, transport_id=route.id, now=db_now(session)
            )
