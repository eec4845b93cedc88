"""``/v1/settings``: the tenant's settings (its time zone, open and click tracking, its VERP
bounce domain); admins change
them, every key reads them."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tidings.api.deps import AdminDep, KeyFirstRoute, NowDep, SessionDep, ViewerDep
from tidings.api.schemas import ERROR_RESPONSES, StrictModel
from tidings.db.models import TenantSettings
from tidings.services import tenant_settings

router = APIRouter(
    prefix="/v1/settings", tags=["settings"], responses=ERROR_RESPONSES, route_class=KeyFirstRoute
)


class SettingsIn(StrictModel):
    """Fields left out keep their value."""

    timezone: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="IANA time zone, e.g. Europe/Berlin: sending windows in 'contact' time fall "
        "back to it for contacts without one, and the dashboard shows times in it.",
    )
    track_opens: bool | None = Field(
        None,
        strict=True,
        description="Add a tracking pixel to the HTML of this tenant's mail (off by default; a "
        "campaign or message may say otherwise).",
    )
    track_clicks: bool | None = Field(
        None,
        strict=True,
        description="Send the http(s) links of this tenant's mail through /c/ to count clicks "
        "(off by default; a campaign or message may say otherwise).",
    )
    bounce_domain: str | None = Field(
        None,
        max_length=253,
        description="VERP: mail goes out with the envelope sender (SMTP MAIL FROM) "
        "bounces+<token>@<bounce_domain>, so a bounce names its message; point the domain's MX "
        "at the mailbox `tidings bounces` reads. null: the From address.",
    )


class SettingsOut(BaseModel):
    timezone: str = Field(description="IANA time zone; UTC unless set.")
    track_opens: bool = Field(
        description="Opens are tracked unless a campaign or message says not."
    )
    track_clicks: bool = Field(
        description="Clicks are tracked unless a campaign or message says not."
    )
    bounce_domain: str | None = Field(description="VERP return-path domain; null when unset.")

    @classmethod
    def of(cls, row: TenantSettings) -> SettingsOut:
        return cls(
            timezone=row.timezone,
            track_opens=bool(row.track_opens),
            track_clicks=bool(row.track_clicks),
            bounce_domain=row.bounce_domain,
        )


@router.get("")
def get_settings(principal: ViewerDep, session: SessionDep, now: NowDep) -> SettingsOut:
    return SettingsOut.of(
        tenant_settings.get_settings(session=session, tenant_id=principal.tenant_id, now=now)
    )


@router.put("")
def update_settings(
    body: SettingsIn, principal: AdminDep, session: SessionDep, now: NowDep
) -> SettingsOut:
    row = tenant_settings.update_settings(
        session=session,
        tenant_id=principal.tenant_id,
        changes=body.model_dump(include=body.model_fields_set),
        now=now,
    )
    return SettingsOut.of(row)
