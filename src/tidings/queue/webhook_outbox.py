"""The statements behind the tenants' event webhooks: routing events into deliveries, claiming due
deliveries, and recording each attempt. Their guarantees are written here once:

* **Every event is routed once.** The ``events`` table is append-only with increasing ids, and
  ``webhook_cursor`` holds the last id routed. A routing pass locks the cursor row (PostgreSQL
  ``SELECT … FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` already serialises writers), turns the
  events after it into ``webhook_deliveries`` for every subscribed endpoint in one
  ``INSERT … SELECT``, and moves the cursor, all in one transaction. The unique
  ``(endpoint_id, event_id)`` makes a repeated pass harmless.
* **No event is skipped because it committed late.** On PostgreSQL ids are handed out at insert
  time, not commit time: while the transaction holding id 41 is still open, 42 may already be
  visible. Routing stops at a recent gap and waits up to ``GAP_GRACE_SECONDS`` for it to fill (a
  rolled-back insert leaves a gap forever, so the wait is bounded, and a gap older than that is
  passed at once). SQLite writers hold the write lock from BEGIN to COMMIT, so its ids always
  commit in order.
* **No delivery is attempted twice at once.** The claim leases a due delivery by pushing its
  ``next_attempt_at`` past the attempt's whole time bound and counting the attempt, picking rows
  with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL. An attempt's result is written only if the
  delivery still has the attempt count it was claimed with, so a dispatcher that stalled past its
  lease cannot overwrite a newer attempt.
* **No endpoint takes more than its share of a dispatcher.** A claim takes only what the
  dispatcher can start at once (``Room``): at most so many in flight in all, per endpoint and per
  tenant, so a slow endpoint holds its own few slots and the others' deliveries go past it. A
  claimed delivery is attempted at once, never queued behind another, which is what lets the
  lease be the attempt's bound plus a margin. Deliveries to one endpoint were never ordered
  (several go at once, and a failed one is retried later), and they are not now.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    exists,
    func,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tidings.db.models import (
    Contact,
    Event,
    Message,
    WebhookCursor,
    WebhookDelivery,
    WebhookEndpoint,
    table,
)
from tidings.db.tenancy import ids, owned
from tidings.db.types import UTCDateTime
from tidings.domain import EventType

#: Which internal events each public webhook event type reports.
PUBLIC_TYPE_OF_EVENT: dict[str, str] = {
    EventType.sent.value: "message.sent",
    # Only a provider's confirmation (Resend): with SMTP the 250 is all there is, and
    # ``message.sent`` says it already.
    EventType.delivered.value: "message.delivered",
    EventType.failed.value: "message.failed",
    EventType.dead.value: "message.failed",  # gave up after retries: failed, for the tenant
    EventType.bounced.value: "message.bounced",
    EventType.complained.value: "message.complained",
    EventType.unsubscribed.value: "contact.unsubscribed",
    EventType.campaign_completed.value: "campaign.completed",
    EventType.campaign_paused.value: "campaign.paused",
}
#: Reported by the tracking flush itself (``enqueue_tracking``), not routed from ``events``.
TRACKING_EVENT_TYPES = ("message.opened", "message.clicked")
PUBLIC_EVENT_TYPES: tuple[str, ...] = (
    *dict.fromkeys(PUBLIC_TYPE_OF_EVENT.values()),
    *TRACKING_EVENT_TYPES,
)

CURSOR_ID = 1  # the one row of webhook_cursor
ROUTE_BATCH = 5_000  # events routed per pass at most
GAP_GRACE_SECONDS = 30.0  # how long routing waits for a missing event id to commit
MAX_LAST_STATUS_LENGTH = 500  # characters


class DeliveryStatus(enum.StrEnum):
    pending = "pending"  # waiting for its next attempt (or being attempted)
    delivered = "delivered"  # the endpoint answered 2xx
    failed = "failed"  # every attempt failed; no more tries


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# -- routing events into deliveries ---------------------------------------------------------------


class GapWatch:
    """Remembers since when routing has been stopped at a missing event id (PostgreSQL only)."""

    def __init__(
        self, grace: float = GAP_GRACE_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.grace = grace
        self._clock = clock
        self._waiting: tuple[int, float] | None = None  # (missing id, first seen)

    def may_pass(self, missing_id: int) -> bool:
        """True once ``missing_id`` has been missing for the grace period."""
        now = self._clock()
        if self._waiting is None or self._waiting[0] != missing_id:
            self._waiting = (missing_id, now)
        return now - self._waiting[1] >= self.grace


def _lock_cursor(session: Session, now: datetime) -> int:
    session.execute(
        _insert(session)(WebhookCursor)
        .values(id=CURSOR_ID, last_event_id=0, updated_at=now)
        .on_conflict_do_nothing(index_elements=["id"])
    )
    last: int = session.execute(
        select(WebhookCursor.last_event_id).where(WebhookCursor.id == CURSOR_ID).with_for_update()
    ).scalar_one()
    return last


def _text(value: str) -> ColumnElement[Any]:
    """A constant string inlined in the SQL (PostgreSQL cannot type a bare parameter in
    ``jsonb_build_object``); only our own constants go through here."""
    assert "'" not in value
    return literal_column(f"'{value}'")


def _route_statement(session: Session, *, after: int, upto: int, now: datetime) -> Any:
    public_type = case(
        {internal: _text(public) for internal, public in PUBLIC_TYPE_OF_EVENT.items()},
        value=Event.type,
    )
    if _is_postgresql(session):
        subscribed: ColumnElement[bool] = WebhookEndpoint.event_types.op("?")(public_type)
        stamp: ColumnElement[Any] = func.to_char(
            func.timezone(_text("UTC"), Event.created_at), _text('YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        )
        build = func.jsonb_build_object
    else:
        each = func.json_each(WebhookEndpoint.event_types).table_valued("value")
        subscribed = exists(select(1).select_from(each).where(each.c.value == public_type))
        # SQLite keeps UTC as "YYYY-MM-DD HH:MM:SS.ffffff" (db/types.py): the same ISO form as above.
        stamp = func.replace(Event.created_at, _text(" "), _text("T")).op("||")(_text("Z"))
        build = func.json_object
    data = build(
        *(_text("event_id"), Event.id),
        *(_text("message_id"), Event.message_id),
        *(_text("campaign_id"), Event.campaign_id),
        *(_text("contact_id"), func.coalesce(Message.contact_id, Event.contact_id)),
        *(_text("email"), func.coalesce(Message.to_address, Contact.email)),
        *(_text("reference"), Message.reference),
        *(_text("detail"), Event.detail),
    )
    payload = build(
        *(_text("type"), public_type), *(_text("timestamp"), stamp), *(_text("data"), data)
    )
    stamp_now = literal(now, UTCDateTime())
    rows = (
        select(
            Event.tenant_id,
            WebhookEndpoint.id,
            Event.id,
            public_type,
            payload,
            _text(DeliveryStatus.pending.value),
            literal_column("0"),
            stamp_now,
            stamp_now,
        )
        .select_from(Event)
        .join(
            WebhookEndpoint,
            and_(
                WebhookEndpoint.tenant_id == Event.tenant_id,
                WebhookEndpoint.enabled.is_(True),
                # An endpoint hears of what happens after it was registered, not before.
                WebhookEndpoint.created_at <= Event.created_at,
                subscribed,
            ),
        )
        # By id alone: a message's events are its own tenant's, and message ids are never reused
        # (migration 0009); naming the tenant here too made PostgreSQL hash-join all messages.
        .outerjoin(Message, Message.id == Event.message_id)
        .outerjoin(
            Contact, and_(Contact.id == Event.contact_id, Contact.tenant_id == Event.tenant_id)
        )
        .where(Event.id > after, Event.id <= upto, Event.type.in_(list(PUBLIC_TYPE_OF_EVENT)))
    )
    columns = [
        "tenant_id",
        "endpoint_id",
        "event_id",
        "event_type",
        "payload",
        "status",
        "attempts",
        "next_attempt_at",
        "created_at",
    ]
    return (
        _insert(session)(table(WebhookDelivery))
        .from_select(columns, rows)
        .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
    )


def route_events(
    *, session: Session, now: datetime, gaps: GapWatch | None = None, limit: int = ROUTE_BATCH
) -> int:
    """Turn the events after the cursor into deliveries; returns how many events were passed.

    ``gaps`` (PostgreSQL) makes routing stop at a missing id until it has been missing a while.
    """
    after = _lock_cursor(session, now)
    rows = session.execute(
        select(Event.id, Event.created_at).where(Event.id > after).order_by(Event.id).limit(limit)
    ).all()
    watch = gaps if gaps is not None and _is_postgresql(session) else None
    upto = after
    for event_id, created_at in rows:
        if event_id != upto + 1 and watch is not None:
            # An old gap (its next event is older than the grace) is a rollback, not a straggler.
            recent = created_at > now - timedelta(seconds=watch.grace)
            if recent and not watch.may_pass(upto + 1):
                break
        upto = event_id
    if upto == after:
        return 0
    session.execute(_route_statement(session, after=after, upto=upto, now=now))
    session.execute(
        update(WebhookCursor)
        .where(WebhookCursor.id == CURSOR_ID)
        .values(last_event_id=upto, updated_at=now)
    )
    return sum(1 for event_id, _ in rows if event_id <= upto)


# -- claiming and recording attempts --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A claimed delivery with what the request needs."""

    id: int
    tenant_id: int
    endpoint_id: int
    event_type: str
    payload: dict[str, Any]
    attempts: int  # including this one: the fence for recording its result
    url: str
    secret: str


