"""Templates: a tenant's stored subject / HTML / text, checked by compiling them when saved.

A template that does not compile is refused at save time (naming the field and line), so a
campaign can only ever point at a template that compiles; what can still fail is rendering for a
particular recipient (an undefined variable), which ``preview_template`` shows before sending.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tidings.db.engine import end_reads
from tidings.db.models import Campaign, Contact, Message, Template
from tidings.db.timezones import tenant_timezones
from tidings.domain import PENDING_MESSAGE_STATUSES
from tidings.domain.addresses import InvalidAddress, normalize_address
from tidings.errors import Conflict, InvalidInput, NotFound
from tidings.rendering import Recipient, RenderedContent
from tidings.rendering.pool import RenderPool, TemplateSource
from tidings.services.pagination import Page, paginate

MAX_NAME_LENGTH = 200  # characters, as the column
MAX_CATEGORY_LENGTH = 64  # characters, as the column
MAX_SUBJECT_BYTES = 4 * 1024  # UTF-8; a subject is one header line, this is generous
MAX_BODY_BYTES = 512 * 1024  # UTF-8, for each of html and text


def _clean_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH or any(ord(c) < 32 for c in name):
        raise InvalidInput(
            f"name must be 1 to {MAX_NAME_LENGTH} printable characters", field="name"
        )
    return name


def _clean_category(category: str | None) -> str | None:
    if category is None:
        return None
    category = category.strip()
    if not category or len(category) > MAX_CATEGORY_LENGTH or any(ord(c) < 32 for c in category):
        raise InvalidInput(
            f"category must be 1 to {MAX_CATEGORY_LENGTH} printable characters", field="category"
        )
    return category


def _check_size(value: str | None, field: str, limit: int) -> None:
    # Characters first: a string cannot have fewer UTF-8 bytes than characters.
    if value is not None and (len(value) > limit or len(value.encode()) > limit):
        raise InvalidInput(f"{field} is larger than {limit // 1024} KB", field=field)


def _checked_content(
    *,
    renderer: RenderPool,
    subject: str,
    html: str | None,
    text: str | None,
) -> tuple[str, str | None, str | None]:
    """The content as stored (blank bodies as null), after it compiled."""
    if not subject.strip():
        raise InvalidInput("subject must not be empty", field="subject")
    _check_size(subject, "subject", MAX_SUBJECT_BYTES)
    _check_size(html, "html", MAX_BODY_BYTES)
    _check_size(text, "text", MAX_BODY_BYTES)
    html = html if html and html.strip() else None
    text = text if text and text.strip() else None
    if html is None and text is None:
        raise InvalidInput("a template needs an html or a text body (or both)", field="html")
    renderer.check(subject=subject, html=html, text=text)
    return subject, html, text


def _check_name_free(
    session: Session, tenant_id: int, name: str, template_id: int | None = None
) -> None:
    query = select(Template.id).where(Template.tenant_id == tenant_id, Template.name == name)
    if template_id is not None:
        query = query.where(Template.id != template_id)
    if session.scalar(query) is not None:
        raise Conflict(f"a template named {name!r} already exists", field="name")


def _flush(session: Session, name: str) -> None:
    try:
        session.flush()
    except IntegrityError:
        # Two requests raced for the same name; the unique constraint decided.
        raise Conflict(f"a template named {name!r} already exists", field="name") from None


def create_template(
    *,
    session: Session,
    renderer: RenderPool,
    tenant_id: int,
    name: str,
    subject: str,
    html: str | None,
    text: str | None,
    category: str | None,
    now: datetime,
) -> Template:
    name = _clean_name(name)
    category = _clean_category(category)
    subject, html, text = _checked_content(renderer=renderer, subject=subject, html=html, text=text)
    _check_name_free(session, tenant_id, name)
    template = Template(
        tenant_id=tenant_id,
        name=name,
        subject=subject,
        html=html,
        text=text,
        category=category,
        created_at=now,
        updated_at=now,
    )
    session.add(template)
    _flush(session, name)
    return template


def list_templates(
    *, session: Session, tenant_id: int, limit: int, cursor: str | None
) -> Page[Template]:
    query = select(Template).where(Template.tenant_id == tenant_id)
    return paginate(session, query, Template.id, limit=limit, cursor=cursor)


def get_template(*, session: Session, tenant_id: int, template_id: int) -> Template:
    template = session.scalar(
        select(Template).where(Template.tenant_id == tenant_id, Template.id == template_id)
    )
    if template is None:
        raise NotFound("no such template")
    return template


def update_template(
    *,
    session: Session,
    renderer: RenderPool,
    tenant_id: int,
    template_id: int,
    name: str,
    subject: str,
    html: str | None,
    text: str | None,
    category: str | None,
    now: datetime,
) -> Template:
    """Replaces every field (PUT); running campaigns pick the new content up with their next batch."""
    name = _clean_name(name)
    category = _clean_category(category)
    # Compiled before the first read: no transaction (on SQLite, the write lock) waits for it.
    subject, html, text = _checked_content(renderer=renderer, subject=subject, html=html, text=text)
    template = get_template(session=session, tenant_id=tenant_id, template_id=template_id)
    _check_name_free(session, tenant_id, name, template_id)
    template.name = name
    template.subject = subject
    template.html = html
    template.text = text
    template.category = category
    template.updated_at = now
    _flush(session, name)
    return template


def delete_template(*, session: Session, tenant_id: int, template_id: int) -> None:
    """Refused while a campaign uses the template or a queued message still needs it."""
    template = get_template(session=session, tenant_id=tenant_id, template_id=template_id)
    in_use = exists().where(Campaign.tenant_id == tenant_id, Campaign.template_id == template_id)
    if session.scalar(select(in_use)):
        raise Conflict("a campaign uses this template; delete the campaign first")
    pending = exists().where(
        Message.tenant_id == tenant_id,
        Message.template_id == template_id,
        Message.status.in_([s.value for s in PENDING_MESSAGE_STATUSES]),
    )
    if session.scalar(select(pending)):
        raise Conflict("messages waiting to be sent use this template")
    session.delete(template)
    try:
        session.flush()
    except IntegrityError:
        # A campaign was created for it meanwhile (campaigns.template_id is RESTRICT).
        raise Conflict("a campaign uses this template; delete the campaign first") from None


def _recipient(
    session: Session, tenant_id: int, contact_id: int | None, email: str | None
) -> Recipient:
    if (contact_id is None) == (email is None):
        raise InvalidInput("give either contact_id or email", field="contact_id")
    zone = tenant_timezones(session, [tenant_id])[tenant_id]
    if email is not None:
        try:
            return Recipient(email=normalize_address(email), timezone=zone)
        except InvalidAddress as exc:
            raise InvalidInput(f"email: {exc}", field="email") from None
    contact = session.scalar(
        select(Contact).where(Contact.tenant_id == tenant_id, Contact.id == contact_id)
    )
    if contact is None:
        raise NotFound("no such contact", field="contact_id")
    return Recipient(
        email=contact.email,
        name=contact.name,
        first_name=contact.first_name,
        last_name=contact.last_name,
        attributes=contact.attributes or {},
        contact_id=contact.id,
        timezone=contact.timezone or zone,
        locale=contact.locale,
    )


def preview_template(
    *,
    session: Session,
    renderer: RenderPool,
    tenant_id: int,
    template_id: int,
    contact_id: int | None,
    email: str | None,
    data: Mapping[str, Any],
) -> RenderedContent:
    """The mail exactly as ``contact_id`` (or an ad-hoc ``email``) would receive it with ``data``."""
    template = get_template(session=session, tenant_id=tenant_id, template_id=template_id)
    recipient = _recipient(session, tenant_id, contact_id, email)
    source = TemplateSource(subject=template.subject, html=template.html, text=template.text)
    return _render(session, renderer, source, tenant_id, recipient, data, template.category)


def preview_draft(
    *,
    session: Session,
    renderer: RenderPool,
    tenant_id: int,
    subject: str,
    html: str | None,
    text: str | None,
    category: str | None,
    contact_id: int,
    data: Mapping[str, Any],
) -> RenderedContent:
    """Content not saved yet (the editor's live preview) as ``contact_id`` would receive it; it
    is checked first exactly as saving it would check it."""
    subject, html, text = _checked_content(renderer=renderer, subject=subject, html=html, text=text)
    recipient = _recipient(session, tenant_id, contact_id, None)
    source = TemplateSource(subject=subject, html=html, text=text)
    return _render(session, renderer, source, tenant_id, recipient, data, category)


def _render(
    session: Session,
    renderer: RenderPool,
    source: TemplateSource,
    tenant_id: int,
    recipient: Recipient,
    data: Mapping[str, Any],
    category: str | None,
) -> RenderedContent:
    if not renderer.renders_here(source):
        end_reads(session)  # no transaction waits while another process renders
    return renderer.render(
        source, tenant_id=tenant_id, recipient=recipient, data=data, category=category
    )
