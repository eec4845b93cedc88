"""Contacts, lists (with the file import) and the suppression list."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from tidings.address_hash import address_key
from tidings.api.deps import NowDep, ReadSessionDep, RuntimeDep, SessionDep
from tidings.api.schemas import IdPath
from tidings.api.uploads import FormUploadDep
from tidings.domain import ContactStatus, SuppressionReason
from tidings.errors import InvalidInput
from tidings.services import contacts, imports, lists, suppressions
from tidings.services.contacts import MAX_QUERY_LENGTH
from tidings.services.imports import ImportFormat
from tidings.web.auth import SenderAction, UserDep, WebUser, show
from tidings.web.pages import DashboardRoute
from tidings.web.routes.contact import chosen_list, chosen_status

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

PER_PAGE = 50
LISTS_SHOWN = 500
UPLOAD_CHUNK_BYTES = 256 * 1024
Cursor = Annotated[str | None, Query(pattern=r"^[0-9]{0,19}$")]
Search = Annotated[str, Query(max_length=MAX_QUERY_LENGTH)]
#: File endings the import understands; anything else is read by its declared type.
FORMATS_BY_SUFFIX = {
    ".csv": ImportFormat.csv,
    ".txt": ImportFormat.csv,
    ".jsonl": ImportFormat.json_lines,
    ".ndjson": ImportFormat.json_lines,
}
FORMATS_BY_TYPE = {
    "text/csv": ImportFormat.csv,
    "application/x-ndjson": ImportFormat.json_lines,
    "application/jsonl": ImportFormat.json_lines,
}


@router.get("/contacts", response_class=HTMLResponse)
def contact_page(
    request: Request,
    user: UserDep,
    session: ReadSessionDep,
    q: Search = "",
    status: str = "",
    list_id: str = "",
    cursor: Cursor = None,
) -> HTMLResponse:
    """Another tenant's list in ``list_id`` is a 404, as in the API."""
    wanted = chosen_status(status)
    in_list = chosen_list(list_id)
    page = contacts.list_contacts(
        session=session,
        tenant_id=user.tenant_id,
        limit=PER_PAGE,
        cursor=cursor,
        status=wanted,
        list_id=in_list,
        q=q.strip() or None,
    )
    return show(
        request,
        user,
        "contacts.html",
        page=page,
        q=q,
        status=wanted.value if wanted else "",
        statuses=[s.value for s in ContactStatus],
        list_id=in_list,
        lists=lists.list_lists(
            session=session, tenant_id=user.tenant_id, limit=LISTS_SHOWN, cursor=None
        ).items,
    )


def _lists_page(
    request: Request,
    user: WebUser,
    session: Session,
    *,
    report: imports.ImportResult | None = None,
    report_list: str | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    page = lists.list_lists(
        session=session, tenant_id=user.tenant_id, limit=LISTS_SHOWN, cursor=None
    )
    counts = lists.member_counts(session=session, list_ids=[x.id for x in page.items])
    public_url = request.app.state.runtime.settings.public_url.rstrip("/")
    return show(
        request,
        user,
        "lists.html",
        status_code=status_code,
        lists=page.items,
        member_counts=counts,
        signup_base=f"{public_url}/s/",
        report=report,
        report_list=report_list,
        errors=errors or {},
    )


@router.get("/lists", response_class=HTMLResponse)
def list_page(request: Request, user: UserDep, session: ReadSessionDep) -> HTMLResponse:
    return _lists_page(request, user, session)


@router.post("/lists", response_class=HTMLResponse)
def create_list(
    request: Request,
    user: SenderAction,
    session: SessionDep,
    now: NowDep,
    name: Annotated[str, Form(max_length=400)] = "",
    description: Annotated[str, Form(max_length=5000)] = "",
) -> Response:
    try:
        with session.begin_nested():
            lists.create_list(
                session=session,
                tenant_id=user.tenant_id,
                name=name,
                description=description or None,
                now=now,
            )
    except InvalidInput as exc:
        return _lists_page(request, user, session, errors={"name": exc.message}, status_code=422)
    return RedirectResponse("/lists?done=list-created", status_code=303)


@router.post("/lists/{list_id}/signup", response_class=HTMLResponse)
def save_signup(
    list_id: IdPath,
    user: SenderAction,
    session: SessionDep,
    public: Annotated[str, Form(max_length=10)] = "",
    double_opt_in: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """The public sign-up form on or off, and whether its sign-ups wait for confirmation."""
    lists.update_list(
        session=session,
        tenant_id=user.tenant_id,
        list_id=list_id,
        changes={"public": public == "on", "double_opt_in": double_opt_in == "on"},
    )
    return RedirectResponse("/lists?done=signup-saved", status_code=303)


def _file_format(upload: UploadFile) -> ImportFormat:
    name = (upload.filename or "").lower()
    for suffix, file_format in FORMATS_BY_SUFFIX.items():
        if name.endswith(suffix):
            return file_format
    declared = (upload.content_type or "").split(";")[0].strip().lower()
    if declared in FORMATS_BY_TYPE:
        return FORMATS_BY_TYPE[declared]
    raise InvalidInput(
        "choose a .csv file (with a header line) or a .jsonl file (JSON Lines)", field="file"
    )


def _chunks(upload: UploadFile) -> Iterator[bytes]:
    while chunk := upload.file.read(UPLOAD_CHUNK_BYTES):
        yield chunk


@router.post("/lists/{list_id}/import", response_class=HTMLResponse)
def import_file(
    request: Request,
    list_id: IdPath,
    user: SenderAction,
    file: FormUploadDep,
    session: SessionDep,
    runtime: RuntimeDep,
    now: NowDep,
) -> HTMLResponse:
    """Imports the file into the list and shows the report (created, updated, skipped lines).

    The form is read once the session cookie is checked, and before the request's transaction
    begins (the order of the parameters is the order they are solved in); taking a
    ``FormUploadDep`` gives this route the import cap."""
    target = lists.get_list(session=session, tenant_id=user.tenant_id, list_id=list_id)
    try:
        file_format = _file_format(file)
        with session.begin_nested():  # a file that cannot be read changes nothing
            result = imports.import_contacts(
                session=session,
                tenant_id=user.tenant_id,
                list_id=target.id,
                chunks=_chunks(file),
                file_format=file_format,
                now=now,
                max_attributes_bytes=runtime.settings.max_attributes_bytes,
                address_key=address_key(runtime.secret_key),
            )
    except InvalidInput as exc:
        errors = {f"file-{list_id}": exc.message}
        return _lists_page(request, user, session, errors=errors, status_code=422)
    return _lists_page(request, user, session, report=result, report_list=target.name)


@router.get("/suppressions", response_class=HTMLResponse)
def suppression_page(
    request: Request,
    user: UserDep,
    session: ReadSessionDep,
    q: Search = "",
    reason: str = "",
    cursor: Cursor = None,
) -> HTMLResponse:
    wanted = SuppressionReason(reason) if reason in SuppressionReason.__members__ else None
    page = suppressions.list_suppressions(
        session=session,
        tenant_id=user.tenant_id,
        limit=PER_PAGE,
        cursor=cursor,
        reason=wanted,
        q=q.strip() or None,
    )
    return show(
        request,
        user,
        "suppressions.html",
        page=page,
        q=q,
        reason=wanted.value if wanted else "",
        reasons=[r.value for r in SuppressionReason],
    )
