"""Campaigns: create a draft, start it (fan out now, or at its time), pause, resume, cancel, retry
its failures, and report its progress from the queue itself.

Every status change first locks the campaign row (``FOR UPDATE`` on PostgreSQL; SQLite has one
writer at a time), so a transition is checked against the status as it really is, and the
campaign's messages change in the same transaction as the campaign.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tidings.db.models import Campaign, Contact, ContactList, Event, Message
from tidings.domain import (
    DEFAULT_PRIORITY,
    FAILED_MESSAGE_STATUSES,
    CampaignStatus,
    EventType,
    MessageStatus,
)
from tidings.errors import Conflict, InvalidInput, NotFound
from tidings.queue import enqueue
from tidings.queue.fanout import fan_out_campaign, still_fanning_out
from tidings.scheduling.windows import SendWindow, window_from_json
from tidings.services import campaign_eta, segments
from tidings.services.message_features import (
    DEFAULT_MAX_ATTACHMENT_BYTES,
    FeaturesIn,
    store_features,
)
from tidings.services.messages import (
    MAX_CATEGORY_LENGTH,
    check_header_text,
    check_mailbox,
    check_priority,
    check_schedule,
    tenant_template,
)
from tidings.services.pagination import Page, paginate

MAX_NAME_LENGTH = 200
MAX_LIST_IDS = 100
MAX_CONTACT_IDS = 10_000  # a hand-picked audience; bigger ones belong in a list
MAX_SEGMENT_IDS = 20


@dataclass(frozen=True, slots=True)
class CampaignDraft:
    name: str
    template_id: int
    list_ids: Sequence[int] = ()
    contact_ids: Sequence[int] = ()
    segment_ids: Sequence[int] = ()  # read when it starts (the union with the others, once each)
    data: dict[str, Any] = field(default_factory=dict)  # template data (a deadline, a message)
    priority: int = DEFAULT_PRIORITY
    scheduled_at: datetime | None = None
    category: str | None = None  # None: the template's category
    from_address: str | None = None  # None: the settings' default sender
    send_window: SendWindow | None = None  # local hours its messages may start in
    #: Reply-To, extra headers and attachments (``services/message_features.py``).
    features: FeaturesIn = field(default_factory=FeaturesIn)
    track_opens: bool | None = None  # None: the tenant's setting
    track_clicks: bool | None = None


@dataclass(frozen=True, slots=True)
class CampaignProgress:
    """Figures derived from one grouped count: sent + failed + suppressed + cancelled + pending = recipients."""

    recipient_count: int
    sent: int
    failed: int  # failed and dead
    dead: int  # of which dead: retried until their time to live ran out
    suppressed: int
    cancelled: int
    pending: int  # queued, paused or being sent
    pending_until_window: int  # of which queued and waiting for their sending window to open
    progress_percentage: float
    send_rate_per_minute: int  # sent in the last 60 seconds
    #: When the last message will have gone: the completion time once completed; for a running
    #: campaign, simulated against its throttle, windows and pace (campaign_eta); else None.
    estimated_completion: datetime | None


@dataclass(frozen=True, slots=True)
class Retried:
    campaign: Campaign
    requeued: int


def create_campaign(
    *,
    session: Session,
    tenant_id: int,
    draft: CampaignDraft,
    now: datetime,
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES,
) -> Campaign:
    """A draft campaign; every referenced id must be the tenant's own. Its attachments are
    stored here, once, whatever the size of its audience."""
    campaign = Campaign(
        tenant_id=tenant_id,
        **_checked_columns(session, tenant_id, draft, now),
        features=_stored_features(session, tenant_id, draft.features, max_attachment_bytes, now),
        status=CampaignStatus.draft.value,
        recipient_count=0,
        created_at=now,
    )
    session.add(campaign)
    session.flush()
    return campaign


#: What ``update_campaign`` may change: every field a draft is created with; ``features`` by
#: its parts (``FEATURE_PARTS``).
EDITABLE_FIELDS = frozenset(CampaignDraft.__dataclass_fields__) - {"features"}
FEATURE_PARTS = frozenset({"reply_to", "headers", "attachments"})


def update_campaign(
    *,
    session: Session,
    tenant_id: int,
    campaign_id: int,
    changes: Mapping[str, Any],
    now: datetime,
    features: FeaturesIn | None = None,
    feature_parts: Collection[str] = (),
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES,
) -> Campaign:
    """Change any field of a draft or scheduled campaign, checked as a new draft would be.

    ``feature_parts`` names the parts of ``features`` (``reply_to``, ``headers``,
    ``attachments``) that change: each takes its new value (None or empty clears it), and the
    parts not named keep their stored value.

    Nothing of such a campaign is queued yet, so a change only rewrites the row. Rescheduling a
    scheduled campaign moves its start (the worker starts it when ``scheduled_at`` comes, under the
    same row lock taken here); clearing its ``scheduled_at`` makes it a draft again, to be started
    by hand.
    """
    unknown = set(changes) - EDITABLE_FIELDS
    if unknown:
        raise InvalidInput(f"{min(unknown)} cannot be changed", field=min(unknown))
    campaign = _locked(session, tenant_id, campaign_id)
    _require(campaign, {CampaignStatus.draft, CampaignStatus.scheduled}, "changed")
    draft = replace(_draft_of(campaign), **changes)
    for column, value in _checked_columns(session, tenant_id, draft, now).items():
        setattr(campaign, column, value)
    given = set(feature_parts) & FEATURE_PARTS
    if features is not None and given:
        fresh = _stored_features(session, tenant_id, features, max_attachment_bytes, now) or {}
        merged = {k: v for k, v in (campaign.features or {}).items() if k not in given}
        merged.update({part: fresh[part] for part in given if part in fresh})
        campaign.features = merged or None
    if campaign.status == CampaignStatus.scheduled.value and campaign.scheduled_at is None:
        campaign.status = CampaignStatus.draft.value
    changed = sorted({*changes, *given})
    _record(session, campaign, EventType.campaign_updated, now, ", ".join(changed))
    return campaign


def delete_campaign(*, session: Session, tenant_id: int, campaign_id: int, now: datetime) -> None:
    """Delete a draft. Any other campaign has (or is about to have) messages and figures that
    its history refers to: cancel it instead. The ``campaign_deleted`` event keeps its name."""
    campaign = _locked(session, tenant_id, campaign_id)
    _require(campaign, {CampaignStatus.draft}, "deleted")
    _record(session, campaign, EventType.campaign_deleted, now, campaign.name)
    session.delete(campaign)
    session.flush()


def _draft_of(campaign: Campaign) -> CampaignDraft:
    return CampaignDraft(
        name=campaign.name,
        template_id=campaign.template_id,
        list_ids=list(campaign.list_ids),
        contact_ids=list(campaign.contact_ids),
        segment_ids=list(campaign.segment_ids or []),
        data=dict(campaign.data),
        priority=campaign.priority,
        scheduled_at=campaign.scheduled_at,
        category=campaign.category,
        from_address=campaign.from_address,
        send_window=(
            window_from_json(campaign.send_window) if campaign.send_window is not None else None
        ),
        track_opens=campaign.track_opens,
        track_clicks=campaign.track_clicks,
    )


def _checked_columns(
    session: Session, tenant_id: int, draft: CampaignDraft, now: datetime
) -> dict[str, Any]:
    """The campaign columns a draft sets, each checked; the one place creation and changes
    check a campaign's fields."""
    name = check_header_text(draft.name, field="name", max_length=MAX_NAME_LENGTH)
    assert name is not None
    template = tenant_template(session=session, tenant_id=tenant_id, template_id=draft.template_id)
    list_ids = _own_ids(
        session, ContactList, tenant_id, draft.list_ids, field="list_ids", cap=MAX_LIST_IDS
    )
    contact_ids = _own_ids(
        session, Contact, tenant_id, draft.contact_ids, field="contact_ids", cap=MAX_CONTACT_IDS
    )
    segment_ids = list(dict.fromkeys(draft.segment_ids))
    if len(segment_ids) > MAX_SEGMENT_IDS:
        raise InvalidInput(
            f"segment_ids may hold at most {MAX_SEGMENT_IDS} ids", field="segment_ids"
        )
    segments.require_segments(session=session, tenant_id=tenant_id, segment_ids=segment_ids)
    if not list_ids and not contact_ids and not segment_ids:
        raise InvalidInput(
            "a campaign needs list_ids, segment_ids or contact_ids", field="list_ids"
        )
    category = check_header_text(draft.category, field="category", max_length=MAX_CATEGORY_LENGTH)
    return {
        "name": name.strip(),
        "template_id": template.id,
        "list_ids": list_ids,
        "contact_ids": contact_ids,
        "segment_ids": segment_ids,
        "data": dict(draft.data),
        "category": category or template.category,
        "from_address": check_mailbox(draft.from_address, field="from_address"),
        "priority": check_priority(draft.priority),
        "scheduled_at": check_schedule(draft.scheduled_at, field="scheduled_at", now=now),
        "send_window": draft.send_window.to_json() if draft.send_window is not None else None,
        "track_opens": draft.track_opens,
        "track_clicks": draft.track_clicks,
    }


