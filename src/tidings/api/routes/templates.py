"""``/v1/templates``: stored templates (compiled when saved) and a preview for one recipient."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from tidings.api.deps import KeyFirstRoute, NowDep, RuntimeDep, SenderDep, SessionDep, ViewerDep
from tidings.api.schemas import (
    ERROR_RESPONSES,
    FeaturesFields,
    FeaturesOut,
    Id,
    IdPath,
    PageOut,
    StrictModel,
)
from tidings.db.models import Template
from tidings.rendering.pool import RenderPool
from tidings.services import templates
from tidings.services.pagination import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(
    prefix="/v1/templates", tags=["templates"], responses=ERROR_RESPONSES, route_class=KeyFirstRoute
)


async def get_renderer(runtime: RuntimeDep) -> RenderPool:
    """The process's render pool: handlers are sync, so waiting on it holds a worker thread, never
    the event loop (nor the GIL: the thread waits on a socket)."""
    return runtime.renderer


RendererDep = Annotated[RenderPool, Depends(get_renderer)]


class TemplateIn(FeaturesFields):
    """A whole template; ``PUT`` replaces every field, so an omitted body or category is cleared."""

    name: str = Field(min_length=1, max_length=templates.MAX_NAME_LENGTH)
    subject: str = Field(min_length=1, description="Jinja2; one line once rendered.")
    html: str | None = Field(default=None, description="Jinja2, autoescaped.")
    text: str | None = Field(
        default=None, description="Jinja2, not escaped; derived from the HTML when absent."
    )
    category: str | None = Field(
        default=None,
        max_length=templates.MAX_CATEGORY_LENGTH,
        description="Recipients can opt out of a category on their preferences page.",
    )


class TemplateSummaryOut(BaseModel):
    id: int
    name: str
    subject: str
    category: str | None
    created_at: datetime
    updated_at: datetime


class TemplateOut(TemplateSummaryOut, FeaturesOut):
    html: str | None
    text: str | None
    from_address: str | None

    @classmethod
    def of(cls, template: Template) -> TemplateOut:
        return cls(
            id=template.id,
            name=template.name,
            subject=template.subject,
            html=template.html,
            text=template.text,
            category=template.category,
            from_address=template.from_address,
            **FeaturesOut.features_of(template.features),
            created_at=template.created_at,
            updated_at=template.updated_at,
        )


class PreviewIn(StrictModel):
    contact_id: Id | None = Field(default=None, description="Render for this contact …")
    email: str | None = Field(
        default=None, max_length=320, description="… or for an address that is not a contact."
    )
    data: dict[str, Any] = Field(
        default_factory=dict, description="Template data, as a campaign or message would pass it."
    )


class PreviewOut(BaseModel):
    subject: str
    html: str | None
    text: str


@router.get("", summary="List templates (without their bodies)")
def list_templates(
    principal: ViewerDep,
    session: SessionDep,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(
        None, pattern=r"^[0-9]{0,19}$", description="next_cursor of the previous page"
    ),
) -> PageOut[TemplateSummaryOut]:
    page = templates.list_templates(
        session=session, tenant_id=principal.tenant_id, limit=limit, cursor=cursor
    )
    return PageOut(
        items=[TemplateSummaryOut.model_validate(t, from_attributes=True) for t in page.items],
        next_cursor=page.next_cursor,
    )


@router.post("", status_code=201)
def create_template(
    body: TemplateIn,
    principal: SenderDep,
    session: SessionDep,
    renderer: RendererDep,
    now: NowDep,
    runtime: RuntimeDep,
) -> TemplateOut:
    template = templates.create_template(
        session=session,
        renderer=renderer,
        tenant_id=principal.tenant_id,
        name=body.name,
        subject=body.subject,
        html=body.html,
        text=body.text,
        category=body.category,
        now=now,
        from_address=body.sender(),
        features=body.features(),
        max_attachment_bytes=runtime.settings.max_attachment_bytes,
    )
    return TemplateOut.of(template)


@router.get("/{template_id}")
def get_template(template_id: IdPath, principal: ViewerDep, session: SessionDep) -> TemplateOut:
    return TemplateOut.of(
        templates.get_template(
            session=session, tenant_id=principal.tenant_id, template_id=template_id
        )
    )


@router.put("/{template_id}")
def update_template(
    template_id: IdPath,
    body: TemplateIn,
    principal: SenderDep,
    session: SessionDep,
    renderer: RendererDep,
    now: NowDep,
    runtime: RuntimeDep,
) -> TemplateOut:
    template = templates.update_template(
        session=session,
        renderer=renderer,
        tenant_id=principal.tenant_id,
        template_id=template_id,
        name=body.name,
        subject=body.subject,
        html=body.html,
        text=body.text,
        category=body.category,
        now=now,
        from_address=body.sender(),
        features=body.features(),
        max_attachment_bytes=runtime.settings.max_attachment_bytes,
    )
    return TemplateOut.of(template)


@router.delete("/{template_id}", status_code=204)
def delete_template(template_id: IdPath, principal: SenderDep, session: SessionDep) -> None:
    templates.delete_template(
        session=session, tenant_id=principal.tenant_id, template_id=template_id
    )


@router.post("/{template_id}/preview")
def preview_template(
    template_id: IdPath,
    body: PreviewIn,
    principal: ViewerDep,
    session: SessionDep,
    renderer: RendererDep,
) -> PreviewOut:
    """The mail as one recipient would get it; an undefined variable is a 422 naming it."""
    rendered = templates.preview_template(
        session=session,
        renderer=renderer,
        tenant_id=principal.tenant_id,
        template_id=template_id,
        contact_id=body.contact_id,
        email=body.email,
        data=body.data,
    )
    return PreviewOut(subject=rendered.subject, html=rendered.html, text=rendered.text)
