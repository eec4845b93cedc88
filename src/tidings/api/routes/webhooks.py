"""``/v1/webhooks``: the tenant's event webhook endpoints and their deliveries, and
``/v1/webhooks/inbound/{provider}``, where a provider reports bounces and complaints (no API key:
the provider's signature is the authentication)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from tidings import webhook_signature
from tidings.api.deps import AdminDep, KeyFirstRoute, NowDep, RuntimeDep, SessionDep, ViewerDep
from tidings.api.schemas import ERROR_RESPONSES, IdPath, PageOut, StrictModel
from tidings.db.models import WebhookDelivery, WebhookEndpoint
from tidings.errors import ConfigurationError, InvalidInput, NotFound
from tidings.queue.webhook_outbox import DeliveryStatus
from tidings.services import inbound, resend_events, webhooks
from tidings.services.pagination import DEFAULT_LIMIT, MAX_LIMIT
from tidings.webhook_targets import MAX_URL_LENGTH

router = APIRouter(
    prefix="/v1/webhooks", tags=["webhooks"], responses=ERROR_RESPONSES, route_class=KeyFirstRoute
)

#: The event types an endpoint can choose (``queue.webhook_outbox.PUBLIC_EVENT_TYPES``).
WebhookEventType = Literal[
    "message.sent",
    "message.delivered",
    "message.failed",
    "message.bounced",
    "message.complained",
    "contact.unsubscribed",
    "campaign.completed",
    "campaign.paused",
    "message.opened",
    "message.clicked",
]
PROVIDERS = ("resend",)


class EndpointIn(StrictModel):
    url: str = Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="https:// (or http://) URL; its host must resolve to public addresses",
    )
    event_types: list[WebhookEventType] = Field(min_length=1, max_length=16)


class DeliveryOut(BaseModel):
    id: int
    event_id: int | None
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_status: str | None = Field(description="The last attempt's answer, or why it failed")
    next_attempt_at: datetime | None = Field(description="When it is tried again (pending only)")
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]

    @classmethod
    def of(cls, delivery: WebhookDelivery) -> DeliveryOut:
        pending = delivery.status == DeliveryStatus.pending.value
        return cls(
            id=delivery.id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            status=DeliveryStatus(delivery.status),
            attempts=delivery.attempts,
            last_status=delivery.last_status,
            next_attempt_at=delivery.next_attempt_at if pending else None,
            created_at=delivery.created_at,
            delivered_at=delivery.delivered_at,
            payload=delivery.payload,
        )


class EndpointOut(BaseModel):
    id: int
    url: str
    event_types: list[str]
    enabled: bool
    last_status: str | None = Field(description="The answer to the newest delivery attempt")
    created_at: datetime

    @classmethod
    def fields_of(cls, endpoint: WebhookEndpoint) -> dict[str, Any]:
        return {
            "id": endpoint.id,
            "url": endpoint.url,
            "event_types": list(endpoint.event_types),
            "enabled": endpoint.enabled,
            "last_status": endpoint.last_status,
            "created_at": endpoint.created_at,
        }

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> EndpointOut:
        return cls(**cls.fields_of(endpoint))


class EndpointCreatedOut(EndpointOut):
    secret: str = Field(
        description="Signing secret (Standard Webhooks, whsec_…): shown only now, store it"
    )


class EndpointDetailOut(EndpointOut):
    recent_deliveries: list[DeliveryOut]


class InboundOut(BaseModel):
    status: inbound.InboundOutcome
    message_id: int | None
    kind: str | None
    reason: str | None


@router.get("")
def list_endpoints(
    principal: ViewerDep,
    session: SessionDep,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(None, pattern=r"^[0-9]{0,19}$"),
) -> PageOut[EndpointOut]:
    page = webhooks.list_endpoints(
        session=session, tenant_id=principal.tenant_id, limit=limit, cursor=cursor
    )
    return PageOut(items=[EndpointOut.of(e) for e in page.items], next_cursor=page.next_cursor)


@router.post("", status_code=201)
def create_endpoint(
    body: EndpointIn, principal: AdminDep, session: SessionDep, runtime: RuntimeDep, now: NowDep
) -> EndpointCreatedOut:
    """Registers an endpoint; the answer holds its signing secret, which is never shown again."""
    endpoint, secret = webhooks.create_endpoint(
        session=session,
        tenant_id=principal.tenant_id,
        url=body.url,
        event_types=body.event_types,
        allow_private=runtime.settings.webhook_allow_private,
        now=now,
    )
    return EndpointCreatedOut(**EndpointOut.fields_of(endpoint), secret=secret)


@router.get("/{endpoint_id}")
def get_endpoint(
    endpoint_id: IdPath, principal: ViewerDep, session: SessionDep
) -> EndpointDetailOut:
    endpoint = webhooks.get_endpoint(
        session=session, tenant_id=principal.tenant_id, endpoint_id=endpoint_id
    )
    recent = webhooks.recent_deliveries(session=session, endpoint_id=endpoint.id)
    return EndpointDetailOut(
        **EndpointOut.fields_of(endpoint), recent_deliveries=[DeliveryOut.of(d) for d in recent]
    )


@router.get("/{endpoint_id}/deliveries")
def list_deliveries(
    endpoint_id: IdPath,
    principal: ViewerDep,
    session: SessionDep,
    status: DeliveryStatus | None = None,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(None, pattern=r"^[0-9]{0,19}$"),
) -> PageOut[DeliveryOut]:
    page = webhooks.list_deliveries(
        session=session,
        tenant_id=principal.tenant_id,
        endpoint_id=endpoint_id,
        status=status,
        limit=limit,
        cursor=cursor,
    )
    return PageOut(items=[DeliveryOut.of(d) for d in page.items], next_cursor=page.next_cursor)


@router.delete("/{endpoint_id}", status_code=204)
def delete_endpoint(endpoint_id: IdPath, principal: AdminDep, session: SessionDep) -> Response:
    webhooks.delete_endpoint(
        session=session, tenant_id=principal.tenant_id, endpoint_id=endpoint_id
    )
    return Response(status_code=204)


# -- provider events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedEvent:
    event_id: str  # svix-id: the same on every redelivery of one event
    payload: object


async def verified_event(provider: str, request: Request, runtime: RuntimeDep) -> VerifiedEvent:
    """The event, once its signature is checked against the raw body; before any database work."""
    if provider not in PROVIDERS:
        raise NotFound(f"no inbound webhooks from {provider!r}; supported: {', '.join(PROVIDERS)}")
    secret = runtime.settings.resend_webhook_secret
    if not secret:
        raise NotFound(
            "inbound Resend webhooks are not configured: set TIDINGS_RESEND_WEBHOOK_SECRET"
            " to the endpoint's signing secret (whsec_...)"
        )
    try:
        webhook_signature.secret_key(secret)
    except ValueError:
        raise ConfigurationError(
            "TIDINGS_RESEND_WEBHOOK_SECRET is not a signing secret (whsec_ and base64)"
        ) from None
    body = await request.body()
    event_id = request.headers.get("svix-id")
    webhook_signature.verify(
        secret,
        message_id=event_id,
        timestamp=request.headers.get("svix-timestamp"),
        signature=request.headers.get("svix-signature"),
        body=body,
        now=runtime.clock.now(),
    )
    assert event_id is not None  # verify() refused a missing one
    try:
        payload = json.loads(body)
    except ValueError:
        raise InvalidInput("the event is not JSON", field="body") from None
    return VerifiedEvent(event_id=event_id, payload=payload)


@router.post("/inbound/{provider}", tags=["inbound"])
def inbound_event(
    event: Annotated[VerifiedEvent, Depends(verified_event)],
    session: SessionDep,
    runtime: RuntimeDep,
    now: NowDep,
) -> InboundOut:
    """A provider's event, signed Svix-style. Resend: ``email.delivered``,
    ``email.delivery_delayed``, ``email.bounced``, ``email.complained``, ``email.opened`` and
    ``email.clicked`` (``services/resend_events.py`` says what each records).

    A bad, missing or stale signature is a 401 and changes nothing. The same event delivered again
    (same ``svix-id``) answers ``duplicate`` and changes nothing; other event types, and events
    about messages we did not send, answer ``ignored``.
    """
    result = resend_events.record_resend_event(
        session=session,
        event_id=event.event_id,
        payload=event.payload,
        secret_key=runtime.secret_key,
        now=now,
    )
    return InboundOut(
        status=result.outcome,
        message_id=result.message_id,
        kind=result.kind,
        reason=result.reason,
    )