def _stored_features(
    session: Session,
    tenant_id: int,
    given: FeaturesIn,
    max_attachment_bytes: int,
    now: datetime,
) -> dict[str, Any] | None:
    """Reply-To checked as a From, headers checked, attachments stored once."""
    reply_to = check_mailbox(given.reply_to, field="reply_to")
    return store_features(
        session=session,
        tenant_id=tenant_id,
        given=replace(given, reply_to=reply_to),
        max_attachment_bytes=max_attachment_bytes,
        now=now,
    )


def get_campaign(*, session: Session, tenant_id: int, campaign_id: int) -> Campaign:
    campaign = session.scalar(
        select(Campaign).where(Campaign.tenant_id == tenant_id, Campaign.id == campaign_id)
    )
    if campaign is None:
        raise NotFound("no such campaign")
    return campaign


def list_campaigns(
    *, session: Session, tenant_id: int, limit: int, cursor: str | None
) -> Page[Campaign]:
    """The tenant's campaigns, newest first."""
    query = select(Campaign).where(Campaign.tenant_id == tenant_id)
    return paginate(session, query, Campaign.id, limit=limit, cursor=cursor, descending=True)


def start_campaign(
    *, session: Session, tenant_id: int, campaign_id: int, now: datetime, ttl_seconds: float
) -> Campaign:
    """Draft → scheduled (its time is in the future; a worker starts it then), running (fanned
    out now) or preparing (its first chunk fanned out now, the workers write the rest)."""
    campaign = _locked(session, tenant_id, campaign_id)
    _require(campaign, {CampaignStatus.draft}, "started")
    if campaign.scheduled_at is not None and campaign.scheduled_at > now:
        _set_status(session, campaign, CampaignStatus.scheduled, EventType.campaign_scheduled, now)
        return campaign
    campaign.started_at = now
    _set_status(session, campaign, CampaignStatus.running, EventType.campaign_started, now)
    fan_out_campaign(session=session, campaign=campaign, now=now, ttl_seconds=ttl_seconds)
    return campaign


