"""``/v1/reminders``: messages tied to an event ("24 h and 2 h before"), moved when the event moves.

A reminder is a message (``/v1/messages/{id}`` shows it, ``DELETE /v1/messages?reference=``
cancels a reference's unsent ones); these routes make and move them by their event.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Path, Response
from pydantic import AwareDatetime, BaseModel, Field

from tidings.api.deps import KeyFirstRoute, NowDep, RuntimeDep, SenderDep, SessionDep, ViewerDep
from tidings.api.routes.messages import MessageFields
from tidings.api.schemas import ERROR_RESPONSES, StrictModel, send_window_of
from tidings.domain import MessageStatus
from tidings.queue.reminders import Reminder
from tidings.services import messages, reminders

router = APIRouter(
    prefix="/v1/reminders", tags=["reminders"], responses=ERROR_RESPONSES, route_class=KeyFirstRoute
)

#: A reference in a path: the rest of the path, so that one with a slash can be named too.
ReferencePath = Path(min_length=1, max_length=messages.MAX_REFERENCE_LENGTH)


class ReminderIn(MessageFields):
    reference: str = Field(
        min_length=1,
        max_length=messages.MAX_REFERENCE_LENGTH,
        description="Names the event: one reminder per offset and reference, ever.",
        examples=["meeting-42"],
    )
    event_at: AwareDatetime = Field(
        description="The event's time, with its zone; templates show it as {{ event_at }}.",
        examples=["2027-03-01T15:00:00+01:00"],
    )
    offsets: list[str] = Field(
        min_length=1,
        max_length=reminders.MAX_OFFSETS,
        description="How long before the event each reminder goes: 1w, 1d, 24h, 2h, 30m, 90s,"
        " 1d12h. An offset whose time has passed is skipped.",
        examples=[["24h", "2h"]],
    )


class MoveIn(StrictModel):
    event_at: AwareDatetime = Field(description="The event's new time, with its zone.")


class ReminderOut(BaseModel):
    offset: str
    offset_seconds: int
    message_id: int
    status: MessageStatus
    send_at: datetime = Field(description="When it goes (or went) out.")
    event_at: datetime = Field(description="The event time its mail shows.")
    last_error: str | None = Field(description="Why it was suppressed, failed or cancelled.")

    @classmethod
    def of(cls, reminder: Reminder, offset: str | None = None) -> ReminderOut:
        """``offset``: as the caller wrote it (default: the canonical spelling)."""
        return cls(
            offset=offset or reminders.format_offset(reminder.offset),
            offset_seconds=reminder.offset,
            message_id=reminder.message_id,
            status=reminder.status,
            send_at=reminder.send_at,
            event_at=reminder.event_at,
            last_error=reminder.last_error,
        )


class SkippedOut(BaseModel):
    offset: str
    offset_seconds: int
    send_at: datetime = Field(description="When it would have gone.")
    reason: str
    message_id: int | None = Field(description="On a move: the reminder it cancelled.")

    @classmethod
    def of(cls, skipped: reminders.Skipped) -> SkippedOut:
        return cls(
            offset=skipped.offset,
            offset_seconds=skipped.offset_seconds,
            send_at=skipped.send_at,
            reason=skipped.reason,
            message_id=skipped.message_id,
        )


class CreatedOut(BaseModel):
    reference: str
    event_at: datetime
    created: list[ReminderOut]
    existing: list[ReminderOut] = Field(description="Made by an earlier request, as they are now.")
    skipped: list[SkippedOut]


class MovedOut(BaseModel):
    reference: str
    event_at: datetime
    moved: list[ReminderOut]
    gone: list[ReminderOut] = Field(
        description="Claimed, sent, failed, suppressed or cancelled before the move: not moved."
    )
    skipped: list[SkippedOut] = Field(description="Cancelled: their new time has passed.")


class RemindersOut(BaseModel):
    reference: str
    reminders: list[ReminderOut]


@router.post("", status_code=201, responses={200: {"model": CreatedOut}})
def create_reminders(
    body: ReminderIn,
    response: Response,
    principal: SenderDep,
    session: SessionDep,
    now: NowDep,
    runtime: RuntimeDep,
) -> CreatedOut:
    """One message per offset; a repeat answers 200 with the same messages, never new ones."""
    message = messages.MessageRequest(
        **body.model_dump(exclude={"reference", "event_at", "offsets", "send_window"}),
        send_window=send_window_of(body.send_window),
    )
    done = reminders.create_reminders(
        session=session,
        tenant_id=principal.tenant_id,
        request=reminders.ReminderRequest(
            reference=body.reference,
            event_at=body.event_at,
            offsets=body.offsets,
            message=message,
        ),
        renderer=runtime.renderer,
        default_ttl_seconds=runtime.settings.message_ttl_seconds,
        now=now,
    )
    if not done.created:
        response.status_code = 200
    return CreatedOut(
        reference=done.reference,
        event_at=done.event_at,
        created=[ReminderOut.of(p.reminder, p.offset) for p in done.created],
        existing=[ReminderOut.of(p.reminder, p.offset) for p in done.existing],
        skipped=[SkippedOut.of(s) for s in done.skipped],
    )


@router.get("/{reference:path}")
def get_reminders(
    principal: ViewerDep, session: SessionDep, reference: str = ReferencePath
) -> RemindersOut:
    found = reminders.get_reminders(
        session=session, tenant_id=principal.tenant_id, reference=reference
    )
    return RemindersOut(reference=reference, reminders=[ReminderOut.of(r) for r in found])


@router.put("/{reference:path}")
def move_reminders(
    body: MoveIn,
    principal: SenderDep,
    session: SessionDep,
    now: NowDep,
    runtime: RuntimeDep,
    reference: str = ReferencePath,
) -> MovedOut:
    """Every reminder not yet claimed moves to the new time; the answer says what had gone."""
    done = reminders.move_reminders(
        session=session,
        tenant_id=principal.tenant_id,
        reference=reference,
        event_at=body.event_at,
        default_ttl_seconds=runtime.settings.message_ttl_seconds,
        now=now,
    )
    return MovedOut(
        reference=done.reference,
        event_at=done.event_at,
        moved=[ReminderOut.of(r) for r in done.moved],
        gone=[ReminderOut.of(r) for r in done.gone],
        skipped=[SkippedOut.of(s) for s in done.skipped],
    )
