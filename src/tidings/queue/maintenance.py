"""Campaign housekeeping the workers run every second or so: start what is due, close what is done.

Several workers run these at once. Each pass is a conditional ``UPDATE … RETURNING`` on the
campaign's status, so exactly one worker wins each campaign; the caller commits once, making the
status change and its consequences (the fan-out, the event) visible together.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Exists, case, delete, func, select, tuple_, update
from sqlalchemy.orm import Session, aliased

from tidings.db.models import Campaign, Contact, Event, Message, Signup
from tidings.domain import (
    FAILED_MESSAGE_STATUSES,
    PENDING_MESSAGE_STATUSES,
    CampaignStatus,
    ContactStatus,
    EventType,
    MessageStatus,
)
from tidings.queue.fanout import fan_out_campaign

#: Campaigns one pass starts; the rest wait for the next pass, so a pass stays short.
START_BATCH = 5  # campaigns
#: An unconfirmed public sign-up (and a contact still ``pending`` through it) lives this long.
SIGNUP_PENDING_TTL = timedelta(days=7)
#: Sign-ups one pass purges: short statements, short locks; the next pass takes the next batch.
SIGNUP_PURGE_BATCH = 200  # rows
#: Characters of a server's reply quoted in a failed campaign's reason.
MAX_REASON_ERROR = 300


def start_due_campaigns(*, session: Session, now: datetime, ttl_seconds: float) -> int:
    """Fan out scheduled campaigns whose time has come; how many were started.

    ``FOR UPDATE SKIP LOCKED`` (PostgreSQL) lets a second worker pass over a campaign another
    worker is fanning out instead of waiting behind it; the ``status = 'scheduled'`` condition,
    re-checked after any lock wait, makes sure no campaign is started twice. SQLite runs one writer
    at a time, and ignores the locking clause.
    """
    candidate = aliased(Campaign)  # not correlated with the UPDATE's own campaigns
    due = (
        select(candidate.id)
        .where(
            candidate.status == CampaignStatus.scheduled.value,
            candidate.scheduled_at <= now,
        )
        .order_by(candidate.scheduled_at, candidate.id)
        .limit(START_BATCH)
        .with_for_update(skip_locked=True)
    )
    started = list(
        session.scalars(
            update(Campaign)
            .where(
                Campaign.id.in_(due.scalar_subquery()),
                Campaign.status == CampaignStatus.scheduled.value,
            )
            .values(status=CampaignStatus.running.value, started_at=now, status_reason=None)
            .returning(Campaign.id)
            .execution_options(synchronize_session=False)
        )
    )
    campaigns = session.scalars(
        select(Campaign)
        .where(Campaign.id.in_(started))
        .order_by(Campaign.id)
        .execution_options(populate_existing=True)
    )
    for campaign in campaigns:
        result = fan_out_campaign(
            session=session, campaign=campaign, now=now, ttl_seconds=ttl_seconds
        )
        session.add(
            Event(
                tenant_id=campaign.tenant_id,
                campaign_id=campaign.id,
                type=EventType.campaign_started.value,
                detail=(
                    f"{result.recipients} recipients, {result.suppressed} suppressed"
                    if result.done
                    else f"{result.recipients} recipients so far, preparing the rest"
                ),
                created_at=now,
            )
        )
    return len(started)


def complete_finished_campaigns(*, session: Session, now: datetime) -> list[int]:
    """Close running campaigns with no pending message; their ids.

    Pending is queued, paused or being sent. A campaign ends ``completed``, or ``failed`` with a
    ``status_reason`` when nothing was sent and at least one message failed or died: an audience
    that was all suppressed completed its job, one whose every delivery failed did not. With two
    workers, the second one's UPDATE waits for the first's row lock, re-checks
    ``status = 'running'`` and skips the row: one ending, one event.
    """

    def has(*statuses: MessageStatus | str) -> Exists:
        return (
            select(Message.id)
            .where(Message.campaign_id == Campaign.id, Message.status.in_(list(statuses)))
            .exists()
        )

    delivered_nothing = ~has(MessageStatus.sent) & has(*FAILED_MESSAGE_STATUSES)
    finished = session.execute(
        update(Campaign)
        .where(Campaign.status == CampaignStatus.running.value, ~has(*PENDING_MESSAGE_STATUSES))
        .values(
            status=case(
                (delivered_nothing, CampaignStatus.failed.value),
                else_=CampaignStatus.completed.value,
            ),
            completed_at=now,
        )
        .returning(Campaign.id, Campaign.tenant_id, Campaign.status)
        .execution_options(synchronize_session=False)
    ).all()
    for campaign_id, tenant_id, status in finished:
        reason = None
        if status == CampaignStatus.failed.value:
            reason = _failure_reason(session, campaign_id)
            session.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id)
                .values(status_reason=reason)
                .execution_options(synchronize_session=False)
            )
        session.add(
            Event(
                tenant_id=tenant_id,
                campaign_id=campaign_id,
                type=(
                    EventType.campaign_failed
                    if status == CampaignStatus.failed.value
                    else EventType.campaign_completed
                ).value,
                detail=reason,
                created_at=now,
            )
        )
    return sorted(campaign_id for campaign_id, _, _ in finished)


def _failure_reason(session: Session, campaign_id: int) -> str:
    """ "every one of its 12 messages failed or died; the most frequent error (9 of them): …"."""
    rows = session.execute(
        select(Message.last_error, func.count())
        .where(
            Message.campaign_id == campaign_id, Message.status.in_(list(FAILED_MESSAGE_STATUSES))
        )
        .group_by(Message.last_error)
        .order_by(func.count().desc(), Message.last_error)
    ).all()
    failed = sum(count for _, count in rows)
    reason = f"none of its messages was sent: {failed} failed or died"
    error, count = rows[0] if rows else (None, 0)
    if error:
        reason += f"; the most frequent error ({count} of them): {error[:MAX_REASON_ERROR]}"
    return reason


def purge_unconfirmed_signups(
    *, session: Session, now: datetime, batch: int = SIGNUP_PURGE_BATCH
) -> int:
    """Delete up to ``batch`` sign-ups older than ``SIGNUP_PENDING_TTL`` (a confirmed one has done
    its work, an unconfirmed one expired), and those of their contacts still ``pending`` with no
    other sign-up waiting; how many sign-ups went.

    Reads the oldest first through ``ix_signups_created_at``, so a pass with nothing to do costs
    one index probe. A contact's messages are detached before it goes, as
    ``contacts.delete_contact`` does (``messages`` has no foreign keys).
    """
    cutoff = now - SIGNUP_PENDING_TTL
    expired = session.execute(
        select(Signup.list_id, Signup.contact_id)
        .where(Signup.created_at < cutoff)
        .order_by(Signup.created_at)
        .limit(batch)
    ).all()
    if not expired:
        return 0
    session.execute(
        delete(Signup).where(
            tuple_(Signup.list_id, Signup.contact_id).in_([tuple(key) for key in expired])
        )
    )
    waiting = select(Signup.contact_id).where(Signup.contact_id == Contact.id).exists()
    stale = list(
        session.scalars(
            select(Contact.id).where(
                Contact.id.in_(sorted({contact_id for _, contact_id in expired})),
                Contact.status == ContactStatus.pending.value,
                ~waiting,
            )
        )
    )
    if stale:
        session.execute(
            update(Message)
            .where(Message.contact_id.in_(stale))
            .values(contact_id=None)
            .execution_options(synchronize_session=False)
        )
        session.execute(
            delete(Contact)
            .where(Contact.id.in_(stale))
            .execution_options(synchronize_session=False)
        )
    return len(expired)
