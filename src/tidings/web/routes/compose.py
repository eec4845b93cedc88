"""The campaign form, to create a campaign or change a draft or scheduled one: a template with a
live preview, recipients by list and by ticking contacts in a searchable table, the personal
message and deadline, start now, schedule (in the tenant's time zone) or save a draft, and an
optional sending window.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session

from tidings.api.deps import NowDep, RuntimeDep, SessionDep
from tidings.api.schemas import IdPath
from tidings.db.models import Campaign
from tidings.domain import CampaignStatus
from tidings.errors import Conflict, InvalidInput, NotFound, RenderError
from tidings.scheduling.windows import (
    CONTACT,
    DAY_NAMES,
    SendWindow,
    parse_send_window,
    time_zone_names,
    window_from_json,
    zone,
)
from tidings.services import campaigns, contacts, lists, segments, templates, tenant_settings
from tidings.services.contacts import MAX_QUERY_LENGTH
from tidings.web import forms, segment_builder
from tidings.web.auth import SenderAction, UserDep, WebUser, show
from tidings.web.pages import DashboardRoute, render

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)

CONTACTS_SHOWN = 50  # rows of the searchable table; a search narrows it down
PICKER_LIMIT = 500  # templates and lists offered in the form
WHEN_CHOICES = ("now", "schedule", "draft")
BUILDER_ROWS = 3  # empty rows the form starts with


@dataclass
class CampaignForm:
    """What the form holds, kept when it comes back with errors."""

    name: str = ""
    template_id: int | None = None
    list_ids: list[int] = field(default_factory=list)
    contact_ids: list[int] = field(default_factory=list)
    segment_ids: list[int] = field(default_factory=list)
    # The segment builder: its rows, how they combine, the name a built segment is saved under.
    seg_rows: list[segment_builder.Row] = field(default_factory=list)
    seg_match: str = "all"
    seg_name: str = ""
    personal_message: str = ""
    deadline: str = ""
    when: str = "now"
    scheduled_at: str = ""  # datetime-local, in the tenant's time zone
    preview_contact_id: int | None = None
    # The sending window: no hours, no window.
    window_start: str = ""
    window_end: str = ""
    window_days: list[str] = field(default_factory=lambda: list(DAY_NAMES))
    window_timezone: str = CONTACT


#: Form fields of the window, by the field a window's error names.
WINDOW_FIELDS = {
    "send_window.start": "window_start",
    "send_window.end": "window_end",
    "send_window.days": "window_days",
    "send_window.timezone": "window_timezone",
}
WINDOW_MESSAGES = {
    "window_start": "Enter when sending may start, such as 09:00.",
    "window_end": "Enter when sending stops, such as 17:00 (not the same as the start).",
    "window_days": "Tick at least one day.",
    "window_timezone": "Choose a time zone from the list.",
}


def _contact_rows(session: Session, tenant_id: int, q: str, selected: list[int]) -> dict[str, Any]:
    """The table's rows (matches of ``q``) and the ticked contacts that the search hides."""
    page = contacts.list_contacts(
        session=session,
        tenant_id=tenant_id,
        limit=CONTACTS_SHOWN,
        cursor=None,
        q=q[:MAX_QUERY_LENGTH] or None,
    )
    shown = {c.id for c in page.items}
    return {
        "rows": page.items,
        "more": page.next_cursor is not None,
        "q": q,
        "selected": set(selected),
        "hidden_selected": [i for i in selected if i not in shown],
    }


