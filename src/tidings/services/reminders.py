"""Reminders tied to an event: one message per offset before it ("24h", "2h"), moved together when
the event moves.

* ``create_reminders``: one message per offset, sent at ``event_at`` - offset. Idempotent on
  (tenant, reference, offset): the unique index ``uq_messages_tenant_reminder`` decides between
  concurrent identical requests, as the idempotency key does for messages (``enqueue_message``),
  so a repeat returns the same messages and never makes a second one. An offset whose time has
  already passed is skipped, and the answer says so. The message is checked, screened and rendered
  once for all its offsets (``messages.prepare_message``).
* ``move_reminders``: every reminder no worker has claimed moves to the new ``event_at`` - offset
  in one conditional UPDATE (``queue/reminders.py``); one being sent, sent, failed … has gone and
  is reported as it is. A reminder whose new time has passed is cancelled, not sent at once: the
  same rule as at creation, and a moved meeting's "24 h" and "2 h" reminders arriving together
  help nobody. A later move that puts its time in the future again brings it back.
* A reminder's time to live ends with its event (but lasts at least ``REMINDER_GRACE`` after its
  time, and never longer than the message TTL): a "2 h before" mail retried after the meeting is
  noise.
* Offsets are ``1w``, ``2d``, ``12h``, ``30m``, ``90s`` or combinations in that order (``1d12h``),
  from 0 (at the event) to ``MAX_OFFSET``; at most ``MAX_OFFSETS`` in one request. "24h" and "1d"
  are the same offset.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from tidings.domain import MessageStatus
from tidings.errors import Conflict, InvalidInput, NotFound
from tidings.queue.enqueue import UNCLAIMED, enqueue_message
from tidings.queue.reminders import (
    MOVED_INTO_THE_PAST,
    Reminder,
    cancel_unclaimed_reminders,
    move_unclaimed_reminders,
    reminders_of,
)
from tidings.rendering.pool import RenderPool
from tidings.scheduling.windows import next_opening
from tidings.services.messages import (
    MAX_REFERENCE_LENGTH,
    MAX_SCHEDULE_AHEAD,
    MessageRequest,
    check_header_text,
    check_schedule,
    prepare_message,
)

MAX_OFFSETS = 20  # reminders one request may make
MAX_OFFSET = MAX_SCHEDULE_AHEAD  # a larger offset is always in the past
#: The shortest time to live of a reminder, even one sent at its event or just before.
REMINDER_GRACE = timedelta(minutes=15)
#: Units of an offset, in the order they must be written.
OFFSET_UNITS: tuple[tuple[str, int], ...] = (
    ("w", 7 * 86_400),
    ("d", 86_400),
    ("h", 3_600),
    ("m", 60),
    ("s", 1),
)
_OFFSET = re.compile("".join(rf"(?:(\d{{1,9}}){unit})?" for unit, _ in OFFSET_UNITS))
PASSED = "its time has passed"
NO_OPENING = "its send_window does not open before the event"


@dataclass(frozen=True, slots=True)
class ReminderRequest:
    """A caller's reminders: the event, the offsets before it, and the message to send at each."""

    reference: str
    event_at: datetime
    offsets: Sequence[str]
    #: Everything but the message's time (``send_at``, ``ttl_seconds``), its idempotency key and
    #: its reference: the reminder decides those.
    message: MessageRequest


@dataclass(frozen=True, slots=True)
class Placed:
    """One requested offset and its reminder."""

    offset: str  # as the caller wrote it
    reminder: Reminder


@dataclass(frozen=True, slots=True)
class Skipped:
    """An offset that has no reminder to send, and why."""

    offset: str
    offset_seconds: int
    send_at: datetime  # when it would have gone
    reason: str
    message_id: int | None = None  # a move: the reminder it cancelled


@dataclass(frozen=True, slots=True)
class Created:
    """What ``create_reminders`` did, each list in the order of the request's offsets."""

    reference: str
    event_at: datetime
    created: list[Placed]
    existing: list[Placed]  # made by an earlier request, returned as they are now
    skipped: list[Skipped]


@dataclass(frozen=True, slots=True)
class Moved:
    """What ``move_reminders`` did, each list the earliest reminder first."""

    reference: str
    event_at: datetime
    moved: list[Reminder]
    gone: list[Reminder]  # claimed, sent, failed, suppressed or cancelled before the move
    skipped: list[Skipped]  # cancelled: their new time has passed


# -- offsets ----------------------------------------------------------------------------------


