"""The template editor: create and change templates in the dashboard, with a live preview as one
chosen contact would get the mail (re-rendered as you type, after a pause), syntax errors shown at
their line, and the variables the template reads listed.

The preview renders the unsaved text through the same checks and render processes as a save, so
what it shows is what sending would do; a broken template is reported, never saved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session

from tidings.api.deps import NowDep, RuntimeDep, SessionDep
from tidings.api.schemas import IdPath
from tidings.db.models import Template
from tidings.errors import Conflict, InvalidInput, NotFound, TemplateSyntaxError
from tidings.rendering.variables import template_variables
from tidings.runtime import Runtime
from tidings.services import contacts, templates
from tidings.services.templates import MAX_BODY_BYTES, MAX_NAME_LENGTH, MAX_SUBJECT_BYTES
from tidings.web import forms
from tidings.web.auth import SenderAction, UserDep, ViewerAction, WebUser, show
from tidings.web.pages import DashboardRoute, render
from tidings.web.routes.campaigns import Cursor

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

TEMPLATES_PER_PAGE = 50
PREVIEW_CONTACTS = 50  # offered in "Preview as"
Subject = Annotated[str, Form(max_length=MAX_SUBJECT_BYTES)]
Body = Annotated[str, Form(max_length=MAX_BODY_BYTES)]
Category = Annotated[str, Form(max_length=100)]
#: Data the preview renders with: what the campaign form fills in, so its variables show.
SAMPLE_DATA = {"personal_message": "(your personal message)", "deadline": "(the deadline)"}


@dataclass
class TemplateForm:
    name: str = ""
    category: str = ""
    subject: str = ""
    html: str = ""
    text: str = ""

    @classmethod
    def of(cls, template: Template) -> TemplateForm:
        return cls(
            name=template.name,
            category=template.category or "",
            subject=template.subject,
            html=template.html or "",
            text=template.text or "",
        )


def posted_form(
    name: Annotated[str, Form(max_length=MAX_NAME_LENGTH + 50)] = "",
    category: Category = "",
    subject: Subject = "",
    html: Body = "",
    text: Body = "",
) -> TemplateForm:
    """The form as a browser sent it: a textarea's lines end in CRLF (HTML's form encoding); a
    template keeps the LF it would have had from the API."""
    return TemplateForm(
        name.strip(),
        category.strip(),
        subject,
        html.replace("\r\n", "\n"),
        text.replace("\r\n", "\n"),
    )


PostedForm = Annotated[TemplateForm, Depends(posted_form)]


def _problem(exc: InvalidInput) -> str:
    """The error as the editor shows it: where (the part and line) and what."""
    if isinstance(exc, TemplateSyntaxError) and exc.line is not None:
        return f"Line {exc.line}: {exc.message}"
    return exc.message


def _editor(
    request: Request,
    user: WebUser,
    session: Session,
    form: TemplateForm,
    *,
    template_id: int | None = None,
    errors: forms.FieldErrors | None = None,
) -> HTMLResponse:
    people = contacts.list_contacts(
        session=session, tenant_id=user.tenant_id, limit=PREVIEW_CONTACTS, cursor=None
    )
    return show(
        request,
        user,
        "templates/edit.html",
        status_code=422 if errors else 200,
        form=form,
        template_id=template_id,
        errors=(errors or forms.FieldErrors()).by_field,
        preview_contacts=people.items,
    )


@router.get("/templates", response_class=HTMLResponse)
def template_list(
    request: Request, user: UserDep, session: SessionDep, cursor: Cursor = None
) -> HTMLResponse:
    page = templates.list_templates(
        session=session, tenant_id=user.tenant_id, limit=TEMPLATES_PER_PAGE, cursor=cursor
    )
    return show(request, user, "templates/list.html", page=page)


@router.get("/templates/new", response_class=HTMLResponse)
def new_template(request: Request, user: UserDep, session: SessionDep) -> HTMLResponse:
    return _editor(request, user, session, TemplateForm())


@router.get("/templates/{template_id}", response_class=HTMLResponse)
def edit_template(
    request: Request, template_id: IdPath, user: UserDep, session: SessionDep
) -> HTMLResponse:
    template = templates.get_template(
        session=session, tenant_id=user.tenant_id, template_id=template_id
    )
    return _editor(request, user, session, TemplateForm.of(template), template_id=template.id)


@router.post("/templates/new", response_class=HTMLResponse)
def create(
    request: Request,
    user: SenderAction,
    session: SessionDep,
    now: NowDep,
    runtime: RuntimeDep,
    form: PostedForm,
) -> Response:
    return _save(request, user, session, runtime, form, now=now, template_id=None)


@router.post("/templates/preview", response_class=HTMLResponse)
def preview(
    request: Request,
    user: ViewerAction,
    session: SessionDep,
    runtime: RuntimeDep,
    form: PostedForm,
    preview_contact_id: Annotated[str, Form(max_length=20)] = "",
) -> HTMLResponse:
    """The editor's live part (htmx): the variables the text reads and the mail as the chosen
    contact would get it, or what is wrong with the text, at its line. A POST, because the text
    can be far larger than a URL; it changes nothing."""
    context: dict[str, Any] = {"rendered": None, "problem": None, "contact": None}
    context["variables"] = None
    chosen = forms.ids([preview_contact_id])
    try:
        if not chosen:
            raise InvalidInput("Add a contact first: the preview shows the mail as one gets it.")
        context["contact"] = contacts.get_contact(
            session=session, tenant_id=user.tenant_id, contact_id=chosen[0]
        )
        context["rendered"] = templates.preview_draft(
            session=session,
            renderer=runtime.renderer,
            tenant_id=user.tenant_id,
            subject=form.subject,
            html=form.html or None,
            text=form.text or None,
            category=form.category or None,
            contact_id=chosen[0],
            data=SAMPLE_DATA,
        )
        # After the check: it compiled within the render limits, so parsing it here is cheap.
        context["variables"] = template_variables(form.subject, form.html, form.text)
    except (InvalidInput, NotFound) as exc:
        where = f"{exc.field}: " if exc.field else ""
        context["problem"] = where + _problem(exc) if isinstance(exc, InvalidInput) else exc.message
        context["rendered"] = None
    return render(request, "templates/_preview.html", context)


@router.post("/templates/{template_id}", response_class=HTMLResponse)
def save(
    request: Request,
    template_id: IdPath,
    user: SenderAction,
    session: SessionDep,
    now: NowDep,
    runtime: RuntimeDep,
    form: PostedForm,
) -> Response:
    return _save(request, user, session, runtime, form, now=now, template_id=template_id)


def _save(
    request: Request,
    user: WebUser,
    session: Session,
    runtime: Runtime,
    form: TemplateForm,
    *,
    now: datetime,
    template_id: int | None,
) -> Response:
    fields = {**asdict(form), "category": form.category or None}
    try:
        if template_id is None:
            template = templates.create_template(
                session=session,
                renderer=runtime.renderer,
                tenant_id=user.tenant_id,
                now=now,
                **fields,
            )
        else:
            template = templates.update_template(
                session=session,
                renderer=runtime.renderer,
                tenant_id=user.tenant_id,
                template_id=template_id,
                now=now,
                **fields,
            )
    except (InvalidInput, Conflict) as exc:  # a syntax error, a body too large, a name taken
        errors = forms.FieldErrors()
        errors.add(
            exc.field or "form", _problem(exc) if isinstance(exc, InvalidInput) else exc.message
        )
        return _editor(request, user, session, form, template_id=template_id, errors=errors)
    return RedirectResponse(f"/templates/{template.id}?done=template-saved", status_code=303)


@router.post("/templates/{template_id}/delete")
def delete(template_id: IdPath, user: SenderAction, session: SessionDep) -> Response:
    templates.delete_template(session=session, tenant_id=user.tenant_id, template_id=template_id)
    return RedirectResponse("/templates?done=template-deleted", status_code=303)
