"""The tenant's webhook endpoints: where events are POSTed, which ones, and how deliveries went.

An endpoint's URL passes the SSRF guard when it is registered (``webhook_targets``: its host must
resolve to public addresses only, unless the operator allows private ones); the dispatcher checks
it again before every delivery. The signing secret is generated here and shown once, at creation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from tidings import webhook_signature, webhook_targets
from tidings.db.models import WebhookDelivery, WebhookEndpoint
from tidings.errors import Conflict, InvalidInput, NotFound
from tidings.queue.webhook_outbox import PUBLIC_EVENT_TYPES, DeliveryStatus
from tidings.services.pagination import Page, paginate

MAX_ENDPOINTS_PER_TENANT = 20
RECENT_DELIVERIES = 20  # shown with an endpoint

Resolver = Callable[[webhook_targets.Target], list[webhook_targets.IPAddress]]


def check_event_types(event_types: Sequence[str]) -> list[str]:
    """The event types, each once, in the order given; ``InvalidInput`` for an unknown one."""
    if not event_types:
        raise InvalidInput("choose at least one event type", field="event_types")
    unknown = [t for t in event_types if t not in PUBLIC_EVENT_TYPES]
    if unknown:
        raise InvalidInput(
            f"unknown event type {unknown[0]!r}; choose from {', '.join(PUBLIC_EVENT_TYPES)}",
            field="event_types",
        )
    return list(dict.fromkeys(event_types))


def check_url(url: str, *, allow_private: bool, resolve: Resolver = webhook_targets.resolve) -> str:
    """The URL when it may receive webhooks (form, then every address its host resolves to)."""
    target = webhook_targets.parse_target(url)
    webhook_targets.check_addresses(target, resolve(target), allow_private=allow_private)
    return url


def create_endpoint(
    *,
    session: Session,
    tenant_id: int,
    url: str,
    event_types: Sequence[str],
    allow_private: bool,
    now: datetime,
    resolve: Resolver = webhook_targets.resolve,
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its signing secret (``whsec_…``), which is not shown again."""
    types = check_event_types(event_types)
    check_url(url, allow_private=allow_private, resolve=resolve)
    count = session.scalar(
        select(func.count())
        .select_from(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == tenant_id)
    )
    if (count or 0) >= MAX_ENDPOINTS_PER_TENANT:
        raise Conflict(f"a tenant may have at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints")
    secret = webhook_signature.new_secret()
    endpoint = WebhookEndpoint(
        tenant_id=tenant_id,
        url=url,
        event_types=types,
        secret=secret,
        enabled=True,
        last_status=None,
        created_at=now,
    )
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def list_endpoints(
    *, session: Session, tenant_id: int, limit: int, cursor: str | None
) -> Page[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
    return paginate(session, query, WebhookEndpoint.id, limit=limit, cursor=cursor)


def get_endpoint(*, session: Session, tenant_id: int, endpoint_id: int) -> WebhookEndpoint:
    endpoint = session.scalar(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id
        )
    )
    if endpoint is None:
        raise NotFound("no such webhook endpoint")
    return endpoint


def delete_endpoint(*, session: Session, tenant_id: int, endpoint_id: int) -> None:
    """Removes the endpoint and its deliveries, pending ones included."""
    removed = session.execute(
        delete(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id)
        .returning(WebhookEndpoint.id)
    ).all()
    if not removed:
        raise NotFound("no such webhook endpoint")


def recent_deliveries(
    *, session: Session, endpoint_id: int, limit: int = RECENT_DELIVERIES
) -> list[WebhookDelivery]:
    """The endpoint's newest deliveries, newest first."""
    return list(
        session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.id.desc())
            .limit(limit)
        )
    )


def list_deliveries(
    *,
    session: Session,
    tenant_id: int,
    endpoint_id: int,
    limit: int,
    cursor: str | None,
    status: DeliveryStatus | None = None,
) -> Page[WebhookDelivery]:
    """An endpoint's deliveries, newest first."""
    get_endpoint(session=session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status.value)
    return paginate(session, query, WebhookDelivery.id, limit=limit, cursor=cursor, descending=True)