def pause_campaign(
    *, session: Session, tenant_id: int, campaign_id: int, now: datetime
) -> Campaign:
    """Running or preparing → paused: no message not yet claimed is sent until it is resumed.
    A preparing campaign's remaining messages are still written by the workers, held
    (``queue.fanout``); the row lock taken here orders the pause with each chunk's write."""
    campaign = _locked(session, tenant_id, campaign_id)
    _require(campaign, {CampaignStatus.running, CampaignStatus.preparing}, "paused")
    enqueue.hold_campaign_messages(session=session, campaign_id=campaign.id, now=now)
    _set_status(session, campaign, CampaignStatus.paused, EventType.campaign_paused, now)
    return campaign


def resume_campaign(
    *, session: Session, tenant_id: int, campaign_id: int, now: datetime
) -> Campaign:
    """Paused → running: the held messages are queued again. Paused → preparing when its
    messages are still being written: the chunks to come are then written queued, and the
    worker writing the last one makes it run."""
    campaign = _locked(session, tenant_id, campaign_id)
    _require(campaign, {CampaignStatus.paused}, "resumed")
    enqueue.release_campaign_messages(session=session, campaign_id=campaign.id, now=now)
    status = CampaignStatus.preparing if still_fanning_out(campaign) else CampaignStatus.running
    _set_status(session, campaign, status, EventType.campaign_resumed, now)
    return campaign