def parse_offset(text: str, *, field: str) -> int:
    """``"1d12h"`` -> 129600 (seconds)."""
    match = _OFFSET.fullmatch(text) if isinstance(text, str) and text else None
    if match is None:
        raise InvalidInput(
            f"{str(text)[:40]!r} is not an offset such as 24h, 2h, 30m or 1d12h", field=field
        )
    seconds = sum(
        int(count) * size
        for count, (_, size) in zip(match.groups(), OFFSET_UNITS, strict=True)
        if count
    )
    if seconds > MAX_OFFSET.total_seconds():
        raise InvalidInput(f"an offset may be at most {MAX_OFFSET.days}d", field=field)
    return seconds


def format_offset(seconds: int) -> str:
    """The offset written the one canonical way (days at most): 86400 -> ``1d``, 5400 -> ``1h30m``."""
    parts = []
    for unit, size in OFFSET_UNITS[1:]:
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def parse_offsets(texts: Sequence[str]) -> list[tuple[str, int]]:
    """Each offset as written and in seconds; each given once, ``MAX_OFFSETS`` at most."""
    if not texts:
        raise InvalidInput("give at least one offset, such as 24h", field="offsets")
    if len(texts) > MAX_OFFSETS:
        raise InvalidInput(f"at most {MAX_OFFSETS} offsets", field="offsets")
    parsed: list[tuple[str, int]] = []
    seen: dict[int, int] = {}
    for position, text in enumerate(texts):
        field = f"offsets.{position}"
        seconds = parse_offset(text, field=field)
        if seconds in seen:
            raise InvalidInput(
                f"{text!r} is the same offset as offsets.{seen[seconds]}", field=field
            )
        seen[seconds] = position
        parsed.append((text, seconds))
    return parsed


# -- the use cases ----------------------------------------------------------------------------


def create_reminders(
    *,
    session: Session,
    tenant_id: int,
    request: ReminderRequest,
    renderer: RenderPool,
    default_ttl_seconds: float,
    now: datetime,
) -> Created:
    """One message per offset not yet made for this reference; see the module docstring."""
    reference = _check_reference(request.reference)
    event_at = check_event_time(request.event_at, now=now)
    offsets = parse_offsets(request.offsets)
    _check_message(request.message)
    earlier = reminders_of(session=session, tenant_id=tenant_id, reference=reference)
    _check_same_event(earlier, reference=reference, event_at=event_at)
    found = {r.offset: r for r in earlier}
    due = [(text, seconds) for text, seconds in offsets if seconds not in found]
    skipped = [
        Skipped(text, seconds, send_at, PASSED)
        for text, seconds in due
        if (send_at := event_at - timedelta(seconds=seconds)) < now
    ]
    due = [(text, seconds) for text, seconds in due if event_at - timedelta(seconds=seconds) >= now]
    made: dict[int, Reminder] = {}
    if due or not earlier:  # a first request is checked whole, even when every offset has passed
        message = prepare_message(
            session=session,
            tenant_id=tenant_id,
            request=replace(request.message, reference=reference, event_at=event_at),
            renderer=renderer,
            default_ttl_seconds=default_ttl_seconds,
            now=now,
        )
        # The earliest first, in every request: two requests insert in the same order, so neither
        # waits for a row the other holds while holding one it needs (no deadlock on PostgreSQL).
        for text, seconds in sorted(due, key=lambda item: -item[1]):
            send_at, expires_at = reminder_times(event_at, seconds, default_ttl_seconds)
            window = request.message.send_window
            if window is not None and message.window_timezone is not None:
                # The window moves a reminder later, to its next opening, never past the event.
                send_at = next_opening(window, message.window_timezone, send_at)
                if send_at >= event_at:
                    skipped.append(Skipped(text, seconds, send_at, NO_OPENING))
                    continue
                expires_at = max(expires_at, send_at + REMINDER_GRACE)
            enqueued = enqueue_message(
                session=session,
                new=replace(
                    message, not_before=send_at, expires_at=expires_at, reminder_offset=seconds
                ),
                now=now,
            )
            stored = enqueued.message
            reminder = Reminder(
                message_id=stored.id,
                offset=seconds,
                status=MessageStatus(stored.status),
                send_at=stored.not_before,
                event_at=stored.event_at or event_at,
                last_error=stored.last_error,
            )
            if enqueued.created:
                made[seconds] = reminder
            else:  # a concurrent identical request made it first
                found[seconds] = reminder
    return Created(
        reference=reference,
        event_at=event_at,
        created=[Placed(text, made[s]) for text, s in offsets if s in made],
        existing=[Placed(text, found[s]) for text, s in offsets if s in found],
        skipped=skipped,
    )


