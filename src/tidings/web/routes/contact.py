"""One contact in the dashboard: its page (lists, category preferences, recent messages), the GDPR
access download and erasure; and the contacts export of the list page.

Each calls the service the API calls for the same thing (``access_document``, ``erase_contact``,
``set_contact_choices``, ``export_contacts``), with the API's roles: any key reads and downloads,
a sender key sets preferences, only an admin key erases, and only after typing the address.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from sqlalchemy.orm import Session

from tidings.address_hash import address_key
from tidings.api.deps import NowDep, ReadSessionDep, RuntimeDep, SessionDep
from tidings.api.routes.contacts import access_document
from tidings.api.schemas import IdPath
from tidings.db.models import Contact
from tidings.domain import ContactStatus
from tidings.errors import InvalidInput, PermissionDenied
from tidings.services import contacts, erasure, exports, lists, messages, preferences
from tidings.web.auth import AdminAction, SenderAction, UserDep, WebUser, show
from tidings.web.pages import DashboardRoute

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

RECENT_MESSAGES = 20  # shown on the page; the GDPR download has them all
MAX_CATEGORIES = 200  # ticked in one form, as PUT /v1/contacts/{id}/preferences allows
CategoryNames = Annotated[list[str], Form(max_length=MAX_CATEGORIES)]


def chosen_status(value: str) -> ContactStatus | None:
    """The page's status filter; anything else (a stale link, an empty choice) is no filter."""
    return ContactStatus(value) if value in ContactStatus.__members__ else None


def chosen_list(value: str) -> int | None:
    return int(value) if value.isdigit() and 0 < len(value) < 19 else None


@router.get("/contacts/export")
def export_contacts(
    user: UserDep,
    session: ReadSessionDep,
    runtime: RuntimeDep,
    status: str = "",
    list_id: str = "",
) -> StreamingResponse:
    """The CSV of ``GET /v1/contacts/export`` with the page's filters, streamed page by page.

    Another tenant's list is a 404 before the first byte (``export_filter`` checks it)."""
    where = exports.export_filter(
        session=session,
        tenant_id=user.tenant_id,
        list_id=chosen_list(list_id),
        status=chosen_status(status),
    )
    body = exports.export_contacts(
        runtime.sessions,
        selection=where,
        file_format=exports.ExportFormat.csv,
        tenant_id=user.tenant_id,
    )
    return StreamingResponse(
        body,
        media_type=exports.MEDIA_TYPES[exports.ExportFormat.csv],
        headers={
            "Content-Disposition": 'attachment; filename="contacts.csv"',
            "Cache-Control": "no-store",
        },
    )


def _contact_page(
    request: Request,
    user: WebUser,
    session: Session,
    contact_id: int,
    *,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    contact = contacts.get_contact(session=session, tenant_id=user.tenant_id, contact_id=contact_id)
    recent = messages.list_messages(
        session=session,
        tenant_id=user.tenant_id,
        contact_id=contact.id,
        limit=RECENT_MESSAGES,
        cursor=None,
    )
    return show(
        request,
        user,
        "contact.html",
        status_code=status_code,
        contact=contact,
        memberships=lists.memberships_of(
            session=session, tenant_id=user.tenant_id, contact_id=contact.id
        ),
        choices=preferences.contact_choices(
            session=session, tenant_id=user.tenant_id, contact_id=contact.id
        ),
        recent=recent.items,
        more_messages=recent.next_cursor is not None,
        errors=errors or {},
    )


@router.get("/contacts/{contact_id}", response_class=HTMLResponse)
def contact_page(
    request: Request, contact_id: IdPath, user: UserDep, session: ReadSessionDep
) -> HTMLResponse:
    return _contact_page(request, user, session, contact_id)


@router.post("/contacts/{contact_id}/preferences", response_class=HTMLResponse)
def save_preferences(
    request: Request,
    contact_id: IdPath,
    user: SenderAction,
    session: SessionDep,
    now: NowDep,
    shown: CategoryNames = [],  # noqa: B006 - FastAPI copies defaults
    category: CategoryNames = [],  # noqa: B006
) -> Response:
    """The form's boxes: every category it showed is set to ticked or not, with the API's checks
    (a name that is not one of the tenant's categories is refused, nothing is saved)."""
    ticked = set(category)
    choices = {name: name in ticked for name in [*shown, *sorted(ticked - set(shown))]}
    try:
        with session.begin_nested():
            preferences.set_contact_choices(
                session=session,
                tenant_id=user.tenant_id,
                contact_id=contact_id,
                choices=choices,
                now=now,
            )
    except InvalidInput as exc:
        return _contact_page(
            request,
            user,
            session,
            contact_id,
            errors={"preferences": exc.message},
            status_code=422,
        )
    return RedirectResponse(f"/contacts/{contact_id}?done=preferences-saved", status_code=303)


@router.get("/contacts/{contact_id}/data")
def download_data(contact_id: IdPath, user: UserDep, session: ReadSessionDep) -> Response:
    """The GDPR access document as a JSON file, with every message (not only the first page)."""
    document = access_document(
        session=session, tenant_id=user.tenant_id, contact_id=contact_id, every_page=True
    )
    return Response(
        document.model_dump_json(indent=2),
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="contact-{contact_id}-data.json"',
            "Cache-Control": "no-store",
        },
    )


def _erase_page(
    request: Request,
    user: WebUser,
    contact: Contact,
    *,
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return show(
        request,
        user,
        "contact_erase.html",
        status_code=status_code,
        contact=contact,
        error=error,
    )


@router.get("/contacts/{contact_id}/erase", response_class=HTMLResponse)
def confirm_erasure(
    request: Request, contact_id: IdPath, user: UserDep, session: ReadSessionDep
) -> HTMLResponse:
    """The confirmation step: what erasure does, and a box for the address. Admins only, as the
    erasure itself; the contact is looked up first, so another tenant's is a 404 for everyone."""
    contact = contacts.get_contact(session=session, tenant_id=user.tenant_id, contact_id=contact_id)
    if not user.can("admin"):
        raise PermissionDenied(
            f"your key ({user.key_name}) is a {user.role.value} key; erasing needs admin"
        )
    return _erase_page(request, user, contact)


@router.post("/contacts/{contact_id}/erase", response_class=HTMLResponse)
def erase_contact(
    request: Request,
    contact_id: IdPath,
    user: AdminAction,
    session: SessionDep,
    runtime: RuntimeDep,
    now: NowDep,
    confirm_email: Annotated[str, Form(max_length=400)] = "",
) -> Response:
    """Erases only when the typed address is the contact's: a click alone, or a form replayed
    for another contact, erases nothing."""
    contact = contacts.get_contact(session=session, tenant_id=user.tenant_id, contact_id=contact_id)
    if confirm_email.strip().lower() != contact.email.lower():
        return _erase_page(
            request,
            user,
            contact,
            error="Type the contact's address exactly to confirm the erasure.",
            status_code=422,
        )
    erasure.erase_contact(
        session=session,
        tenant_id=user.tenant_id,
        contact_id=contact_id,
        address_key=address_key(runtime.secret_key),
        now=now,
    )
    return RedirectResponse("/contacts?done=contact-erased", status_code=303)