def _form_page(
    request: Request,
    user: WebUser,
    session: Session,
    form: CampaignForm,
    errors: forms.FieldErrors | None = None,
    editing: int | None = None,
) -> HTMLResponse:
    """The form, empty or as given; ``editing``: the id of the campaign it changes."""
    template_page = templates.list_templates(
        session=session, tenant_id=user.tenant_id, limit=PICKER_LIMIT, cursor=None
    )
    list_page = lists.list_lists(
        session=session, tenant_id=user.tenant_id, limit=PICKER_LIMIT, cursor=None
    )
    counts = lists.member_counts(session=session, list_ids=[x.id for x in list_page.items])
    segment_page = segments.list_segments(
        session=session, tenant_id=user.tenant_id, limit=PICKER_LIMIT, cursor=None
    )
    # At least BUILDER_ROWS rows, so that the builder works without JavaScript too.
    rows = form.seg_rows + [segment_builder.Row()] * max(0, BUILDER_ROWS - len(form.seg_rows))
    table = _contact_rows(session, user.tenant_id, "", form.contact_ids)
    timezone = tenant_settings.timezone_of(session=session, tenant_id=user.tenant_id)
    return show(
        request,
        user,
        "campaigns/new.html",
        status_code=422 if errors else 200,
        form=form,
        errors=(errors or forms.FieldErrors()).by_field,
        templates=template_page.items,
        lists=list_page.items,
        member_counts=counts,
        segments=segment_page.items,
        seg_rows=rows,
        field_choices=segment_builder.FIELD_CHOICES,
        op_choices=segment_builder.OP_CHOICES,
        table=table,
        preview_contacts=table["rows"],
        timezone=timezone,
        zones=_zone_choices(timezone),
        day_names=DAY_NAMES,
        editing=editing,
    )


def _zone_choices(tenant_zone: str) -> list[str]:
    """Every zone, the tenant's and UTC first."""
    return list(dict.fromkeys([tenant_zone, "UTC", *time_zone_names()]))


@router.get("/campaigns/new", response_class=HTMLResponse)
def new_campaign(request: Request, user: UserDep, session: SessionDep) -> HTMLResponse:
    return _form_page(request, user, session, CampaignForm())


@router.get("/campaigns/new/contacts", response_class=HTMLResponse)
def contact_table(
    request: Request,
    user: UserDep,
    session: SessionDep,
    q: Annotated[str, Query(max_length=MAX_QUERY_LENGTH)] = "",
    contact_ids: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI copies defaults
) -> HTMLResponse:
    """The table's rows for a search (htmx swaps them in), keeping what is already ticked."""
    table = _contact_rows(session, user.tenant_id, q.strip(), forms.ids(contact_ids))
    return render(request, "campaigns/_contacts.html", {"table": table, "user": user})


@router.get("/campaigns/new/preview", response_class=HTMLResponse)
def preview(
    request: Request,
    user: UserDep,
    session: SessionDep,
    runtime: RuntimeDep,
    template_id: str = "",
    preview_contact_id: str = "",
    personal_message: Annotated[str, Query(max_length=5000)] = "",
    deadline: Annotated[str, Query(max_length=200)] = "",
) -> HTMLResponse:
    """The mail as the chosen contact would receive it; a render error is shown in its place."""
    context: dict[str, Any] = {"rendered": None, "problem": None, "contact": None}
    template_ids = forms.ids([template_id])
    contact_ids = forms.ids([preview_contact_id])
    if not template_ids:
        context["problem"] = "Choose a template to see a preview."
    elif not contact_ids:
        context["problem"] = (
            "Add a contact first: the preview shows the mail as one contact gets it."
        )
    else:
        try:
            context["contact"] = contacts.get_contact(
                session=session, tenant_id=user.tenant_id, contact_id=contact_ids[0]
            )
            context["rendered"] = templates.preview_template(
                session=session,
                renderer=runtime.renderer,
                tenant_id=user.tenant_id,
                template_id=template_ids[0],
                contact_id=contact_ids[0],
                email=None,
                data={"personal_message": personal_message, "deadline": deadline},
            )
        except RenderError as exc:  # name the part: a limit broken in the HTML, the subject …
            context["problem"] = f"{exc.field}: {exc.message}" if exc.field else exc.message
        except (InvalidInput, NotFound) as exc:
            context["problem"] = exc.message
    return render(request, "campaigns/_preview.html", context)


