"""With the outbox transport: the tenant's sent messages, each shown as its recipient would see it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from tidings.api.deps import ReadSessionDep, RuntimeDep
from tidings.api.schemas import IdPath
from tidings.domain import MessageStatus
from tidings.errors import NotFound
from tidings.services import messages
from tidings.web import actions
from tidings.web.auth import UserDep, show
from tidings.web.inbox import outbox_dir, read_headers, read_message
from tidings.web.pages import DashboardRoute

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

PER_PAGE = 50


def _scheme(url: str) -> str:
    """The transport's kind only: its URL may hold a password."""
    return url.partition(":")[0]


@router.get("/inbox", response_class=HTMLResponse)
def inbox(
    request: Request,
    user: UserDep,
    session: ReadSessionDep,
    runtime: RuntimeDep,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{0,19}$")] = None,
) -> HTMLResponse:
    url = runtime.settings.resolved_transport_url()
    maildir = outbox_dir(url)
    if maildir is None:
        return show(request, user, "inbox.html", maildir=None, transport=_scheme(url), page=None)
    page = actions.outbox_messages(
        session=session, tenant_id=user.tenant_id, limit=PER_PAGE, cursor=cursor
    )
    subjects = {
        m.id: read_headers(maildir, m.provider_message_id or "").get("Subject", "")
        for m in page.items
    }
    return show(
        request,
        user,
        "inbox.html",
        maildir=maildir,
        transport="outbox",
        page=page,
        subjects=subjects,
    )


@router.get("/inbox/{message_id}", response_class=HTMLResponse)
def inbox_message(
    request: Request,
    message_id: IdPath,
    user: UserDep,
    session: ReadSessionDep,
    runtime: RuntimeDep,
) -> HTMLResponse:
    maildir = outbox_dir(runtime.settings.resolved_transport_url())
    message = messages.get_message(session=session, tenant_id=user.tenant_id, message_id=message_id)
    if maildir is None or message.status != MessageStatus.sent.value:
        raise NotFound("this message is not in the outbox")
    shown = read_message(maildir, message.provider_message_id or "")
    if shown is None:
        raise NotFound("the message's file is no longer in the outbox")
    return show(request, user, "inbox_message.html", message=message, shown=shown)