def cancel_campaign(
    *, session: Session, tenant_id: int, campaign_id: int, now: datetime
) -> Campaign:
    """Every message not yet claimed is cancelled; claimed ones finish their attempt."""
    campaign = _locked(session, tenant_id, campaign_id)
    _require(
        campaign,
        {
            CampaignStatus.draft,
            CampaignStatus.scheduled,
            CampaignStatus.preparing,
            CampaignStatus.running,
            CampaignStatus.paused,
        },
        "cancelled",
    )
    enqueue.cancel_unclaimed(
        session=session,
        where=(Message.tenant_id == campaign.tenant_id) & (Message.campaign_id == campaign.id),
        now=now,
        record_events=False,
    )
    campaign.completed_at = now
    _set_status(session, campaign, CampaignStatus.cancelled, EventType.campaign_cancelled, now)
    return campaign


def retry_failed(
    *, session: Session, tenant_id: int, campaign_id: int, now: datetime, ttl_seconds: float
) -> Retried:
    """Failed and dead messages go back to the queue; a completed or failed campaign runs again."""
    campaign = _locked(session, tenant_id, campaign_id)
    _require(
        campaign,
        {
            CampaignStatus.running,
            CampaignStatus.paused,
            CampaignStatus.completed,
            CampaignStatus.failed,
        },
        "retried",
    )
    paused = campaign.status == CampaignStatus.paused.value
    requeued = enqueue.requeue_failed_campaign_messages(
        session=session, campaign_id=campaign.id, now=now, ttl_seconds=ttl_seconds, hold=paused
    )
    if requeued:
        if campaign.status in (CampaignStatus.completed.value, CampaignStatus.failed.value):
            campaign.status = CampaignStatus.running.value
            campaign.status_reason = None
            campaign.completed_at = None
        _record(session, campaign, EventType.campaign_retried, now, f"{requeued} requeued")
    return Retried(campaign=campaign, requeued=requeued)


def list_failed_recipients(
    *, session: Session, tenant_id: int, campaign_id: int, limit: int, cursor: str | None
) -> Page[Message]:
    """The campaign's failed and dead messages with the server's last reply, in id order."""
    campaign = get_campaign(session=session, tenant_id=tenant_id, campaign_id=campaign_id)
    query = select(Message).where(
        Message.tenant_id == tenant_id,
        Message.campaign_id == campaign.id,
        Message.status.in_(list(FAILED_MESSAGE_STATUSES)),
    )
    return paginate(session, query, Message.id, limit=limit, cursor=cursor)


def campaign_progress(
    *, session: Session, campaigns: Iterable[Campaign], now: datetime
) -> dict[int, CampaignProgress]:
    """Progress of each campaign from ONE grouped count over ``messages`` (index campaign_id, status);
    running campaigns with a sending window add one grouped read of their pending rows."""
    by_id = {c.id: c for c in campaigns}
    running = [c for c in by_id.values() if c.status == CampaignStatus.running.value]
    limits = campaign_eta.tenant_limits(session=session, tenant_ids={c.tenant_id for c in running})
    lookback = campaign_eta.longest_window(limits.values())
    counts: dict[int, dict[str, int]] = {campaign_id: {} for campaign_id in by_id}
    sends: dict[int, campaign_eta.SendFigures] = {}
    if by_id:
        rows = session.execute(
            select(
                Message.campaign_id,
                Message.status,
                func.count(),
                *campaign_eta.send_columns(by_id.values(), now=now, lookback=lookback),
            )
            .where(Message.campaign_id.in_(list(by_id)))
            .group_by(Message.campaign_id, Message.status)
        )
        for campaign_id, status, count, *sent_figures in rows:
            assert campaign_id is not None  # the query filters on it
            counts[campaign_id][status] = count
            if status == MessageStatus.sent.value:
                sends[campaign_id] = campaign_eta.SendFigures.of(sent_figures)
    waiting = campaign_eta.waiting_by_zone(session=session, campaigns=running, now=now)
    progress: dict[int, CampaignProgress] = {}
    for campaign_id, campaign in by_id.items():
        sent = sends.get(campaign_id, campaign_eta.SendFigures())
        figures = _progress(campaign, counts[campaign_id], sent.last_minute)
        if campaign.status == CampaignStatus.running.value:
            found = waiting.get(campaign_id)
            figures = replace(
                figures,
                pending_until_window=found.until_window if found is not None else 0,
                estimated_completion=campaign_eta.estimate_completion(
                    pending=sum(
                        counts[campaign_id].get(status.value, 0)
                        for status in (MessageStatus.queued, MessageStatus.sending)
                    ),
                    waiting=found,
                    limits=limits.get(campaign.tenant_id, []),
                    sends=sent,
                    now=now,
                ),
            )
        progress[campaign_id] = figures
    return progress