def posted_form(
    name: Annotated[str, Form(max_length=campaigns.MAX_NAME_LENGTH + 50)] = "",
    template_id: Annotated[str, Form(max_length=20)] = "",
    list_ids: Annotated[list[str], Form()] = [],  # noqa: B006 - FastAPI copies defaults
    contact_ids: Annotated[list[str], Form()] = [],  # noqa: B006
    segment_ids: Annotated[list[str], Form()] = [],  # noqa: B006
    seg_match: Annotated[str, Form(max_length=10)] = "all",
    seg_field: Annotated[list[str], Form(max_length=segment_builder.MAX_ROWS)] = [],  # noqa: B006
    seg_key: Annotated[list[str], Form(max_length=segment_builder.MAX_ROWS)] = [],  # noqa: B006
    seg_op: Annotated[list[str], Form(max_length=segment_builder.MAX_ROWS)] = [],  # noqa: B006
    seg_value: Annotated[list[str], Form(max_length=segment_builder.MAX_ROWS)] = [],  # noqa: B006
    seg_name: Annotated[str, Form(max_length=segments.MAX_NAME_LENGTH + 50)] = "",
    personal_message: Annotated[str, Form(max_length=5000)] = "",
    deadline: Annotated[str, Form(max_length=200)] = "",
    when: Annotated[str, Form(max_length=20)] = "now",
    scheduled_at: Annotated[str, Form(max_length=40)] = "",
    preview_contact_id: Annotated[str, Form(max_length=20)] = "",
    window_start: Annotated[str, Form(max_length=10)] = "",
    window_end: Annotated[str, Form(max_length=10)] = "",
    window_days: Annotated[list[str], Form()] = [],  # noqa: B006
    window_timezone: Annotated[str, Form(max_length=64)] = CONTACT,
) -> CampaignForm:
    """The posted form, for creating a campaign and for changing one."""
    template = forms.ids([template_id])
    preview_contact = forms.ids([preview_contact_id])
    return CampaignForm(
        name=name.strip(),
        template_id=template[0] if template else None,
        list_ids=forms.ids(list_ids),
        contact_ids=forms.ids(contact_ids),
        segment_ids=forms.ids(segment_ids),
        seg_match="any" if seg_match == "any" else "all",
        seg_rows=segment_builder.read_rows(seg_field, seg_key, seg_op, seg_value),
        seg_name=seg_name.strip(),
        personal_message=personal_message.strip(),
        deadline=deadline.strip(),
        when=when if when in WHEN_CHOICES else "now",
        scheduled_at=scheduled_at.strip(),
        preview_contact_id=preview_contact[0] if preview_contact else None,
        window_start=window_start.strip(),
        window_end=window_end.strip(),
        window_days=[day for day in DAY_NAMES if day in window_days],
        window_timezone=window_timezone.strip() or CONTACT,
    )


PostedForm = Annotated[CampaignForm, Depends(posted_form)]


def _check(
    form: CampaignForm, errors: forms.FieldErrors, timezone: str
) -> tuple[campaigns.CampaignDraft | None, segment_builder.Built]:
    if not form.name:
        errors.add("name", "Give the campaign a name.")
    if form.template_id is None:
        errors.add("template_id", "Choose a template.")
    built = segment_builder.Built(filter=None, rows=())
    try:
        built = segment_builder.build_filter(form.seg_rows, form.seg_match)
    except InvalidInput as exc:
        errors.add("segment", exc.message)
    if not (form.list_ids or form.contact_ids or form.segment_ids or built.filter or errors):
        errors.add(
            "recipients",
            "Choose at least one list or segment, build a segment, or tick at least one contact.",
        )
    scheduled_at = None
    if form.when == "schedule":
        scheduled_at = forms.local_datetime(form.scheduled_at, timezone, "scheduled_at", errors)
        if scheduled_at is None and "scheduled_at" not in errors.by_field:
            errors.add("scheduled_at", "Choose when to start, or choose “Start now”.")
    window = _window(form, errors)
    if errors or form.template_id is None:
        return None, built
    draft = campaigns.CampaignDraft(
        name=form.name,
        template_id=form.template_id,
        list_ids=form.list_ids,
        contact_ids=form.contact_ids,
        segment_ids=form.segment_ids,
        data={"personal_message": form.personal_message, "deadline": form.deadline},
        scheduled_at=scheduled_at,
        send_window=window,
    )
    return draft, built