def move_reminders(
    *,
    session: Session,
    tenant_id: int,
    reference: str,
    event_at: datetime,
    default_ttl_seconds: float,
    now: datetime,
) -> Moved:
    """Every reminder of ``reference`` not yet claimed, to the new ``event_at``; see the module
    docstring. Another tenant's reference is not found, like one that does not exist."""
    reference = _check_reference(reference)
    event_at = check_event_time(event_at, now=now)
    before = reminders_of(session=session, tenant_id=tenant_id, reference=reference)
    if not before:
        raise NotFound("no reminders with this reference", field="reference")
    times: dict[int, tuple[datetime, datetime]] = {}
    passed: list[int] = []
    for reminder in before:
        send_at, expires_at = reminder_times(event_at, reminder.offset, default_ttl_seconds)
        if send_at < now:
            passed.append(reminder.offset)
        else:
            times[reminder.offset] = (send_at, expires_at)
    moved_ids = move_unclaimed_reminders(
        session=session,
        tenant_id=tenant_id,
        reference=reference,
        event_at=event_at,
        times=times,
        now=now,
    )
    cancel_unclaimed_reminders(
        session=session, tenant_id=tenant_id, reference=reference, offsets=passed, now=now
    )
    after = reminders_of(session=session, tenant_id=tenant_id, reference=reference)
    moved, gone, skipped = [], [], []
    for reminder in after:
        if reminder.message_id in moved_ids:
            moved.append(reminder)
        elif reminder.offset in passed and reminder.last_error == MOVED_INTO_THE_PAST:
            skipped.append(
                Skipped(
                    format_offset(reminder.offset),
                    reminder.offset,
                    event_at - timedelta(seconds=reminder.offset),
                    PASSED,
                    message_id=reminder.message_id,
                )
            )
        else:
            gone.append(reminder)
    return Moved(reference=reference, event_at=event_at, moved=moved, gone=gone, skipped=skipped)


def get_reminders(*, session: Session, tenant_id: int, reference: str) -> list[Reminder]:
    reference = _check_reference(reference)
    found = reminders_of(session=session, tenant_id=tenant_id, reference=reference)
    if not found:
        raise NotFound("no reminders with this reference", field="reference")
    return found


# -- helpers ----------------------------------------------------------------------------------


def check_event_time(event_at: datetime | None, *, now: datetime) -> datetime:
    """The event's time in UTC: with a zone, in the future, at most ``MAX_SCHEDULE_AHEAD`` ahead."""
    if event_at is None:
        raise InvalidInput("event_at is required", field="event_at")
    checked = check_schedule(event_at, field="event_at", now=now)
    assert checked is not None
    if checked <= now:
        raise InvalidInput("event_at must be in the future", field="event_at")
    return checked


def reminder_times(
    event_at: datetime, offset: int, default_ttl_seconds: float
) -> tuple[datetime, datetime]:
    """When the reminder goes out, and when it stops being retried (its event; see the module)."""
    send_at = event_at - timedelta(seconds=offset)
    expires_at = min(
        send_at + timedelta(seconds=default_ttl_seconds),
        max(event_at, send_at + REMINDER_GRACE),
    )
    return send_at, expires_at


def _check_reference(reference: str | None) -> str:
    checked = check_header_text(reference, field="reference", max_length=MAX_REFERENCE_LENGTH)
    if checked is None:
        raise InvalidInput("reference is required: it names the event", field="reference")
    return checked


def _check_message(message: MessageRequest) -> None:
    for field, value in (
        ("send_at", message.send_at),
        ("ttl_seconds", message.ttl_seconds),
        ("Idempotency-Key", message.idempotency_key),
        ("reference", message.reference),
        ("event_at", message.event_at),
    ):
        if value is not None:
            raise InvalidInput(f"a reminder's {field} comes from the reminder", field=field)


def _check_same_event(earlier: list[Reminder], *, reference: str, event_at: datetime) -> None:
    """A reference is one event: more reminders for it at another time would be sent for both."""
    for reminder in earlier:
        if reminder.status.value in UNCLAIMED and reminder.event_at != event_at:
            raise Conflict(
                f"the reminders of {reference!r} are for {reminder.event_at.isoformat()}:"
                " move the event to change its time",
                field="event_at",
            )