# -- helpers ----------------------------------------------------------------------------------


def _progress(
    campaign: Campaign, counts: dict[str, int], sent_last_minute: int
) -> CampaignProgress:
    def n(*statuses: MessageStatus) -> int:
        return sum(counts.get(status.value, 0) for status in statuses)

    total = sum(counts.values())
    pending = n(MessageStatus.queued, MessageStatus.paused, MessageStatus.sending)
    completed = campaign.status in (CampaignStatus.completed.value, CampaignStatus.failed.value)
    if total:
        percentage = round((total - pending) * 100 / total, 2)
    else:
        percentage = 100.0 if completed else 0.0
    return CampaignProgress(
        recipient_count=total,
        sent=n(MessageStatus.sent),
        failed=n(MessageStatus.failed, MessageStatus.dead),
        dead=n(MessageStatus.dead),
        suppressed=n(MessageStatus.suppressed),
        cancelled=n(MessageStatus.cancelled),
        pending=pending,
        pending_until_window=0,
        progress_percentage=percentage,
        send_rate_per_minute=sent_last_minute,
        estimated_completion=campaign.completed_at if completed else None,
    )


def _own_ids(
    session: Session,
    model: type[Contact] | type[ContactList],
    tenant_id: int,
    ids: Sequence[int],
    *,
    field: str,
    cap: int,
) -> list[int]:
    """``ids`` de-duplicated, in order; any id that is not the tenant's is a 404 naming the field."""
    unique = list(dict.fromkeys(ids))
    if len(unique) > cap:
        raise InvalidInput(f"{field} may hold at most {cap} ids", field=field)
    if not unique:
        return []
    found = set(
        session.scalars(select(model.id).where(model.tenant_id == tenant_id, model.id.in_(unique)))
    )
    missing = [i for i in unique if i not in found]
    if missing:
        raise NotFound(f"{field}: no such id {missing[0]}", field=field)
    return unique


def _locked(session: Session, tenant_id: int, campaign_id: int) -> Campaign:
    campaign = session.scalar(
        select(Campaign)
        .where(Campaign.tenant_id == tenant_id, Campaign.id == campaign_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if campaign is None:
        raise NotFound("no such campaign")
    return campaign


def _require(campaign: Campaign, allowed: set[CampaignStatus], verb: str) -> None:
    if campaign.status not in allowed:
        states = " or ".join(sorted(s.value for s in allowed))
        raise Conflict(
            f"the campaign is {campaign.status}; only a {states} campaign can be {verb}",
            field="status",
        )


def _set_status(
    session: Session,
    campaign: Campaign,
    status: CampaignStatus,
    event: EventType,
    now: datetime,
) -> None:
    campaign.status = status.value
    campaign.status_reason = None
    _record(session, campaign, event, now)


def _record(
    session: Session,
    campaign: Campaign,
    event: EventType,
    now: datetime,
    detail: str | None = None,
) -> None:
    session.add(
        Event(
            tenant_id=campaign.tenant_id,
            campaign_id=campaign.id,
            type=event.value,
            detail=detail,
            created_at=now,
        )
    )