def _window(form: CampaignForm, errors: forms.FieldErrors) -> SendWindow | None:
    """The sending window, when hours are given; a time field shows midnight as 00:00, which as
    an end means the end of the day."""
    if not form.window_start and not form.window_end:
        return None
    end = "24:00" if form.window_end == "00:00" else form.window_end
    try:
        return parse_send_window(
            {
                "start": form.window_start or None,
                "end": end or None,
                "days": form.window_days,
                "timezone": form.window_timezone,
            }
        )
    except InvalidInput as exc:
        name = WINDOW_FIELDS.get(exc.field or "", "window_start")
        errors.add(name, WINDOW_MESSAGES[name])
        return None


_DONE = {"running": "started", "preparing": "started", "scheduled": "scheduled"}
#: Service error fields mapped to the form's fields.
_FIELD_OF = {
    "list_ids": "recipients",
    "contact_ids": "recipients",
    "segment_ids": "recipients",
    "name": "seg_name",
}


@router.post("/campaigns/new", response_class=HTMLResponse)
def create(
    request: Request,
    user: SenderAction,
    session: SessionDep,
    now: NowDep,
    runtime: RuntimeDep,
    form: PostedForm,
) -> Response:
    errors = forms.FieldErrors()
    timezone = tenant_settings.timezone_of(session=session, tenant_id=user.tenant_id)
    draft, built = _check(form, errors, timezone)
    if draft is None:
        return _form_page(request, user, session, form, errors)
    try:
        # A savepoint: when starting fails after the draft was written, neither is kept.
        with session.begin_nested():
            if built.filter is not None:
                draft = _with_built_segment(session, user.tenant_id, form, built, draft, now)
            campaign = campaigns.create_campaign(
                session=session, tenant_id=user.tenant_id, draft=draft, now=now
            )
            if form.when != "draft":
                campaigns.start_campaign(
                    session=session,
                    tenant_id=user.tenant_id,
                    campaign_id=campaign.id,
                    now=now,
                    ttl_seconds=runtime.settings.message_ttl_seconds,
                )
    except BuiltSegmentError as exc:
        errors.add(exc.field, exc.message)
        return _form_page(request, user, session, form, errors)
    except (InvalidInput, NotFound) as exc:
        errors.add(_FIELD_OF.get(exc.field or "", exc.field), exc.message)
        return _form_page(request, user, session, form, errors)
    done = "draft" if form.when == "draft" else _DONE.get(campaign.status, "saved")
    return RedirectResponse(f"/campaigns/{campaign.id}?done={done}", status_code=303)


@router.get("/campaigns/{campaign_id}/edit", response_class=HTMLResponse)
def edit_campaign(
    request: Request, campaign_id: IdPath, user: UserDep, session: SessionDep
) -> HTMLResponse:
    campaign = campaigns.get_campaign(
        session=session, tenant_id=user.tenant_id, campaign_id=campaign_id
    )
    if campaign.status not in EDITABLE:
        raise Conflict(
            f"the campaign is {campaign.status}; only a draft or a scheduled one can be changed"
        )
    timezone = tenant_settings.timezone_of(session=session, tenant_id=user.tenant_id)
    return _form_page(request, user, session, _form_of(campaign, timezone), editing=campaign.id)


