"""The transport a delivery process sends through: the configured default, wrapped in the router
that sends a tenant's mail through its own transports (``routing.py``) when it has any."""

from __future__ import annotations

from functools import partial

from sqlalchemy.orm import Session, sessionmaker

from tidings.config import Settings
from tidings.transports.directory import DatabaseRouteDirectory
from tidings.transports.factory import open_transport
from tidings.transports.routing import RoutingTransport
from tidings.transports.tenant_urls import TenantUrlPolicy, guard

#: Connections per tenant transport per process: a tenant's own relay (a school's SMTP account, a
#: small provider plan) allows far fewer than the service's own.
TENANT_CONNECTIONS = 5


def open_delivery_transport(
    *, settings: Settings, sessions: sessionmaker[Session], secret_key: str, concurrency: int
) -> RoutingTransport:
    """Nothing connects here (see ``factory.open_transport``); tenants' transports open at their
    first message."""
    policy = TenantUrlPolicy(
        data_dir=settings.data_dir,
        allow_private=settings.transport_allow_private,
        allowed_hosts=tuple(settings.transport_allowed_hosts),
    )
    return RoutingTransport(
        default=open_transport(settings.resolved_transport_url(), concurrency=concurrency),
        directory=DatabaseRouteDirectory(sessions, secret_key),
        opener=partial(open_transport, concurrency=TENANT_CONNECTIONS),
        secret_key=secret_key,
        guard=partial(guard, policy=policy),
    )
