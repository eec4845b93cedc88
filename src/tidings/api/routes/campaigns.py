"""``/v1/campaigns``: bulk sends to lists and hand-picked contacts, their lifecycle and progress."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy.orm import Session

from tidings.api.deps import (
    KeyFirstRoute,
    NowDep,
    ReadSessionDep,
    RuntimeDep,
    SenderDep,
    SessionDep,
    ViewerDep,
)
from tidings.api.schemas import (
    ERROR_RESPONSES,
    FeaturesFields,
    FeaturesOut,
    Id,
    IdPath,
    PageOut,
    SendWindowIn,
    SendWindowOut,
    StrictModel,
    partial_model,
    refuse_nulls,
    send_window_of,
)
from tidings.db.models import Campaign, Message
from tidings.domain import (
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    MIN_PRIORITY,
    CampaignStatus,
    MessageStatus,
)
from tidings.services import campaign_results, campaign_tests, campaigns, domains
from tidings.services import campaign_stats as stats
from tidings.services.campaigns import CampaignProgress
from tidings.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(
    prefix="/v1/campaigns", tags=["campaigns"], responses=ERROR_RESPONSES, route_class=KeyFirstRoute
)

#: Campaigns per page: each item carries its counts, so pages stay shorter than elsewhere.
MAX_CAMPAIGN_PAGE = 100


class CampaignIn(FeaturesFields):
    name: str = Field(min_length=1, max_length=campaigns.MAX_NAME_LENGTH)
    template_id: Id
    list_ids: list[Id] = Field(default_factory=list, max_length=campaigns.MAX_LIST_IDS)
    contact_ids: list[Id] = Field(default_factory=list, max_length=campaigns.MAX_CONTACT_IDS)
    segment_ids: list[Id] = Field(
        default_factory=list,
        max_length=campaigns.MAX_SEGMENT_IDS,
        description="Segments whose contacts it goes to, as they match when it starts; a contact "
        "in several segments, lists or contact_ids gets one message.",
    )
    data: dict[str, Any] = Field(
        default_factory=dict, description="Template data, e.g. a personal message or a deadline."
    )
    priority: int = Field(DEFAULT_PRIORITY, ge=MIN_PRIORITY, le=MAX_PRIORITY, strict=True)
    scheduled_at: AwareDatetime | None = Field(
        None, description="Start at this time instead of at once (when started)."
    )
    category: str | None = Field(None, min_length=1, max_length=64)
    send_window: SendWindowIn | None = Field(
        None,
        description="Local hours its messages may start in, e.g. office hours in each "
        "recipient's own time zone ('contact'); outside them they wait for the next opening.",
    )
    track_opens: bool | None = Field(
        None,
        strict=True,
        description="Track opens (a pixel in the HTML); null: the tenant's setting.",
    )
    track_clicks: bool | None = Field(
        None,
        strict=True,
        description="Track clicks (links through /c/); null: the tenant's setting.",
    )


if TYPE_CHECKING:
    CampaignPatch = CampaignIn
else:  # every field of CampaignIn, optional: PATCH checks what create checks
    CampaignPatch = partial_model(CampaignIn)


class CampaignOut(FeaturesOut):
    id: int
    name: str
    template_id: int
    list_ids: list[int]
    contact_ids: list[int]
    segment_ids: list[int]
    data: dict[str, Any]
    category: str | None
    from_address: str | None
    priority: int
    scheduled_at: datetime | None
    send_window: SendWindowOut | None
    track_opens: bool | None = Field(description="null: the tenant's setting.")
    track_clicks: bool | None = Field(description="null: the tenant's setting.")
    status: CampaignStatus
    status_reason: str | None
    recipient_count: int
    sent: int
    failed: int = Field(description="Failed and dead messages.")
    dead: int = Field(description="Of the failed, those retried until their time to live ran out.")
    suppressed: int
    cancelled: int
    pending: int = Field(description="Queued, paused or being sent.")
    pending_until_window: int = Field(
        description="Of the pending, those queued for a sending window that is closed now."
    )
    progress_percentage: float
    send_rate_per_minute: int = Field(description="Messages sent in the last 60 seconds.")
    estimated_completion: datetime | None = Field(
        description="When the last message will have gone: simulated against the throttle, the "
        "sending windows and the pace measured; the completion time once completed; null when "
        "it cannot be told (not running, or no throttle and nothing sent in the last minute)."
    )
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None

    @classmethod
    def of(cls, campaign: Campaign, progress: CampaignProgress) -> CampaignOut:
        return cls(
            id=campaign.id,
            name=campaign.name,
            template_id=campaign.template_id,
            list_ids=list(campaign.list_ids),
            contact_ids=list(campaign.contact_ids),
            segment_ids=list(campaign.segment_ids or []),
            data=dict(campaign.data),
            category=campaign.category,
            from_address=campaign.from_address,
            **FeaturesOut.features_of(campaign.features),
            priority=campaign.priority,
            scheduled_at=campaign.scheduled_at,
            send_window=SendWindowOut.of(campaign.send_window),
            track_opens=campaign.track_opens,
            track_clicks=campaign.track_clicks,
            status=CampaignStatus(campaign.status),
            status_reason=campaign.status_reason,
            **asdict(progress),
            created_at=campaign.created_at,
            started_at=campaign.started_at,
            completed_at=campaign.completed_at,
        )


class AcceptedOut(BaseModel):
    id: int
    status: CampaignStatus
    recipient_count: int


class RetriedOut(BaseModel):
    id: int
    status: CampaignStatus
    requeued: int = Field(description="Failed and dead messages put back in the queue.")


class FailedRecipientOut(BaseModel):
    message_id: int
    contact_id: int | None
    email: str
    status: str
    attempts: int
    reason: str | None = Field(description="The last error: the receiving server's reply.")

    @classmethod
    def of(cls, message: Message) -> FailedRecipientOut:
        return cls(
            message_id=message.id,
            contact_id=message.contact_id,
            email=message.to_address,
            status=message.status,
            attempts=message.attempts,
            reason=message.last_error,
        )


class TestSendIn(StrictModel):
    to: list[str] = Field(
        min_length=1,
        max_length=campaign_tests.MAX_TEST_RECIPIENTS,
        description="Where the test goes: your own addresses.",
    )
    contact_id: Id | None = Field(
        None,
        description="Render it as this contact would get it (their data); else for the address.",
    )


class TestMessageOut(BaseModel):
    id: int
    to: str
    status: str


class TestSendOut(BaseModel):
    campaign_id: int
    messages: list[TestMessageOut] = Field(
        description="One per address: transactional messages, not counted in the campaign."
    )


def _out(session: Session, campaign: Campaign, now: datetime) -> CampaignOut:
    progress = campaigns.campaign_progress(session=session, campaigns=[campaign], now=now)
    return CampaignOut.of(campaign, progress[campaign.id])


@router.post("", status_code=201)
def create_campaign(
    body: CampaignIn, principal: SenderDep, session: SessionDep, now: NowDep, runtime: RuntimeDep
) -> CampaignOut:
    draft = campaigns.CampaignDraft(
        **body.model_dump(exclude={"send_window", *FeaturesFields.FEATURE_FIELDS}),
        from_address=body.sender(),
        features=body.features(),
        send_window=send_window_of(body.send_window),
    )
    if runtime.settings.require_verified_from:
        domains.require_verified_sender(
            session=session,
            tenant_id=principal.tenant_id,
            from_address=body.from_address or runtime.settings.from_address,
            field="from_address",
        )
    campaign = campaigns.create_campaign(
        session=session,
        tenant_id=principal.tenant_id,
        draft=draft,
        now=now,
        max_attachment_bytes=runtime.settings.max_attachment_bytes,
    )
    return _out(session, campaign, now)


@router.patch("/{campaign_id}")
def update_campaign(
    campaign_id: IdPath,
    body: CampaignPatch,
    principal: SenderDep,
    session: SessionDep,
    now: NowDep,
    runtime: RuntimeDep,
) -> CampaignOut:
    """Change a draft or scheduled campaign (409 for any other status); fields left out keep
    their value, null clears a nullable one. Clearing a scheduled campaign's ``scheduled_at``
    makes it a draft again. ``attachments`` given replaces the campaign's files."""
    changes = body.model_dump(exclude_unset=True)
    refuse_nulls(changes, CampaignIn)
    if "send_window" in changes:
        changes["send_window"] = send_window_of(body.send_window)
    if changes.keys() & {"from_", "from_address"}:
        changes["from_address"] = body.sender()
    parts = changes.keys() & campaigns.FEATURE_PARTS
    for name in (*parts, "from_"):
        changes.pop(name, None)
    campaign = campaigns.update_campaign(
        session=session,
        tenant_id=principal.tenant_id,
        campaign_id=campaign_id,
        changes=changes,
        now=now,
        features=body.features(),
        feature_parts=parts,
        max_attachment_bytes=runtime.settings.max_attachment_bytes,
    )
    return _out(session, campaign, now)


