"""``/v1/throttle``: the tenant's sending limits, overall and per recipient domain (admins change
them), and each domain's adaptive rate (the workers set it; everyone may read it)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from tidings.api.deps import AdminDep, KeyFirstRoute, NowDep, SessionDep, ViewerDep
from tidings.api.schemas import ERROR_RESPONSES, PageOut, StrictModel
from tidings.db.models import DomainThrottle, Throttle
from tidings.services import throttles
from tidings.services.pagination import DEFAULT_LIMIT, MAX_LIMIT
from tidings.services.throttles import DomainState

router = APIRouter(
    prefix="/v1/throttle", tags=["throttle"], responses=ERROR_RESPONSES, route_class=KeyFirstRoute
)

#: Messages per window: a positive whole number (JSON integer), or null for no limit.
Rate = Annotated[int | None, Field(strict=True, ge=1, le=throttles.MAX_RATE)]
DomainPath = Annotated[str, Path(min_length=1, max_length=throttles.MAX_DOMAIN_LENGTH)]


class ThrottleIn(StrictModel):
    """Fields left out keep their value; null removes that limit."""

    enabled: bool | None = Field(default=None, strict=True)
    per_second: Rate = None
    per_minute: Rate = None
    per_hour: Rate = None
    per_day: Rate = None


class ThrottleOut(BaseModel):
    enabled: bool
    per_second: int | None
    per_minute: int | None
    per_hour: int | None
    per_day: int | None
    updated_at: datetime

    @classmethod
    def of(cls, row: Throttle) -> ThrottleOut:
        return cls(
            enabled=bool(row.enabled),
            per_second=row.per_second,
            per_minute=row.per_minute,
            per_hour=row.per_hour,
            per_day=row.per_day,
            updated_at=row.updated_at,
        )


class DomainThrottleIn(StrictModel):
    per_minute: Rate = None
    per_hour: Rate = None


class DomainThrottleOut(BaseModel):
    domain: str
    per_minute: int | None
    per_hour: int | None

    @classmethod
    def of(cls, row: DomainThrottle) -> DomainThrottleOut:
        return cls(domain=row.domain, per_minute=row.per_minute, per_hour=row.per_hour)


class DomainStateOut(BaseModel):
    """A domain's configured limits (null: none) and its adaptive rate (null: not holding it back)."""

    domain: str
    per_minute: int | None
    per_hour: int | None
    adaptive_rate: float | None = Field(description="messages per second while slowed down")
    ceiling: float | None = Field(description="the configured limits as messages per second")
    state: str = Field(description="backing_off, probing or steady")
    last_slowdown_at: datetime | None
    paused_until: datetime | None = Field(description="a Retry-After still running")

    @classmethod
    def of(cls, item: DomainState) -> DomainStateOut:
        return cls(
            domain=item.domain,
            per_minute=item.per_minute,
            per_hour=item.per_hour,
            adaptive_rate=item.adaptive_rate,
            ceiling=item.ceiling,
            state=item.state,
            last_slowdown_at=item.last_slowdown_at,
            paused_until=item.paused_until,
        )


@router.get("")
def get_throttle(principal: ViewerDep, session: SessionDep, now: NowDep) -> ThrottleOut:
    return ThrottleOut.of(
        throttles.get_throttle(session=session, tenant_id=principal.tenant_id, now=now)
    )


@router.put("")
def update_throttle(
    body: ThrottleIn, principal: AdminDep, session: SessionDep, now: NowDep
) -> ThrottleOut:
    changes = body.model_dump(include=body.model_fields_set)
    if changes.get("enabled", False) is None:
        changes.pop("enabled")  # "enabled": null means "leave as it is"
    row = throttles.update_throttle(
        session=session, tenant_id=principal.tenant_id, changes=changes, now=now
    )
    return ThrottleOut.of(row)


@router.get("/domains")
def list_domains(
    principal: ViewerDep,
    session: SessionDep,
    now: NowDep,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(
        None,
        pattern=r"^(?:[0-9a-f]{2}){0,1020}$",
        description="next_cursor of the previous page",
    ),
) -> PageOut[DomainStateOut]:
    """Every domain with configured limits or an adaptive rate (a domain that told us to slow down)."""
    page = throttles.list_domains(
        session=session, tenant_id=principal.tenant_id, limit=limit, cursor=cursor, now=now
    )
    return PageOut(
        items=[DomainStateOut.of(item) for item in page.items], next_cursor=page.next_cursor
    )


@router.put("/domains/{domain}")
def set_domain_throttle(
    domain: DomainPath, body: DomainThrottleIn, principal: AdminDep, session: SessionDep
) -> DomainThrottleOut:
    row = throttles.set_domain_throttle(
        session=session,
        tenant_id=principal.tenant_id,
        domain=domain,
        per_minute=body.per_minute,
        per_hour=body.per_hour,
    )
    return DomainThrottleOut.of(row)


@router.delete("/domains/{domain}")
def delete_domain_throttle(
    domain: DomainPath, principal: AdminDep, session: SessionDep
) -> DomainThrottleOut:
    row = throttles.delete_domain_throttle(
        session=session, tenant_id=principal.tenant_id, domain=domain
    )
    return DomainThrottleOut.of(row)
