"""Lists: named groups of a tenant's contacts, the usual audience of a campaign.

Memberships are written set-based (``INSERT … SELECT … ON CONFLICT DO NOTHING``), so adding ten
thousand contacts is one statement and adding someone twice is harmless.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tidings.db.models import Contact, ContactList, ListMember
from tidings.db.types import BigId, UTCDateTime
from tidings.errors import Conflict, InvalidInput, NotFound
from tidings.services.pagination import Page, paginate

MAX_NAME_LENGTH = 200  # characters: the column size
MAX_DESCRIPTION_LENGTH = 10_000  # characters
MAX_MEMBERS_PER_REQUEST = 10_000  # ids; larger sets go through the import
PUBLIC_ID_BYTES = 16  # random bytes of a public_id: 22 URL-safe characters


def clean_name(value: object) -> str:
    """A list's or segment's name: 1 to ``MAX_NAME_LENGTH`` printable characters."""
    if not isinstance(value, str):
        raise InvalidInput("name must be a string", field="name")
    value = value.strip()
    if (
        not value
        or len(value) > MAX_NAME_LENGTH
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        raise InvalidInput(
            f"name must be 1 to {MAX_NAME_LENGTH} printable characters", field="name"
        )
    return value


def _clean_description(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION_LENGTH or "\x00" in value:
        raise InvalidInput(
            f"description must be text of at most {MAX_DESCRIPTION_LENGTH} characters",
            field="description",
        )
    return value.strip() or None


def _clean_flag(value: object, *, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{field} must be true or false", field=field)
    return value


def new_public_id() -> str:
    """The random name of a list's sign-up form (``/s/{public_id}``): unguessable, URL-safe."""
    return secrets.token_urlsafe(PUBLIC_ID_BYTES)


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _save_name(session: Session, contact_list: ContactList) -> None:
    """Flushes ``contact_list``; a name taken by a concurrent request is a 409, not a 500."""
    same_name = select(ContactList.id).where(
        ContactList.tenant_id == contact_list.tenant_id, ContactList.name == contact_list.name
    )
    if contact_list.id is not None:
        same_name = same_name.where(ContactList.id != contact_list.id)
    with session.no_autoflush:  # the check must run before the row it checks is written
        taken = session.scalar(same_name)
    if taken is not None:
        raise Conflict(f"a list named {contact_list.name!r} already exists", field="name")
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict(f"a list named {contact_list.name!r} already exists", field="name") from None


def create_list(
    *,
    session: Session,
    tenant_id: int,
    name: str,
    description: str | None,
    now: datetime,
    double_opt_in: bool = False,
    public: bool = False,
) -> ContactList:
    """A new list; its ``public_id`` is made now, so making it public later changes no link."""
    contact_list = ContactList(
        tenant_id=tenant_id,
        name=clean_name(name),
        description=_clean_description(description),
        created_at=now,
        double_opt_in=_clean_flag(double_opt_in, field="double_opt_in"),
        public=_clean_flag(public, field="public"),
        public_id=new_public_id(),
    )
    session.add(contact_list)
    _save_name(session, contact_list)
    return contact_list


def get_list(
    *, session: Session, tenant_id: int, list_id: int, field: str | None = None
) -> ContactList:
    """The tenant's list; another tenant's list is as absent as one that never existed."""
    contact_list = session.scalar(
        select(ContactList).where(ContactList.tenant_id == tenant_id, ContactList.id == list_id)
    )
    if contact_list is None:
        raise NotFound("no such list", field=field)
    return contact_list


def update_list(
    *, session: Session, tenant_id: int, list_id: int, changes: Mapping[str, Any]
) -> ContactList:
    """Sets the fields named in ``changes`` (``name``, ``description``, ``double_opt_in``,
    ``public``)."""
    contact_list = get_list(session=session, tenant_id=tenant_id, list_id=list_id)
    if "name" in changes:
        contact_list.name = clean_name(changes["name"])
    if "description" in changes:
        contact_list.description = _clean_description(changes["description"])
    for flag in ("double_opt_in", "public"):
        if flag in changes:
            setattr(contact_list, flag, _clean_flag(changes[flag], field=flag))
    if contact_list.public and contact_list.public_id is None:  # a list made before 0022
        contact_list.public_id = new_public_id()
    _save_name(session, contact_list)
    return contact_list