@router.delete("/{campaign_id}", status_code=204)
def delete_campaign(
    campaign_id: IdPath, principal: SenderDep, session: SessionDep, now: NowDep
) -> Response:
    """Delete a draft (409 for any other status: cancel it instead)."""
    campaigns.delete_campaign(
        session=session, tenant_id=principal.tenant_id, campaign_id=campaign_id, now=now
    )
    return Response(status_code=204)


@router.get("")
def list_campaigns(
    principal: ViewerDep,
    session: ReadSessionDep,
    now: NowDep,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=min(MAX_LIMIT, MAX_CAMPAIGN_PAGE)),
    cursor: str | None = Query(
        None, pattern=r"^[0-9]{0,19}$", description="next_cursor of the previous page"
    ),
) -> PageOut[CampaignOut]:
    page = campaigns.list_campaigns(
        session=session, tenant_id=principal.tenant_id, limit=limit, cursor=cursor
    )
    progress = campaigns.campaign_progress(session=session, campaigns=page.items, now=now)
    return PageOut(
        items=[CampaignOut.of(c, progress[c.id]) for c in page.items],
        next_cursor=page.next_cursor,
    )


@router.get("/{campaign_id}")
def get_campaign(
    campaign_id: IdPath, principal: ViewerDep, session: ReadSessionDep, now: NowDep
) -> CampaignOut:
    campaign = campaigns.get_campaign(
        session=session, tenant_id=principal.tenant_id, campaign_id=campaign_id
    )
    return _out(session, campaign, now)