@dataclass(frozen=True, slots=True)
class AttemptResult:
    delivery_id: int
    endpoint_id: int
    attempts: int  # as claimed
    delivered: bool
    last_status: str  # "200 OK", "500 Internal Server Error", "timeout", "refused: ..."
    retry_at: datetime | None  # None when not delivered: no more tries


@dataclass(frozen=True, slots=True)
class Room:
    """What one dispatcher may start now, given what it has in flight."""

    total: int  # deliveries it may start in all
    per_endpoint: int  # in flight to one endpoint at most
    per_tenant: int  # in flight to one tenant's endpoints together at most
    endpoints: Mapping[int, int] = field(default_factory=dict)  # in flight, by endpoint id
    tenants: Mapping[int, int] = field(default_factory=dict)  # in flight, by tenant id

    def full_endpoints(self) -> list[int]:
        return [e for e, n in self.endpoints.items() if n >= self.per_endpoint]

    def full_tenants(self) -> list[int]:
        return [t for t, n in self.tenants.items() if n >= self.per_tenant]


@dataclass(frozen=True, slots=True)
class Claimed:
    deliveries: list[DueDelivery]
    #: Due deliveries were seen and not taken (the claim was full, or they were over an endpoint's
    #: or tenant's share), so the dispatcher should claim again once it has room.
    left_behind: bool