def delete_list(*, session: Session, tenant_id: int, list_id: int) -> None:
    """Deletes the list and its memberships; the contacts stay."""
    session.delete(get_list(session=session, tenant_id=tenant_id, list_id=list_id))
    session.flush()


def list_lists(
    *, session: Session, tenant_id: int, limit: int, cursor: str | None
) -> Page[ContactList]:
    query = select(ContactList).where(ContactList.tenant_id == tenant_id)
    return paginate(session, query, ContactList.id, limit=limit, cursor=cursor)


def memberships_of(
    *, session: Session, tenant_id: int, contact_id: int
) -> list[tuple[ContactList, datetime]]:
    """The lists one contact belongs to, by id, with when it joined each."""
    rows = session.execute(
        select(ContactList, ListMember.added_at)
        .join(ListMember, ListMember.list_id == ContactList.id)
        .where(ListMember.tenant_id == tenant_id, ListMember.contact_id == contact_id)
        .order_by(ContactList.id)
    ).all()
    return [(row[0], row[1]) for row in rows]


def member_counts(*, session: Session, list_ids: Collection[int]) -> dict[int, int]:
    """Members per list, for a whole page of lists in one grouped query."""
    counts = dict.fromkeys(list_ids, 0)
    if counts:
        rows = session.execute(
            select(ListMember.list_id, func.count())
            .where(ListMember.list_id.in_(list(counts)))
            .group_by(ListMember.list_id)
        )
        counts.update((list_id, count) for list_id, count in rows)
    return counts


def require_lists(
    *, session: Session, tenant_id: int, list_ids: Collection[int], field: str = "list_ids"
) -> None:
    """Raises NotFound naming ``field`` unless every id is one of the tenant's lists."""
    wanted = set(list_ids)
    if not wanted:
        return
    found = set(
        session.scalars(
            select(ContactList.id).where(
                ContactList.tenant_id == tenant_id, ContactList.id.in_(wanted)
            )
        )
    )
    missing = sorted(wanted - found)
    if missing:
        raise NotFound(f"no such list: {', '.join(map(str, missing[:10]))}", field=field)


def add_contact_to_lists(
    *, session: Session, tenant_id: int, contact_id: int, list_ids: Collection[int], now: datetime
) -> None:
    """Adds one contact to lists already checked with ``require_lists``."""
    for list_id in sorted(set(list_ids)):
        session.execute(
            _insert(session)(ListMember)
            .values(list_id=list_id, contact_id=contact_id, tenant_id=tenant_id, added_at=now)
            .on_conflict_do_nothing()
        )


def add_members(
    *, session: Session, tenant_id: int, list_id: int, contact_ids: Sequence[int], now: datetime
) -> int:
    """Adds the tenant's contacts to the list in one statement; the count newly added.

    Every id must be one of the tenant's contacts, or nothing is added (404 naming ``contact_ids``).
    """
    get_list(session=session, tenant_id=tenant_id, list_id=list_id)
    wanted = set(contact_ids)
    if not wanted:
        raise InvalidInput("contact_ids must not be empty", field="contact_ids")
    if len(wanted) > MAX_MEMBERS_PER_REQUEST:
        raise InvalidInput(
            f"at most {MAX_MEMBERS_PER_REQUEST} contact ids per request; import larger sets",
            field="contact_ids",
        )
    mine = select(Contact.id).where(Contact.tenant_id == tenant_id, Contact.id.in_(wanted))
    missing = sorted(wanted - set(session.scalars(mine)))
    if missing:
        raise NotFound(f"no such contact: {', '.join(map(str, missing[:10]))}", field="contact_ids")
    statement = (
        _insert(session)(ListMember)
        .from_select(
            ["list_id", "contact_id", "tenant_id", "added_at"],
            select(
                literal(list_id, BigId),
                Contact.id,
                Contact.tenant_id,
                literal(now, UTCDateTime()),
            ).where(Contact.tenant_id == tenant_id, Contact.id.in_(wanted)),
        )
        .on_conflict_do_nothing()
        .returning(ListMember.contact_id)
    )
    return len(session.execute(statement).all())


def remove_member(*, session: Session, tenant_id: int, list_id: int, contact_id: int) -> None:
    get_list(session=session, tenant_id=tenant_id, list_id=list_id)
    member = session.get(ListMember, (list_id, contact_id))
    if member is None or member.tenant_id != tenant_id:
        raise NotFound("that contact is not a member of this list", field="contact_id")
    session.delete(member)
    session.flush()