@router.post("/{campaign_id}/start", status_code=202)
def start_campaign(
    campaign_id: IdPath,
    principal: SenderDep,
    session: SessionDep,
    now: NowDep,
    runtime: RuntimeDep,
) -> AcceptedOut:
    if runtime.settings.require_verified_from:  # its domain may have been deleted since
        draft = campaigns.get_campaign(
            session=session, tenant_id=principal.tenant_id, campaign_id=campaign_id
        )
        domains.require_verified_sender(
            session=session,
            tenant_id=principal.tenant_id,
            from_address=draft.from_address or runtime.settings.from_address,
            field="from_address",
        )
    campaign = campaigns.start_campaign(
        session=session,
        tenant_id=principal.tenant_id,
        campaign_id=campaign_id,
        now=now,
        ttl_seconds=runtime.settings.message_ttl_seconds,
    )
    return AcceptedOut(
        id=campaign.id,
        status=CampaignStatus(campaign.status),
        recipient_count=campaign.recipient_count,
    )


@router.post("/{campaign_id}/pause")
def pause_campaign(
    campaign_id: IdPath, principal: SenderDep, session: SessionDep, now: NowDep
) -> CampaignOut:
    campaign = campaigns.pause_campaign(
        session=session, tenant_id=principal.tenant_id, campaign_id=campaign_id, now=now
    )
    return _out(session, campaign, now)


@router.post("/{campaign_id}/resume")
def resume_campaign(
    campaign_id: IdPath, principal: SenderDep, session: SessionDep, now: NowDep
) -> CampaignOut:
    campaign = campaigns.resume_campaign(
        session=session, tenant_id=principal.tenant_id, campaign_id=campaign_id, now=now
    )
    return _out(session, campaign, now)


@router.post("/{campaign_id}/cancel")
def cancel_campaign(
    campaign_id: IdPath, principal: SenderDep, session: SessionDep, now: NowDep
) -> CampaignOut:
    campaign = campaigns.cancel_campaign(
        session=session, tenant_id=principal.tenant_id, campaign_id=campaign_id, now=now
    )
    return _out(session, campaign, now)


@router.post("/{campaign_id}/retry-failed", status_code=202)
def retry_failed(
    campaign_id: IdPath,
    principal: SenderDep,
    session: SessionDep,
    now: NowDep,
    runtime: RuntimeDep,
) -> RetriedOut:
    retried = campaigns.retry_failed(
        session=session,
        tenant_id=principal.tenant_id,
        campaign_id=campaign_id,
        now=now,
        ttl_seconds=runtime.settings.message_ttl_seconds,
    )
    return RetriedOut(
        id=retried.campaign.id,
        status=CampaignStatus(retried.campaign.status),
        requeued=retried.requeued,
    )


@router.post("/{campaign_id}/test", status_code=202)
def send_test(
    campaign_id: IdPath,
    body: TestSendIn,
    principal: SenderDep,
    session: SessionDep,
    now: NowDep,
    runtime: RuntimeDep,
) -> TestSendOut:
    """The campaign as one contact would get it, subject prefixed [TEST], with an unsubscribe
    link that only shows a preview page; its progress does not change."""
    campaign, queued = campaign_tests.send_campaign_test(
        session=session,
        tenant_id=principal.tenant_id,
        campaign_id=campaign_id,
        to=body.to,
        contact_id=body.contact_id,
        renderer=runtime.renderer,
        ttl_seconds=runtime.settings.message_ttl_seconds,
        now=now,
    )
    return TestSendOut(
        campaign_id=campaign.id,
        messages=[TestMessageOut(id=m.id, to=m.to_address, status=m.status) for m in queued],
    )