def claim_deliveries(
    *, session: Session, now: datetime, room: Room, lease_seconds: float
) -> Claimed:
    """Lease the due deliveries that fit in ``room`` (see the module docstring).

    Candidates are locked first, skipping endpoints and tenants already at their share; those
    that fit are then leased. Candidates over a share stay as they are (their locks end with the
    transaction), and the next claim no longer sees them while their endpoint is full.
    """
    if room.total <= 0:
        return Claimed([], left_behind=True)
    deliveries = table(WebhookDelivery)
    candidates = session.execute(
        select(deliveries.c.id, deliveries.c.endpoint_id, deliveries.c.tenant_id)
        .where(
            deliveries.c.status == DeliveryStatus.pending.value,
            deliveries.c.next_attempt_at <= now,
            deliveries.c.endpoint_id.not_in(room.full_endpoints()),
            deliveries.c.tenant_id.not_in(room.full_tenants()),
        )
        .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
        .limit(room.total)
        .with_for_update(skip_locked=True)
    ).all()
    by_endpoint, by_tenant = Counter(room.endpoints), Counter(room.tenants)
    picked = []
    for row in candidates:
        if by_endpoint[row.endpoint_id] < room.per_endpoint and (
            by_tenant[row.tenant_id] < room.per_tenant
        ):
            picked.append(row.id)
            by_endpoint[row.endpoint_id] += 1
            by_tenant[row.tenant_id] += 1
    left_behind = len(candidates) >= room.total or len(picked) < len(candidates)
    if not picked:
        return Claimed([], left_behind=left_behind)
    claimed = session.execute(
        update(deliveries)
        .where(deliveries.c.id.in_(picked))
        .values(
            attempts=deliveries.c.attempts + 1,
            next_attempt_at=now + timedelta(seconds=lease_seconds),
        )
        .returning(
            deliveries.c.id,
            deliveries.c.tenant_id,
            deliveries.c.endpoint_id,
            deliveries.c.event_type,
            deliveries.c.payload,
            deliveries.c.attempts,
        )
    ).all()
    wanted = {(row.tenant_id, row.endpoint_id) for row in claimed}
    endpoints = {
        row.id: row
        for row in session.execute(
            select(
                WebhookEndpoint.id,
                WebhookEndpoint.tenant_id,
                WebhookEndpoint.url,
                WebhookEndpoint.secret,
            ).where(WebhookEndpoint.id.in_(ids(wanted)))
        )
        if owned(wanted, row.tenant_id, row.id)
    }
    due = [
        DueDelivery(
            id=row.id,
            tenant_id=row.tenant_id,
            endpoint_id=row.endpoint_id,
            event_type=row.event_type,
            payload=row.payload,
            attempts=row.attempts,
            url=endpoints[row.endpoint_id].url,
            secret=endpoints[row.endpoint_id].secret,
        )
        for row in sorted(claimed, key=lambda r: r.id)
        if row.endpoint_id in endpoints
    ]
    return Claimed(due, left_behind=left_behind)


