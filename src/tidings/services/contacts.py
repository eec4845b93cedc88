"""Contacts: the people a tenant sends to, one row per normalised address, and the rules for each field.

The field rules (``clean_*``) are shared with the bulk import, so that a contact is held to the same
standard whichever way it arrives. Attributes follow two rules on purpose:

* ``PATCH`` sets exactly what it names, so ``attributes`` there *replaces* the stored object (send
  the object you want; that is also the only way to remove a key).
* Upserts (``POST /v1/contacts`` and imports) *merge* attributes key by key into the stored ones,
  so a source that knows only some attributes never erases the others.

Either way the stored object must fit ``max_attributes_bytes`` as JSON text (UTF-8).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tidings.db.models import Contact, ListMember, Message
from tidings.domain import ContactStatus
from tidings.domain.addresses import InvalidAddress, normalize_address
from tidings.errors import Conflict, InvalidInput, NotFound
from tidings.scheduling.windows import known_time_zone
from tidings.services import lists
from tidings.services.pagination import Page, paginate

#: The longest value of each free-text field, in characters (the column sizes).
TEXT_FIELDS: Mapping[str, int] = {"name": 300, "first_name": 200, "last_name": 200}
MAX_LOCALE_LENGTH = 35  # characters: the column size, and BCP 47's practical limit
MAX_ATTRIBUTE_KEY_LENGTH = 200  # characters
MAX_QUERY_LENGTH = 320  # characters: no address is longer, so neither is a useful substring
#: Every field a caller may set; ``email`` and ``status`` are never null.
CONTACT_FIELDS = frozenset({"email", *TEXT_FIELDS, "timezone", "locale", "attributes", "status"})

# Control characters (C0, DEL, C1), Unicode line/paragraph separators and lone surrogates: a name
# ends up in a From/To header, where a line break would let a value inject headers.
_UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")
# Built once: json.dumps with options builds an encoder per call, which shows in a 100k-row import.
_ATTRIBUTES_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)
_quote = json.encoder.encode_basestring  # the encoder's own string quoting (C), for the same text


def clean_email(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput("email must be a string", field="email")
    try:
        return normalize_address(value)
    except InvalidAddress as exc:
        raise InvalidInput(f"email: {exc}", field="email") from None


def clean_text(value: object, *, field: str) -> str | None:
    """A name field, trimmed; empty means none."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string", field=field)
    value = value.strip()
    if not value:
        return None
    limit = TEXT_FIELDS[field]
    if len(value) > limit:
        raise InvalidInput(f"{field} is longer than {limit} characters", field=field)
    if _UNSAFE_TEXT.search(value):
        raise InvalidInput(
            f"{field} must not contain line breaks or control characters", field=field
        )
    return value


