"""``/events/campaigns``: campaign progress as Server-Sent Events, so progress bars move by themselves.

The stream reads the queue about once a second (one grouped count for all the campaigns a page
shows) and sends a ``progress`` event only when a figure changed, a comment now and then to keep
proxies from closing an idle connection, and ``done`` once every campaign has ended. A campaign's
page also asks for its opens and clicks (``engagement=ID``): they are read at the same cadence
(``campaign_stats``, a handful of index reads) while the campaign runs and for a day after it ended
(``web/engagement.py``), and sent as the re-rendered results section only when a figure moved. It checks the
key on every read, so revoking it ends the stream too. Each read is its own short transaction on a
worker thread, never the request's: the stream may stay open for minutes.

With a read replica the counts come from it, and the key check from the primary (a revoked key
stops at once); shortly after a dashboard write, from the primary too, so that a lagging replica
does not move a progress bar back (``READ_PRIMARY_COOKIE``). The ``Cache-Control: no-cache`` that
every ``EventSource`` sends is not taken as a wish for the primary here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from tidings.api.deps import RuntimeDep, read_primary_until
from tidings.db.models import Campaign
from tidings.runtime import Runtime
from tidings.services import campaigns
from tidings.web import actions
from tidings.web.auth import UserDep
from tidings.web.engagement import (
    Engagement,
    campaign_engagement,
    follows_engagement,
    render_engagement,
)
from tidings.web.formatting import percent, status_symbol, when
from tidings.web.pages import DashboardRoute
from tidings.web.routes.campaigns import FINAL

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

INTERVAL_SECONDS = 1.0  # between reads of the queue
KEEPALIVE_SECONDS = 15.0  # a comment line at least this often
#: A stream ends after this long and the browser reconnects (EventSource does that by itself), so a
#: forgotten tab holds no connection for ever and always picks up a fresh session check.
MAX_STREAM_SECONDS = 300.0
RECONNECT_MS = 2000
MAX_IDS = 100  # campaigns one stream follows (a page shows fewer)


@dataclass(frozen=True, slots=True)
class Snapshot:
    figures: list[dict[str, Any]]  # each campaign's progress
    engagement: Engagement | None  # the followed campaign's results, while they are followed


def _snapshot(
    runtime: Runtime,
    key_id: int,
    tenant_id: int,
    campaign_ids: Sequence[int],
    engagement_id: int | None,
    primary_until: float,
) -> Snapshot | None:
    """Progress of the tenant's campaigns among ``campaign_ids`` (and the results of
    ``engagement_id``, one of them); None once the key is revoked."""
    now = runtime.clock.now()
    with runtime.sessions() as session, session.begin():
        if actions.signed_in_key(session=session, key_id=key_id) is None:
            return None
        if runtime.replica is None or now.timestamp() < primary_until:
            return _read(session, now, tenant_id, campaign_ids, engagement_id)
    with runtime.read_session() as session:
        return _read(session, now, tenant_id, campaign_ids, engagement_id)


def _read(
    session: Session,
    now: datetime,
    tenant_id: int,
    campaign_ids: Sequence[int],
    engagement_id: int | None,
) -> Snapshot:
    found = list(
        session.scalars(
            select(Campaign).where(
                Campaign.tenant_id == tenant_id, Campaign.id.in_(list(campaign_ids))
            )
        )
    )
    progress = campaigns.campaign_progress(session=session, campaigns=found, now=now)
    figures = [_figures(c, progress[c.id]) for c in sorted(found, key=lambda c: c.id)]
    # Only a campaign found above: another tenant's id follows nothing.
    followed = next((c for c in found if c.id == engagement_id), None)
    if followed is None or not follows_engagement(followed, now):
        return Snapshot(figures, None)
    return Snapshot(figures, campaign_engagement(session=session, campaign=followed))


def _figures(campaign: Campaign, progress: campaigns.CampaignProgress) -> dict[str, Any]:
    eta: datetime | None = progress.estimated_completion
    return {
        "id": campaign.id,
        "status": campaign.status,
        "status_symbol": status_symbol(campaign.status),
        "final": campaign.status in FINAL,
        "recipients": progress.recipient_count,
        "sent": progress.sent,
        "failed": progress.failed,
        "suppressed": progress.suppressed,
        "cancelled": progress.cancelled,
        "pending": progress.pending,
        "until_window": progress.pending_until_window,
        "percentage": progress.progress_percentage,
        "percentage_text": percent(progress.progress_percentage),
        "rate": progress.send_rate_per_minute,
        "eta": when(eta) if eta is not None and campaign.status not in FINAL else "",
    }


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def progress_stream(
    request: Request,
    runtime: Runtime,
    key_id: int,
    tenant_id: int,
    campaign_ids: list[int],
    engagement_id: int | None = None,
) -> AsyncIterator[str]:
    yield f"retry: {RECONNECT_MS}\n\n"
    started = last_sent = time.monotonic()
    previous: list[dict[str, Any]] | None = None
    shown: Engagement | None = None
    while time.monotonic() - started < MAX_STREAM_SECONDS:
        if await request.is_disconnected():
            return
        snapshot = await asyncio.to_thread(
            _snapshot,
            runtime,
            key_id,
            tenant_id,
            campaign_ids,
            engagement_id,
            read_primary_until(request),
        )
        if snapshot is None:
            yield _event("signout", {})
            return
        if snapshot.figures != previous:
            yield _event("progress", snapshot.figures)
            previous, last_sent = snapshot.figures, time.monotonic()
        if snapshot.engagement is not None and snapshot.engagement != shown:
            # Rendered only when a figure moved: an unchanged campaign costs its reads alone.
            html = await asyncio.to_thread(render_engagement, snapshot.engagement)
            yield _event("engagement", {"id": engagement_id, "html": str(html)})
            shown, last_sent = snapshot.engagement, time.monotonic()
        if snapshot.engagement is None and all(f["final"] for f in snapshot.figures):
            yield _event("done", {})
            return
        if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
            yield ": still here\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(INTERVAL_SECONDS)


@router.get("/events/campaigns")
def campaign_events(
    request: Request,
    user: UserDep,
    runtime: RuntimeDep,
    ids: Annotated[str, Query(max_length=2000, pattern=r"^[0-9,]*$")] = "",
    engagement: Annotated[str, Query(max_length=18, pattern=r"^[0-9]*$")] = "",
) -> StreamingResponse:
    campaign_ids = [int(i) for i in ids.split(",") if i.isdigit() and len(i) <= 18][:MAX_IDS]
    engagement_id = int(engagement) if engagement else None
    if engagement_id is not None and engagement_id not in campaign_ids:
        campaign_ids.append(engagement_id)
    return StreamingResponse(
        progress_stream(
            request, runtime, user.principal.key_id, user.tenant_id, campaign_ids, engagement_id
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
