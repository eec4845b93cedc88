"""``GET /v1/campaigns/{id}/stats``: how a campaign did, from summaries kept as it runs.

Nothing here counts a campaign's messages or hits: messages by status come from
``campaign_counts`` and delivered, bounced and complained messages from ``campaign_results``
(both kept by the ``messages`` triggers of migrations 0014/0019/0023, a few rows per campaign),
opens and clicks from ``campaign_engagement``, ``campaign_links`` and ``campaign_timeline`` (kept
by the tracking flush, ``tracking/record.py``). So the answer costs the same handful of index
reads for 100 recipients as for a million.

What the figures mean (each counts messages, each message at most once):

* ``sent``: messages the receiving server or provider accepted and that did not hard-bounce later
  (a hard bounce reported afterwards moves its message to failed).
* ``delivered``: messages known to have reached the recipient's mail server and not bounced since.
  How that is known depends on the transport. A provider that confirms deliveries (Resend): its
  ``email.delivered`` event; until it comes the message is sent, not delivered, and counts in
  ``awaiting_confirmation``. SMTP gives no later confirmation: the receiving server's 250 is the
  best there is, so a message counts as delivered when it is accepted (a relay's 250 included),
  and leaves ``delivered`` if a bounce report comes back. Rates are taken against ``delivered``.
* ``awaiting_confirmation``: accepted by a provider that confirms deliveries, no word yet (always 0
  with SMTP; stays high if the provider's webhook is not set up: ``TIDINGS_RESEND_WEBHOOK_SECRET``).
* ``bounced_hard``: refused for good: an SMTP 5xx reply to RCPT or DATA, a 5.x.x bounce report, a
  Resend bounce of type Permanent. Only those about the address (5.1.x at send time, any hard
  bounce report) suppress it.
* ``bounced_soft``: refused for now, and not accepted since: an SMTP 4xx reply to RCPT or DATA
  (not a slow-down), waiting for its retry or given up, a 4.x.x report, a Resend bounce of type
  Transient or Undetermined. A later acceptance or delivery confirmation ends it; a hard bounce
  replaces it. Never suppressed.
* ``complaints``: messages the recipient reported as spam (feedback loops, Resend).
* ``opens_unique``/``clicks_unique``: messages a person opened / clicked in; ``*_total``: every
  open or click by a person; ``*_machine``: those classified a machine's (``tracking/classify``),
  never part of the rates.
* ``timeline``: people's and machines' opens and clicks per interval, the interval the smallest of
  ``INTERVALS`` that shows the campaign's span in at most ``MAX_POINTS`` points.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Float, Integer, cast, func, select
from sqlalchemy.orm import Session

from tidings.db.models import (
    Campaign,
    CampaignCount,
    CampaignEngagement,
    CampaignLink,
    CampaignResult,
    CampaignTimeline,
)
from tidings.domain import MessageStatus
from tidings.services.campaigns import get_campaign

INTERVALS = (60, 300, 900, 3600, 6 * 3600, 86400)  # seconds
MAX_POINTS = 120


@dataclass(frozen=True, slots=True)
class LinkStats:
    url: str
    clicks_unique: int
    clicks_total: int
    clicks_machine: int


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    at: datetime  # the start of the interval (UTC)
    opens: int  # people's
    clicks: int
    opens_machine: int
    clicks_machine: int


@dataclass(frozen=True, slots=True)
class CampaignStats:
    recipient_count: int
    sent: int
    delivered: int
    bounced_hard: int
    bounced_soft: int
    complaints: int
    unsubscribes: int
    opens_unique: int
    opens_total: int
    opens_machine: int
    clicks_unique: int
    clicks_total: int
    clicks_machine: int
    awaiting_confirmation: int
    open_rate: float  # opens_unique / delivered
    click_rate: float  # clicks_unique / delivered
    click_to_open_rate: float  # clicks_unique / opens_unique
    bounce_rate: float  # (bounced_hard + bounced_soft) / (delivered + bounced_hard + bounced_soft)
    complaint_rate: float  # complaints / delivered
    unsubscribe_rate: float  # unsubscribes / delivered
    links: list[LinkStats]
    interval_seconds: int
    timeline: list[TimelinePoint]


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _status_counts(session: Session, campaign_id: int) -> Counter[str]:
    rows = session.execute(
        select(CampaignCount.status, func.sum(CampaignCount.count))
        .where(CampaignCount.campaign_id == campaign_id)
        .group_by(CampaignCount.status)
    )
    return Counter({status: int(count or 0) for status, count in rows})


def _results(session: Session, campaign_id: int) -> Counter[str]:
    """Delivered, bounced (hard, soft), complained and unconfirmed messages: ``campaign_results``'
    shards summed (its primary key's range)."""
    rows = session.execute(
        select(CampaignResult.result, func.sum(CampaignResult.count))
        .where(CampaignResult.campaign_id == campaign_id)
        .group_by(CampaignResult.result)
    )
    return Counter({result: int(count or 0) for result, count in rows})


def _interval(first: datetime, last: datetime) -> int:
    span = (last - first).total_seconds()
    for seconds in INTERVALS:
        if span / seconds < MAX_POINTS:
            return seconds
    return INTERVALS[-1]


def _epoch_seconds(session: Session) -> ColumnElement[float]:
    """``campaign_timeline.minute`` as unix seconds, on each database (SQLite keeps the text form
    of ``db/types.py``, which ``strftime`` reads)."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.extract("epoch", CampaignTimeline.minute), Float)
    return cast(func.strftime("%s", CampaignTimeline.minute), Integer)


def _timeline(session: Session, campaign: Campaign) -> tuple[int, list[TimelinePoint]]:
    """Two reads of the campaign's minutes (its primary key's range): their span, then their
    counts summed per interval by the database, so the answer is at most ``MAX_POINTS`` rows
    however long the campaign ran."""
    first, last = session.execute(
        select(func.min(CampaignTimeline.minute), func.max(CampaignTimeline.minute)).where(
            CampaignTimeline.campaign_id == campaign.id
        )
    ).one()
    if first is None:
        return INTERVALS[0], []
    start = min(campaign.started_at or first, first)
    interval = _interval(start, last)
    bucket = func.floor(_epoch_seconds(session) / interval)
    rows = session.execute(
        select(
            bucket,
            func.sum(CampaignTimeline.opens),
            func.sum(CampaignTimeline.clicks),
            func.sum(CampaignTimeline.opens_machine),
            func.sum(CampaignTimeline.clicks_machine),
        )
        .where(CampaignTimeline.campaign_id == campaign.id)
        .group_by(bucket)
        .order_by(bucket)
    )
    return interval, [
        TimelinePoint(datetime.fromtimestamp(int(at) * interval, UTC), *(int(c) for c in counts))
        for at, *counts in rows
    ]


def campaign_stats(*, session: Session, tenant_id: int, campaign_id: int) -> CampaignStats:
    """The campaign's figures; another tenant's campaign is ``NotFound`` like a missing one."""
    campaign = get_campaign(session=session, tenant_id=tenant_id, campaign_id=campaign_id)
    statuses = _status_counts(session, campaign.id)
    results = _results(session, campaign.id)
    engagement = session.get(CampaignEngagement, campaign.id)
    links = session.execute(
        select(CampaignLink)
        .where(CampaignLink.campaign_id == campaign.id)
        .order_by(CampaignLink.clicks_unique.desc(), CampaignLink.link_index)
    ).scalars()
    interval, timeline = _timeline(session, campaign)
    sent = statuses[MessageStatus.sent.value]
    delivered = results["delivered"]
    bounced_hard = results["bounced_hard"]
    bounced_soft = results["bounced_soft"]
    complaints = results["complained"]
    e = engagement or CampaignEngagement(
        opens_unique=0,
        opens_total=0,
        opens_machine=0,
        clicks_unique=0,
        clicks_total=0,
        clicks_machine=0,
        unsubscribes=0,
    )
    return CampaignStats(
        recipient_count=campaign.recipient_count,
        sent=sent,
        delivered=delivered,
        bounced_hard=bounced_hard,
        bounced_soft=bounced_soft,
        complaints=complaints,
        unsubscribes=e.unsubscribes,
        opens_unique=e.opens_unique,
        opens_total=e.opens_total,
        opens_machine=e.opens_machine,
        clicks_unique=e.clicks_unique,
        clicks_total=e.clicks_total,
        clicks_machine=e.clicks_machine,
        awaiting_confirmation=results["unconfirmed"],
        open_rate=_rate(e.opens_unique, delivered),
        click_rate=_rate(e.clicks_unique, delivered),
        click_to_open_rate=_rate(e.clicks_unique, e.opens_unique),
        bounce_rate=_rate(bounced_hard + bounced_soft, delivered + bounced_hard + bounced_soft),
        complaint_rate=_rate(complaints, delivered),
        unsubscribe_rate=_rate(e.unsubscribes, delivered),
        links=[
            LinkStats(link.url, link.clicks_unique, link.clicks_total, link.clicks_machine)
            for link in links
        ],
        interval_seconds=interval,
        timeline=timeline,
    )


@dataclass(frozen=True, slots=True)
class EngagementSummary:
    """The rates a list of campaigns shows for each, with what they are taken from."""

    delivered: int
    opens_unique: int  # people's, as in ``CampaignStats``
    clicks_unique: int
    open_rate: float  # opens_unique / delivered
    click_rate: float  # clicks_unique / delivered


def campaign_summaries(
    *, session: Session, tenant_id: int, campaign_ids: Sequence[int]
) -> dict[int, EngagementSummary]:
    """Each of the tenant's ``campaign_ids``' rates in two statements whatever their number (a
    grouped read of their ``campaign_results``, one ``IN`` read of their ``campaign_engagement``),
    so a page of campaigns never reads them one by one. Rates are of delivered messages, as in
    ``campaign_stats``. Ids of another tenant's campaigns get no engagement (the summary rows
    carry the tenant) and their counts are never shown (the caller passes only campaigns it read
    for the tenant)."""
    wanted = sorted(set(campaign_ids))
    if not wanted:
        return {}
    delivered_of: Counter[int] = Counter()
    for campaign_id, count in session.execute(
        select(CampaignResult.campaign_id, func.sum(CampaignResult.count))
        .where(CampaignResult.campaign_id.in_(wanted), CampaignResult.result == "delivered")
        .group_by(CampaignResult.campaign_id)
    ):
        delivered_of[campaign_id] = int(count or 0)
    engaged = {
        campaign_id: (opens, clicks)
        for campaign_id, opens, clicks in session.execute(
            select(
                CampaignEngagement.campaign_id,
                CampaignEngagement.opens_unique,
                CampaignEngagement.clicks_unique,
            ).where(
                CampaignEngagement.campaign_id.in_(wanted),
                CampaignEngagement.tenant_id == tenant_id,
            )
        )
    }
    summaries = {}
    for campaign_id in wanted:
        delivered = delivered_of[campaign_id]
        opens, clicks = engaged.get(campaign_id, (0, 0))
        summaries[campaign_id] = EngagementSummary(
            delivered=delivered,
            opens_unique=opens,
            clicks_unique=clicks,
            open_rate=_rate(opens, delivered),
            click_rate=_rate(clicks, delivered),
        )
    return summaries