def clean_timezone(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not known_time_zone(value.strip()):
        raise InvalidInput(
            f"timezone {value!r} is not an IANA time zone name such as 'Europe/Paris'",
            field="timezone",
        )
    return value.strip()


def clean_locale(value: object) -> str | None:
    if value is None or value == "":
        return None
    if (
        not isinstance(value, str)
        or len(value.strip()) > MAX_LOCALE_LENGTH
        or not _LOCALE.fullmatch(value.strip())
    ):
        raise InvalidInput(
            f"locale {value!r} is not a language tag such as 'en' or 'pt-BR'", field="locale"
        )
    return value.strip()


def clean_status(value: object) -> ContactStatus:
    if isinstance(value, str) and value in ContactStatus.__members__:
        return ContactStatus(value)
    allowed = ", ".join(s.value for s in ContactStatus)
    raise InvalidInput(f"status must be one of {allowed}", field="status")


def check_attribute_name(key: object) -> None:
    if not isinstance(key, str) or not key or len(key) > MAX_ATTRIBUTE_KEY_LENGTH:
        raise InvalidInput(
            f"attribute names must be 1 to {MAX_ATTRIBUTE_KEY_LENGTH} characters",
            field="attributes",
        )


def attributes_json(
    attributes: Mapping[str, Any], *, max_bytes: int, names_checked: bool = False
) -> str:
    """``attributes`` as the JSON text that is stored, refused when it cannot be stored or is too big.

    ``names_checked``: the caller already checked every key (a CSV header, once for all rows).
    """
    if not names_checked:
        for key in attributes:
            check_attribute_name(key)
    try:
        text = _ATTRIBUTES_ENCODER.encode(attributes)
    except (TypeError, ValueError):  # not JSON, NaN
        raise InvalidInput("attributes must be plain JSON values", field="attributes") from None
    return _fitting(text, max_bytes)


def string_attributes_json(attributes: Mapping[str, str], *, max_bytes: int) -> str:
    """What ``attributes_json`` gives for string values under checked names, several times faster.

    A CSV import encodes one such object per row; the general encoder's set-up per call dominated.
    """
    text = (
        "{"
        + ", ".join([f"{_quote(key)}: {_quote(value)}" for key, value in attributes.items()])
        + "}"
    )
    return _fitting(text, max_bytes)


def _fitting(text: str, max_bytes: int) -> str:
    try:
        size = len(text) if text.isascii() else len(text.encode())
    except UnicodeEncodeError:  # a lone surrogate: no database can store it
        raise InvalidInput("attributes must be valid Unicode text", field="attributes") from None
    if "\\u0000" in text:  # PostgreSQL's jsonb cannot hold NUL characters
        raise InvalidInput("attributes must not contain NUL characters", field="attributes")
    if size > max_bytes:
        raise InvalidInput(
            f"attributes take {size} bytes as JSON, over the limit of {max_bytes}",
            field="attributes",
        )
    return text


def clean_attributes(value: object, *, max_bytes: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput("attributes must be a JSON object", field="attributes")
    attributes_json(value, max_bytes=max_bytes)
    return value


def clean_fields(raw: Mapping[str, Any], *, max_attributes_bytes: int) -> dict[str, Any]:
    """The given fields, each checked and normalised; the first bad one raises, naming itself."""
    unknown = set(raw) - CONTACT_FIELDS
    if unknown:
        field = sorted(unknown)[0]
        raise InvalidInput(f"{field} is not a contact field", field=field)
    cleaned: dict[str, Any] = {}
    for field, value in raw.items():
        if field == "email":
            cleaned[field] = clean_email(value)
        elif field in TEXT_FIELDS:
            cleaned[field] = clean_text(value, field=field)
        elif field == "timezone":
            cleaned[field] = clean_timezone(value)
        elif field == "locale":
            cleaned[field] = clean_locale(value)
        elif field == "status":
            cleaned[field] = clean_status(value).value
        else:
            cleaned[field] = clean_attributes(value, max_bytes=max_attributes_bytes)
    return cleaned


def _insert(session: Session) -> Any:
    """The dialect's INSERT, which knows ``ON CONFLICT``."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def get_contact(*, session: Session, tenant_id: int, contact_id: int) -> Contact:
    contact = session.scalar(
        select(Contact).where(Contact.tenant_id == tenant_id, Contact.id == contact_id)
    )
    if contact is None:
        raise NotFound("no such contact")
    return contact


def upsert_contact(
    *,
    session: Session,
    tenant_id: int,
    fields: Mapping[str, Any],
    list_ids: Sequence[int] = (),
    max_attributes_bytes: int,
    now: datetime,
) -> tuple[Contact, bool]:
    """The contact with ``fields["email"]``, created or updated, and whether it was created.

    Fields not given keep their stored values; attributes merge (see the module docstring). The
    insert is ``ON CONFLICT DO NOTHING`` followed by a locked update, so two requests for the same
    new address at once end with one contact, never a unique-constraint error.
    """
    if "email" not in fields:
        raise InvalidInput("email is required", field="email")
    values = clean_fields(fields, max_attributes_bytes=max_attributes_bytes)
    lists.require_lists(session=session, tenant_id=tenant_id, list_ids=list_ids)
    inserted = session.execute(
        _insert(session)(Contact)
        .values(
            tenant_id=tenant_id,
            **{"attributes": {}, "status": ContactStatus.active.value, **values},
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["tenant_id", "email"])
        .returning(Contact.id)
    ).scalar()
    created = inserted is not None
    contact = session.scalars(
        select(Contact)
        .where(Contact.tenant_id == tenant_id, Contact.email == values["email"])
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if not created:
        attributes = values.pop("attributes", None)
        if attributes:
            merged = {**contact.attributes, **attributes}
            attributes_json(merged, max_bytes=max_attributes_bytes)
            contact.attributes = merged
        for field, value in values.items():
            setattr(contact, field, value)
        contact.updated_at = now
    lists.add_contact_to_lists(
        session=session, tenant_id=tenant_id, contact_id=contact.id, list_ids=list_ids, now=now
    )
    return contact, created


def update_contact(
    *,
    session: Session,
    tenant_id: int,
    contact_id: int,
    changes: Mapping[str, Any],
    max_attributes_bytes: int,
    now: datetime,
) -> Contact:
    """Sets the fields named in ``changes`` (null clears a field; attributes are replaced)."""
    for field in ("email", "status", "attributes"):
        if field in changes and changes[field] is None:
            raise InvalidInput(f"{field} cannot be null", field=field)
    values = clean_fields(changes, max_attributes_bytes=max_attributes_bytes)
    contact = get_contact(session=session, tenant_id=tenant_id, contact_id=contact_id)
    new_email = values.get("email")
    if new_email is not None and new_email != contact.email:
        taken = session.scalar(
            select(Contact.id).where(Contact.tenant_id == tenant_id, Contact.email == new_email)
        )
        if taken is not None:
            raise Conflict(f"another contact already has the address {new_email}", field="email")
    for field, value in values.items():
        setattr(contact, field, value)
    contact.updated_at = now
    try:
        with session.begin_nested():  # a concurrent rename to the same address lost the race
            session.flush()
    except IntegrityError:
        raise Conflict(
            f"another contact already has the address {new_email}", field="email"
        ) from None
    return contact


def delete_contact(*, session: Session, tenant_id: int, contact_id: int) -> None:
    """Deletes the contact and its memberships; its messages keep their record without it.

    ``messages.contact_id`` has no foreign key (migration 0006), so the detaching that
    ``ON DELETE SET NULL`` did is done here; a queued message still goes to its stored address.
    """
    contact = get_contact(session=session, tenant_id=tenant_id, contact_id=contact_id)
    session.execute(
        update(Message)
        .where(Message.tenant_id == tenant_id, Message.contact_id == contact_id)
        .values(contact_id=None)
    )
    session.delete(contact)
    session.flush()


def list_contacts(
    *,
    session: Session,
    tenant_id: int,
    limit: int,
    cursor: str | None,
    status: ContactStatus | None = None,
    list_id: int | None = None,
    q: str | None = None,
) -> Page[Contact]:
    """Contacts by id; ``q`` is a case-insensitive substring of the address."""
    query = select(Contact).where(Contact.tenant_id == tenant_id)
    if status is not None:
        query = query.where(Contact.status == status.value)
    if list_id is not None:
        lists.get_list(session=session, tenant_id=tenant_id, list_id=list_id, field="list_id")
        query = query.join(
            ListMember, (ListMember.contact_id == Contact.id) & (ListMember.list_id == list_id)
        )
    if q:
        if len(q) > MAX_QUERY_LENGTH:
            raise InvalidInput(f"q is longer than {MAX_QUERY_LENGTH} characters", field="q")
        query = query.where(Contact.email.icontains(q, autoescape=True))
    return paginate(session, query, Contact.id, limit=limit, cursor=cursor)


def list_ids_of(
    *, session: Session, tenant_id: int, contact_ids: Collection[int]
) -> dict[int, list[int]]:
    """The lists each contact belongs to, in one query for a whole page of contacts."""
    found: dict[int, list[int]] = {contact_id: [] for contact_id in contact_ids}
    if not found:
        return found
    rows = session.execute(
        select(ListMember.contact_id, ListMember.list_id)
        .where(ListMember.tenant_id == tenant_id, ListMember.contact_id.in_(list(found)))
        .order_by(ListMember.contact_id, ListMember.list_id)
    )
    for contact_id, list_id in rows:
        found[contact_id].append(list_id)
    return found
