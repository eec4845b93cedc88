"""Resend's webhook events, each recorded against its message exactly once (``inbound_events``'
unique ``(provider, event_id)``, as for every inbound report: ``services/inbound.py``).

What each event does, following Resend's documented payloads:

* ``email.delivered``: the message is delivered (``delivered_at``, from the event's time) and a
  ``delivered`` event is written, which the tenants' ``message.delivered`` webhooks announce.
* ``email.delivery_delayed``: a ``delivery_delayed`` event only; not a bounce, not a failure.
* ``email.bounced``: ``bounce.type`` Permanent is a hard bounce (suppressed), Transient or
  Undetermined a soft one (``services/inbound.record_feedback``).
* ``email.complained``: a complaint (suppressed; the guardrail counts it).
* ``email.opened`` / ``email.clicked`` (a tenant using Resend's own tracking): a hit through the
  tracking flush (``tracking/record.record_hits``), so they are classified (person or machine,
  from ``click.userAgent`` and ``click.ipAddress`` where given) and summed like ``/o/`` and
  ``/c/``'s.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from tidings.bounces.reports import FeedbackKind
from tidings.domain import EventType
from tidings.errors import InvalidInput
from tidings.services.inbound import (
    InboundOutcome,
    InboundResult,
    OriginalMessage,
    find_message,
    first_report,
    record_delivered,
    record_event,
    record_once,
)
from tidings.tracking.classify import client_network
from tidings.tracking.record import Hit, record_hits

RESEND = "resend"
#: Resend's ``bounce.type`` values that mean "never again" (its docs: Permanent = hard bounce).
RESEND_HARD_BOUNCE_TYPES = frozenset({"permanent"})
DELIVERED = "email.delivered"
DELAYED = "email.delivery_delayed"
OPENED = "email.opened"
CLICKED = "email.clicked"
#: One of Resend's sample payloads spells the delay event this way; accepted as the same event.
_DELAYED_ALIASES = frozenset({DELAYED, "email.delivered_delayed"})
#: A click on a link Resend tracked has no index among the links we rewrote (1, 2 …): it gets a
#: stable negative one from its URL, so its clicks sum per link (``campaign_links``) and a
#: person's second click on it is not a second unique click.
_PROVIDER_LINKS = 2**31 - 1


def provider_link_index(url: str) -> int:
    return -(zlib.crc32(url.encode()) % _PROVIDER_LINKS) - 1


def _resend_kind(event_type: str, data: Mapping[str, Any]) -> FeedbackKind | None:
    if event_type == "email.complained":
        return FeedbackKind.complaint
    if event_type != "email.bounced":
        return None
    bounce = data.get("bounce")
    bounce_type = str(bounce.get("type", "")) if isinstance(bounce, Mapping) else ""
    # Resend sends email.bounced for permanent rejections; a bounce object that says otherwise
    # (Transient, Undetermined) is recorded as soft, never suppressed.
    if not bounce_type or bounce_type.lower() in RESEND_HARD_BOUNCE_TYPES:
        return FeedbackKind.hard_bounce
    return FeedbackKind.soft_bounce


def _resend_detail(event_type: str, data: Mapping[str, Any]) -> str:
    bounce = data.get("bounce")
    if event_type == "email.bounced" and isinstance(bounce, Mapping):
        parts = [str(bounce.get(k)) for k in ("type", "subType") if bounce.get(k)]
        message = bounce.get("message")
        return f"Resend: {' / '.join(parts) or 'bounce'}" + (f": {message}" if message else "")
    return "Resend: the recipient marked the message as spam"


def _message_id_headers(data: Mapping[str, Any]) -> list[str]:
    """Message-ID headers in a payload's ``headers`` (a list of name/value pairs, or a mapping)."""
    headers = data.get("headers")
    pairs: Iterable[tuple[Any, Any]] = ()
    if isinstance(headers, Mapping):
        pairs = headers.items()
    elif isinstance(headers, list):
        pairs = ((h.get("name"), h.get("value")) for h in headers if isinstance(h, Mapping))
    return [str(v) for k, v in pairs if str(k).lower() == "message-id" and isinstance(v, str)]


