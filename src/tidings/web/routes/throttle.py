"""The throttle settings form: the tenant's limits per second, minute, hour and day, on or off; and
below it every recipient domain with limits or an adaptive rate, as ``GET /v1/throttle/domains``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session

from tidings.api.deps import NowDep, ReadSessionDep, SessionDep
from tidings.errors import InvalidInput
from tidings.services import throttles
from tidings.services.pagination import Page
from tidings.services.throttles import DomainState
from tidings.web import forms
from tidings.web.auth import AdminAction, UserDep, WebUser, show
from tidings.web.pages import DashboardRoute

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

LIMIT_LABELS = {
    "per_second": "Per second",
    "per_minute": "Per minute",
    "per_hour": "Per hour",
    "per_day": "Per day",
}

Limit = Annotated[str, Form(max_length=40)]
DOMAINS_PER_PAGE = 50
#: The next page of domains: the API's cursor (the last domain shown, hex-encoded).
DomainCursor = Annotated[str | None, Query(pattern=r"^(?:[0-9a-f]{2}){0,1020}$")]


def _page(
    request: Request,
    user: WebUser,
    values: dict[str, object],
    errors: dict[str, str],
    domains: Page[DomainState],
    status_code: int = 200,
) -> HTMLResponse:
    return show(
        request,
        user,
        "throttle.html",
        status_code=status_code,
        values=values,
        errors=errors,
        labels=LIMIT_LABELS,
        max_rate=throttles.MAX_RATE,
        domains=domains,
    )


def _domains(
    session: Session, tenant_id: int, now: datetime, cursor: str | None = None
) -> Page[DomainState]:
    return throttles.list_domains(
        session=session, tenant_id=tenant_id, limit=DOMAINS_PER_PAGE, cursor=cursor, now=now
    )


@router.get("/throttle", response_class=HTMLResponse)
def throttle_page(
    request: Request,
    user: UserDep,
    session: ReadSessionDep,
    now: NowDep,
    domains_cursor: DomainCursor = None,
) -> HTMLResponse:
    row = throttles.get_throttle(session=session, tenant_id=user.tenant_id, now=now)
    values: dict[str, object] = {"enabled": bool(row.enabled)}
    values.update({name: getattr(row, name) for name in throttles.TENANT_LIMITS})
    return _page(request, user, values, {}, _domains(session, user.tenant_id, now, domains_cursor))


@router.post("/throttle", response_class=HTMLResponse)
def save_throttle(
    request: Request,
    user: AdminAction,
    session: SessionDep,
    now: NowDep,
    enabled: Annotated[str, Form(max_length=10)] = "",
    per_second: Limit = "",
    per_minute: Limit = "",
    per_hour: Limit = "",
    per_day: Limit = "",
) -> Response:
    raw = {
        "per_second": per_second,
        "per_minute": per_minute,
        "per_hour": per_hour,
        "per_day": per_day,
    }
    errors = forms.FieldErrors()
    changes: dict[str, object] = {"enabled": enabled == "on"}
    for name, value in raw.items():
        text = value.strip()
        if not text:
            changes[name] = None
        elif not text.lstrip("-").isdigit():
            errors.add(name, "Enter a whole number, or leave it empty for no limit.")
        else:
            try:
                changes[name] = throttles.check_rate(int(text), field=name)
            except InvalidInput:
                errors.add(name, f"Enter a whole number from 1 to {throttles.MAX_RATE}.")
    if errors:
        values = {**raw, "enabled": enabled == "on"}
        domains = _domains(session, user.tenant_id, now)
        return _page(request, user, values, errors.by_field, domains, 422)
    throttles.update_throttle(session=session, tenant_id=user.tenant_id, changes=changes, now=now)
    return RedirectResponse("/throttle?done=saved", status_code=303)
