"""Campaign housekeeping the workers run every second or so: start what is due, close what is done.

Several workers run these at once. Each pass is a conditional ``UPDATE … RETURNING`` on the
campaign's status, so exactly one worker wins each campaign; the caller commits once, making the
status change and its consequences (the fan-out, the event) visible together.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, aliased

from tidings.db.models import Campaign, Event, Message
from tidings.domain import PENDING_MESSAGE_STATUSES, CampaignStatus, EventType
from tidings.queue.fanout import fan_out_campaign

#: Campaigns one pass starts; the rest wait for the next pass, so a pass stays short.
START_BATCH = 5  # campaigns


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
    """Mark running campaigns with no pending message ``completed``; their ids.

    Pending is queued, paused or sending. With two workers, the second one's UPDATE waits for the
    first's row lock, re-checks ``status = 'running'`` and skips the row: one completion, one event.
    """
    pending = (
        select(Message.id)
        .where(
            Message.campaign_id == Campaign.id,
            Message.status.in_([status.value for status in PENDING_MESSAGE_STATUSES]),
        )
        .exists()
    )
    finished = session.execute(
        update(Campaign)
        .where(Campaign.status == CampaignStatus.running.value, ~pending)
        .values(status=CampaignStatus.completed.value, completed_at=now)
        .returning(Campaign.id, Campaign.tenant_id)
        .execution_options(synchronize_session=False)
    ).all()
    for campaign_id, tenant_id in finished:
        session.add(
            Event(
                tenant_id=tenant_id,
                campaign_id=campaign_id,
                type=EventType.campaign_completed.value,
                created_at=now,
            )
        )
    return sorted(campaign_id for campaign_id, _ in finished)