def _time(value: object, now: datetime) -> datetime:
    """An ISO 8601 time of the payload, or ``now`` when absent, unreadable or in the future (a
    sender's clock must not put a delivery or a click ahead of us)."""
    if not isinstance(value, str):
        return now
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return now
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return min(parsed.astimezone(UTC), now)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _hit(
    event_type: str, payload: Mapping[str, Any], message: OriginalMessage, now: datetime
) -> Hit | None:
    """The tracking hit an ``email.opened`` or ``email.clicked`` event is; None for a click
    without a link (nothing to count it against)."""
    data: Mapping[str, Any] = payload["data"]
    if event_type == OPENED:
        return Hit(
            kind="open",
            tenant_id=message.tenant_id,
            message_id=message.id,
            link_index=None,
            url=None,
            at=_time(payload.get("created_at"), now),
            user_agent=None,  # Resend's open event carries neither user agent nor address
            network=None,
        )
    click = data.get("click")
    link = _text(click.get("link")) if isinstance(click, Mapping) else None
    if link is None:
        return None
    assert isinstance(click, Mapping)
    return Hit(
        kind="click",
        tenant_id=message.tenant_id,
        message_id=message.id,
        link_index=provider_link_index(link),
        url=link,
        at=_time(click.get("timestamp") or payload.get("created_at"), now),
        user_agent=_text(click.get("userAgent")),
        network=client_network(_text(click.get("ipAddress"))),
    )


def _record_other(
    *,
    session: Session,
    event_id: str,
    event_type: str,
    payload: Mapping[str, Any],
    message: OriginalMessage,
    now: datetime,
) -> InboundResult:
    """Delivered, delayed, opened, clicked: recorded once per event id, like bounces."""
    kind = event_type.removeprefix("email.")
    hit = _hit(event_type, payload, message, now) if event_type in (OPENED, CLICKED) else None
    if event_type == CLICKED and hit is None:
        return InboundResult(InboundOutcome.ignored, message.id, kind, "the click names no link")
    if not first_report(
        session=session, provider=RESEND, event_id=event_id, tenant_id=message.tenant_id, now=now
    ):
        return InboundResult(InboundOutcome.duplicate, message.id, kind, "already recorded")
    if event_type == DELIVERED:
        at = _time(payload.get("created_at"), now)
        record_delivered(
            session=session, message=message, detail="Resend: delivered", at=at, now=now
        )
    elif event_type in _DELAYED_ALIASES:
        kind = "delivery_delayed"
        record_event(
            session=session,
            message=message,
            event=EventType.delivery_delayed,
            detail="Resend: delivery delayed, the provider keeps trying",
            now=now,
        )
    elif hit is not None:
        record_hits(session, [hit], now)
    return InboundResult(InboundOutcome.recorded, message.id, kind)


_OTHER_EVENTS = frozenset({DELIVERED, OPENED, CLICKED, *_DELAYED_ALIASES})


def record_resend_event(
    *, session: Session, event_id: str, payload: object, secret_key: str, now: datetime
) -> InboundResult:
    """Apply one verified Resend webhook event (the ``email.*`` events of the module docstring).

    Other event types are acknowledged and ignored; an event for a message we do not know is
    ignored too (another system may share the Resend account), so Resend stops retrying it.
    """
    if not isinstance(payload, Mapping) or not isinstance(payload.get("type"), str):
        raise InvalidInput("the event must be a JSON object with a type", field="type")
    event_type: str = payload["type"]
    data = payload.get("data")
    if not isinstance(data, Mapping):
        raise InvalidInput("the event has no data object", field="data")
    kind = _resend_kind(event_type, data)
    if kind is None and event_type not in _OTHER_EVENTS:
        return InboundResult(InboundOutcome.ignored, reason=f"{event_type} needs no action")
    email_id = data.get("email_id")
    message = find_message(
        session=session,
        secret_key=secret_key,
        provider_message_id=email_id if isinstance(email_id, str) else None,
        message_id_headers=_message_id_headers(data),
    )
    if message is None:
        return InboundResult(InboundOutcome.ignored, kind=kind, reason="no message of ours matches")
    if kind is None:
        return _record_other(
            session=session,
            event_id=event_id,
            event_type=event_type,
            payload=payload,
            message=message,
            now=now,
        )
    return record_once(
        session=session,
        provider=RESEND,
        event_id=event_id,
        message=message,
        kind=kind,
        detail=_resend_detail(event_type, data),
        now=now,
    )
