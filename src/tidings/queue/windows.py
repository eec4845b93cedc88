"""Sending windows in the queue: a campaign's fan-out writes each message's first opening, and the
claim sends back whatever it took outside its window.

Two places, because ``not_before`` is written by more than the enqueue (a retry's backoff, a
throttle's next slot, an expired lease, a requeued failure): the fan-out gets the common case right
at once and set-based, and the claim is the guarantee underneath, so a message is never *started*
outside its window, whoever wrote its ``not_before``. A message sent back by the claim has spent
neither an attempt (attempts count at the outcome) nor a throttle slot (admission comes after).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from tidings.db.models import Campaign, Contact, Event, Message, table
from tidings.db.timezones import tenant_timezone
from tidings.db.types import NullableJson, UTCDateTime
from tidings.domain import EventType
from tidings.queue.claimed import ClaimedMessage
from tidings.queue.enqueue import requeue_values
from tidings.scheduling.windows import (
    CONTACT,
    FALLBACK_TIMEZONE,
    SendWindow,
    next_opening,
    window_from_json,
)

# -- the fan-out ---------------------------------------------------------------------------------


def fan_out_timing(
    *,
    session: Session,
    campaign: Campaign,
    audience: ColumnElement[bool],
    now: datetime,
    ttl_seconds: float,
) -> dict[str, ColumnElement[Any]]:
    """The window columns of the campaign's messages as SQL over ``contacts``; empty without one.

    ``not_before`` is the first opening in each recipient's zone and the time to live counts from
    it. For ``"contact"`` time: one read of the audience's distinct zones, an opening computed once
    per zone, and a ``CASE`` grouping the zones that open at the same instant. A zone that appears
    between that read and the insert (a contact changed meanwhile) starts at ``now`` and is put
    right by the claim.
    """
    if campaign.send_window is None:
        return {}
    window = window_from_json(campaign.send_window)
    ttl = timedelta(seconds=ttl_seconds)
    stored = literal(window.to_json(), NullableJson)
    if window.timezone != CONTACT:
        opening = next_opening(window, window.timezone, now)
        return {
            "send_window": stored,
            "window_timezone": literal(window.timezone),
            "not_before": _stamp(opening),
            "expires_at": _stamp(opening + ttl),
        }
    default = tenant_timezone(session, campaign.tenant_id)
    zones = {
        name
        for name in session.scalars(
            select(Contact.timezone).where(audience, Contact.timezone.is_not(None)).distinct()
        )
        if name is not None
    }
    by_opening = _zones_by_opening(window, zones | {default}, now)
    # Contacts' zones are checked when written; a name the zone database no longer knows is read
    # as UTC by scheduling.windows.zone, the same at the claim.
    resolved = func.coalesce(Contact.timezone, literal(default))

    def per_zone(value_of: dict[datetime, datetime]) -> ColumnElement[Any]:
        return case(
            *(
                (resolved.in_(sorted(names)), _stamp(value_of[opening]))
                for opening, names in by_opening.items()
                if opening != now  # open now: the ELSE
            ),
            else_=_stamp(value_of[now]),
        )

    openings = {opening: opening for opening in by_opening} | {now: now}
    return {
        "send_window": stored,
        "window_timezone": resolved,
        "not_before": per_zone(openings),
        "expires_at": per_zone({k: v + ttl for k, v in openings.items()}),
    }


def _zones_by_opening(
    window: SendWindow, zones: set[str], now: datetime
) -> dict[datetime, list[str]]:
    grouped: dict[datetime, list[str]] = defaultdict(list)
    for name in zones:
        grouped[next_opening(window, name, now)].append(name)
    return dict(grouped)


def _stamp(value: datetime) -> ColumnElement[datetime]:
    return literal(value, UTCDateTime())


# -- the claim -----------------------------------------------------------------------------------

_WINDOW_COLUMNS = (Message.id, Message.send_window, Message.window_timezone)
# PostgreSQL: one array parameter. An expanded IN of a batch's 200 ids measured 6.5 ms there
# (planning 200 parameters), = ANY(array) 0.9 ms. SQLite has no arrays, and its IN is cheap.
_WINDOWS_OF_PG = select(*_WINDOW_COLUMNS).where(
    Message.id == func.any(bindparam("ids", type_=postgresql.ARRAY(BigInteger))),
    Message.send_window.is_not(None),
)
_WINDOWS_OF_SQLITE = select(*_WINDOW_COLUMNS).where(
    Message.id.in_(bindparam("ids", expanding=True)), Message.send_window.is_not(None)
)


def defer_outside_windows(
    session: Session, claimed: list[ClaimedMessage], now: datetime
) -> list[ClaimedMessage]:
    """The claimed messages inside their sending windows at ``now``; the others go back to the
    queue with ``not_before`` at their window's next opening and a ``deferred`` event.

    Call in the claim's transaction, after compliance screening and before throttle admission.
    One primary-key read for the batch; the rows were just leased by this claim.
    """
    if not claimed:
        return claimed
    statement = (
        _WINDOWS_OF_PG if session.get_bind().dialect.name == "postgresql" else _WINDOWS_OF_SQLITE
    )
    rows = session.execute(statement, {"ids": [m.id for m in claimed]}).all()
    if not rows:
        return claimed
    openings: dict[tuple[SendWindow, str], datetime] = {}
    later: dict[datetime, list[int]] = defaultdict(list)
    for message_id, stored, zone_name in rows:
        key = (window_from_json(stored), zone_name or FALLBACK_TIMEZONE)
        if key not in openings:
            openings[key] = next_opening(key[0], key[1], now)
        if openings[key] > now:
            later[openings[key]].append(message_id)
    if not later:
        return claimed
    by_id = {m.id: m for m in claimed}
    events: list[dict[str, Any]] = []
    for opening, ids in later.items():
        _requeue(session, ids, not_before=opening, now=now)
        events.extend(
            {
                "tenant_id": by_id[message_id].tenant_id,
                "message_id": message_id,
                "campaign_id": by_id[message_id].campaign_id,
                "type": EventType.deferred.value,
                "detail": f"outside its sending window; it opens at {opening.isoformat()}",
                "created_at": now,
            }
            for message_id in ids
        )
    session.connection().execute(insert(table(Event)), events)
    deferred = {event["message_id"] for event in events}
    return [m for m in claimed if m.id not in deferred]


def _requeue(session: Session, ids: Sequence[int], *, not_before: datetime, now: datetime) -> None:
    """Back to the queue untouched (attempts as they were), following a paused or cancelled
    campaign like every requeue."""
    session.execute(
        update(Message)
        .where(Message.id.in_(ids))
        .values(**requeue_values(now), not_before=not_before)
        .execution_options(synchronize_session=False)
    )
