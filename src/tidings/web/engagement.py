"""A campaign's results on its page: the funnel, the opens-and-clicks timeline and the links,
rendered by one partial template for the page and for the live stream (``routes/events.py``),
which sends it again whenever the figures moved, so both always look the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from markupsafe import Markup
from sqlalchemy.orm import Session

from tidings.db.models import Campaign
from tidings.domain import FINAL_CAMPAIGN_STATUSES
from tidings.services.campaign_stats import CampaignStats, campaign_stats
from tidings.tracking.settings import tenant_tracking
from tidings.web.chart import EngagementChart, engagement_chart
from tidings.web.pages import templates

PARTIAL = "campaigns/_engagement.html"
#: Opens and clicks keep coming after the last message went out, most of them in the first day:
#: the page keeps following them that long after the campaign ended.
FOLLOW_AFTER_END = timedelta(hours=24)
LINKS_SHOWN = 25  # the most clicked links a page lists
URL_SHOWN_CHARS = 60  # a longer URL is cut (the whole one is in its title)


@dataclass(frozen=True, slots=True)
class Tracking:
    """Whether the campaign's mail carries the pixel and tracked links (its override, else the
    tenant's setting today), to explain an empty section."""

    opens: bool
    clicks: bool


@dataclass(frozen=True, slots=True)
class Engagement:
    """What the partial needs; equal values render the same HTML (the stream compares them)."""

    campaign_id: int
    started_at: datetime | None
    stats: CampaignStats
    tracking: Tracking

    @property
    def chart(self) -> EngagementChart | None:
        return engagement_chart(
            self.stats.timeline, self.stats.interval_seconds, since=self.started_at
        )


def follows_engagement(campaign: Campaign, now: datetime) -> bool:
    """Whether an open page should keep receiving the campaign's opens and clicks."""
    if campaign.started_at is None:
        return False  # nothing sent: nothing to open
    if campaign.status not in FINAL_CAMPAIGN_STATUSES:
        return True
    ended = campaign.completed_at
    return ended is not None and now - ended < FOLLOW_AFTER_END


def campaign_engagement(*, session: Session, campaign: Campaign) -> Engagement:
    """The campaign's figures (``campaign_stats``: a handful of index reads) and its tracking."""
    stats = campaign_stats(session=session, tenant_id=campaign.tenant_id, campaign_id=campaign.id)
    defaults = tenant_tracking(session, [campaign.tenant_id])[campaign.tenant_id]
    tracking = Tracking(
        opens=defaults.opens if campaign.track_opens is None else campaign.track_opens,
        clicks=defaults.clicks if campaign.track_clicks is None else campaign.track_clicks,
    )
    return Engagement(
        campaign_id=campaign.id, started_at=campaign.started_at, stats=stats, tracking=tracking
    )


def render_engagement(engagement: Engagement) -> Markup:
    """The section's inner HTML (autoescaped by the template, hence safe to insert as is)."""
    html = templates.get_template(PARTIAL).render(
        engagement=engagement,
        links_shown=LINKS_SHOWN,
        url_shown_chars=URL_SHOWN_CHARS,
    )
    return Markup(html)  # rendered by the autoescaping environment: safe as it is