def record_attempts(*, session: Session, results: Sequence[AttemptResult], now: datetime) -> int:
    """Write each attempt's result if its delivery is still on that attempt; returns how many."""
    written = 0
    for result in results:
        if result.delivered:
            status, next_at, delivered_at = DeliveryStatus.delivered, now, now
        elif result.retry_at is not None:
            status, next_at, delivered_at = DeliveryStatus.pending, result.retry_at, None
        else:
            status, next_at, delivered_at = DeliveryStatus.failed, now, None
        last_status = result.last_status[:MAX_LAST_STATUS_LENGTH]
        changed = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == result.delivery_id,
                WebhookDelivery.attempts == result.attempts,
                WebhookDelivery.status == DeliveryStatus.pending.value,
            )
            .values(
                status=status.value,
                next_attempt_at=next_at,
                last_status=last_status,
                delivered_at=delivered_at,
            )
            .returning(WebhookDelivery.id)
            .execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        if changed is not None:
            written += 1
            session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == result.endpoint_id)
                .values(last_status=last_status)
                .execution_options(synchronize_session=False)
            )
    return written


# -- opens and clicks, from the tracking flush ----------------------------------------------------
#
# Opens and clicks are not ``events`` rows (their history is ``tracking_hits``), so they are not
# routed by the cursor: the flush that records them writes their deliveries in its own transaction,
# once per hit and subscribed endpoint, with no ``event_id`` (the uniqueness of routed events does
# not apply: a flush runs once). A tenant without such an endpoint costs the flush one indexed read
# of its endpoints, and nothing else.


@dataclass(frozen=True, slots=True)
class TrackingNotice:
    """One recorded open or click, as its webhook reports it."""

    tenant_id: int
    event_type: str  # one of TRACKING_EVENT_TYPES
    at: datetime  # when the hit came
    message_id: int
    campaign_id: int | None
    contact_id: int | None
    email: str
    reference: str | None
    machine: bool
    machine_reason: str | None  # why it was classified a machine's (tracking/classify.py)
    url: str | None = None  # a click's link
    link_index: int | None = None


@dataclass(frozen=True, slots=True)
class Subscriber:
    endpoint_id: int
    created_at: datetime
    event_types: frozenset[str]


def tracking_subscribers(
    session: Session, tenant_ids: Sequence[int]
) -> dict[int, list[Subscriber]]:
    """The enabled endpoints of ``tenant_ids`` that want opens or clicks, by tenant."""
    found: dict[int, list[Subscriber]] = {}
    for row in session.execute(
        select(
            WebhookEndpoint.id,
            WebhookEndpoint.tenant_id,
            WebhookEndpoint.created_at,
            WebhookEndpoint.event_types,
        ).where(
            WebhookEndpoint.tenant_id.in_(sorted(tenant_ids)), WebhookEndpoint.enabled.is_(True)
        )
    ):
        wanted = frozenset(row.event_types or ()) & frozenset(TRACKING_EVENT_TYPES)
        if wanted:
            found.setdefault(row.tenant_id, []).append(Subscriber(row.id, row.created_at, wanted))
    return found


def _stamp(at: datetime) -> str:
    """The same ISO form as routed events' ``timestamp``."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def enqueue_tracking(
    *,
    session: Session,
    subscribers: Mapping[int, Sequence[Subscriber]],
    notices: Sequence[TrackingNotice],
    now: datetime,
) -> int:
    """Deliveries of ``notices`` to the endpoints subscribed to them (registered before the hit),
    in one multi-row ``INSERT``; returns how many."""
    rows = []
    for notice in notices:
        for subscriber in subscribers.get(notice.tenant_id, ()):
            if notice.event_type not in subscriber.event_types or subscriber.created_at > notice.at:
                continue
            data: dict[str, Any] = {
                "message_id": notice.message_id,
                "campaign_id": notice.campaign_id,
                "contact_id": notice.contact_id,
                "email": notice.email,
                "reference": notice.reference,
                "machine": notice.machine,
                "machine_reason": notice.machine_reason,
            }
            if notice.event_type == "message.clicked":
                data |= {"url": notice.url, "link_index": notice.link_index}
            rows.append(
                {
                    "tenant_id": notice.tenant_id,
                    "endpoint_id": subscriber.endpoint_id,
                    "event_id": None,
                    "event_type": notice.event_type,
                    "payload": {
                        "type": notice.event_type,
                        "timestamp": _stamp(notice.at),
                        "data": data,
                    },
                    "status": DeliveryStatus.pending.value,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
            )
    if rows:
        session.execute(table(WebhookDelivery).insert(), rows)
    return len(rows)