@router.get("/{campaign_id}/failed-recipients")
def failed_recipients(
    campaign_id: IdPath,
    principal: ViewerDep,
    session: ReadSessionDep,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(
        None, pattern=r"^[0-9]{0,19}$", description="next_cursor of the previous page"
    ),
) -> PageOut[FailedRecipientOut]:
    page = campaigns.list_failed_recipients(
        session=session,
        tenant_id=principal.tenant_id,
        campaign_id=campaign_id,
        limit=limit,
        cursor=cursor,
    )
    return PageOut(
        items=[FailedRecipientOut.of(m) for m in page.items], next_cursor=page.next_cursor
    )


class LinkStatsOut(BaseModel):
    url: str
    clicks_unique: int = Field(description="Messages in which a person clicked this link.")
    clicks_total: int = Field(description="People's clicks, repeats included.")
    clicks_machine: int = Field(description="Clicks classified as a scanner's.")


class TimelinePointOut(BaseModel):
    at: datetime = Field(description="Start of the interval (UTC).")
    opens: int
    clicks: int
    opens_machine: int
    clicks_machine: int


class StatsOut(BaseModel):
    recipient_count: int
    sent: int = Field(
        description="Accepted by the receiving server or provider, not bounced since."
    )
    delivered: int = Field(
        description="Reached the recipient's server and not bounced since: the provider's "
        "confirmation (Resend), or the receiving server's 250 with SMTP, which gives no other. "
        "The rates are taken against it."
    )
    awaiting_confirmation: int = Field(
        description="Accepted by a provider that confirms deliveries, not confirmed or bounced yet."
    )
    bounced_hard: int = Field(
        description="Refused for good: SMTP 5xx at RCPT/DATA, a 5.x.x report, Resend Permanent."
    )
    bounced_soft: int = Field(
        description="Refused for now and not accepted since: SMTP 4xx at RCPT/DATA, a 4.x.x "
        "report, Resend Transient/Undetermined."
    )
    complaints: int = Field(description="Messages reported as spam.")
    unsubscribes: int = Field(description="Through a link in this campaign's mail.")
    opens_unique: int = Field(description="Messages a person opened (machines excluded).")
    opens_total: int = Field(description="People's opens, repeats included.")
    opens_machine: int = Field(
        description="Opens by privacy proxies (Apple MPP), scanners and prefetchers."
    )
    clicks_unique: int = Field(description="Messages in which a person clicked.")
    clicks_total: int
    clicks_machine: int = Field(description="Clicks by link scanners (and the honeypot link).")
    open_rate: float = Field(description="opens_unique / delivered.")
    click_rate: float = Field(description="clicks_unique / delivered.")
    click_to_open_rate: float = Field(description="clicks_unique / opens_unique.")
    bounce_rate: float = Field(
        description="(bounced_hard + bounced_soft) / (delivered + bounced_hard + bounced_soft)."
    )
    complaint_rate: float
    unsubscribe_rate: float
    links: list[LinkStatsOut] = Field(description="Tracked links, most clicked by people first.")
    interval_seconds: int = Field(description="The timeline's interval, chosen by its span.")
    timeline: list[TimelinePointOut]


@router.get("/{campaign_id}/stats")
def campaign_stats(campaign_id: IdPath, principal: ViewerDep, session: ReadSessionDep) -> StatsOut:
    """How the campaign did: read from summaries kept as it runs, never by counting its rows."""
    found = stats.campaign_stats(
        session=session, tenant_id=principal.tenant_id, campaign_id=campaign_id
    )
    return StatsOut.model_validate(asdict(found))


@router.get(
    "/{campaign_id}/recipients",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Every matching recipient, streamed (see services/campaign_results.py)",
            "content": {"text/csv": {}, "application/json": {}},
        }
    },
)
def campaign_recipients(
    campaign_id: IdPath,
    principal: ViewerDep,
    session: SessionDep,
    runtime: RuntimeDep,
    file_format: campaign_results.ResultsFormat = Query(
        campaign_results.ResultsFormat.csv, alias="format"
    ),
    status: MessageStatus | None = Query(None, description="Only messages in this status"),
    opened: bool | None = Query(None, description="Only those a person opened (true) or not"),
    clicked: bool | None = Query(None, description="Only those a person clicked in (true) or not"),
) -> StreamingResponse:
    """Per-recipient results: address, status, last event, a person's first open and first click
    (machines' never count). CSV (formula-looking cells prefixed with ') or a JSON array, read in
    keyset pages while it streams: memory stays flat at any size."""
    selection = campaign_results.results_selection(
        session=session,
        tenant_id=principal.tenant_id,
        campaign_id=campaign_id,
        status=status,
        opened=opened,
        clicked=clicked,
    )
    return StreamingResponse(
        campaign_results.export_results(
            runtime.sessions, selection=selection, file_format=file_format
        ),
        media_type=campaign_results.MEDIA_TYPES[file_format],
        headers=campaign_results.download_headers(selection, file_format),
    )