@router.post("/campaigns/{campaign_id}/edit", response_class=HTMLResponse)
def save_campaign(
    request: Request,
    campaign_id: IdPath,
    user: SenderAction,
    session: SessionDep,
    now: NowDep,
    runtime: RuntimeDep,
    form: PostedForm,
) -> Response:
    """Save the changes; then, as chosen, start now, (re)schedule, or keep it a draft (a
    scheduled campaign saved as a draft is unscheduled)."""
    errors = forms.FieldErrors()
    timezone = tenant_settings.timezone_of(session=session, tenant_id=user.tenant_id)
    draft, built = _check(form, errors, timezone)
    if draft is None:
        return _form_page(request, user, session, form, errors, editing=campaign_id)
    stored = campaigns.get_campaign(
        session=session, tenant_id=user.tenant_id, campaign_id=campaign_id
    )
    changes: dict[str, Any] = {
        "name": draft.name,
        "template_id": draft.template_id,
        "list_ids": draft.list_ids,
        "contact_ids": draft.contact_ids,
        "segment_ids": draft.segment_ids,
        # The form edits two of the template's values; any others given through the API stay.
        "data": {**stored.data, **draft.data},
        "scheduled_at": draft.scheduled_at,
        "send_window": draft.send_window,
    }
    try:
        with session.begin_nested():  # a failed start keeps the changes out too
            if built.filter is not None:
                draft = _with_built_segment(session, user.tenant_id, form, built, draft, now)
                changes["segment_ids"] = draft.segment_ids
            campaign = campaigns.update_campaign(
                session=session,
                tenant_id=user.tenant_id,
                campaign_id=campaign_id,
                changes=changes,
                now=now,
            )
            if form.when != "draft" and campaign.status == CampaignStatus.draft.value:
                campaigns.start_campaign(
                    session=session,
                    tenant_id=user.tenant_id,
                    campaign_id=campaign.id,
                    now=now,
                    ttl_seconds=runtime.settings.message_ttl_seconds,
                )
    except BuiltSegmentError as exc:
        errors.add(exc.field, exc.message)
        return _form_page(request, user, session, form, errors, editing=campaign_id)
    except (InvalidInput, NotFound) as exc:
        errors.add(_FIELD_OF.get(exc.field or "", exc.field), exc.message)
        return _form_page(request, user, session, form, errors, editing=campaign_id)
    done = "changed" if form.when == "draft" else _DONE.get(campaign.status, "changed")
    return RedirectResponse(f"/campaigns/{campaign.id}?done={done}", status_code=303)


#: Statuses whose campaign the form can change (``services.campaigns.update_campaign``).
EDITABLE = frozenset({CampaignStatus.draft.value, CampaignStatus.scheduled.value})


def _form_of(campaign: Campaign, timezone: str) -> CampaignForm:
    """The form as the stored campaign fills it."""
    form = CampaignForm(
        name=campaign.name,
        template_id=campaign.template_id,
        list_ids=list(campaign.list_ids),
        contact_ids=list(campaign.contact_ids),
        segment_ids=list(campaign.segment_ids or []),
        personal_message=str(campaign.data.get("personal_message") or ""),
        deadline=str(campaign.data.get("deadline") or ""),
        when="schedule" if campaign.scheduled_at is not None else "draft",
        scheduled_at=(
            campaign.scheduled_at.astimezone(zone(timezone)).strftime("%Y-%m-%dT%H:%M")
            if campaign.scheduled_at is not None
            else ""
        ),
    )
    if campaign.send_window is not None:
        window = window_from_json(campaign.send_window).to_json()
        form.window_start, form.window_end = window["start"], window["end"]
        form.window_days, form.window_timezone = window["days"], window["timezone"]
    return form


class BuiltSegmentError(InvalidInput):
    """The built segment could not be saved (a row is wrong, or its name is taken)."""


def _with_built_segment(
    session: Session,
    tenant_id: int,
    form: CampaignForm,
    built: segment_builder.Built,
    draft: campaigns.CampaignDraft,
    now: datetime,
) -> campaigns.CampaignDraft:
    """The builder's rows saved as a segment (named as asked, else after the campaign), and the
    draft with it among its segments."""
    try:
        segment = segments.create_segment(
            session=session,
            tenant_id=tenant_id,
            name=form.seg_name or f"{form.name} audience",
            raw_filter=built.filter,
            now=now,
        )
    except InvalidInput as exc:
        where = "seg_name" if exc.field == "name" else "segment"
        message = exc.message if where == "seg_name" else segment_builder.explain(exc, built)
        raise BuiltSegmentError(message, field=where) from None
    except Conflict as exc:
        raise BuiltSegmentError(exc.message, field="seg_name") from None
    return replace(draft, segment_ids=[*draft.segment_ids, segment.id])
