"""Categories: the kinds of mail a tenant sends (reminders, notifications, marketing…), each one a
checkbox in the recipients' preference centre.

A category is named by a short slug, the same string messages and campaigns carry in their
``category`` field. Deleting a category removes it from the preference centre but keeps the
contacts' choices about it: were it created again, someone who had opted out must stay out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tidings.db.models import Category
from tidings.errors import Conflict, InvalidInput, NotFound
from tidings.services.pagination import Page, paginate

MAX_NAME_LENGTH = 64  # characters: the column size of every ``category`` field
MAX_DESCRIPTION_LENGTH = 500  # characters: one line or two on the preference page
NAME_PATTERN = r"^[a-z0-9_-]{1,64}$"
_NAME = re.compile(NAME_PATTERN)
#: Categories shown on one preference page at most (a longer page helps nobody).
MAX_CATEGORIES_SHOWN = 200


def check_name(name: str, *, field: str = "name") -> str:
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"{field} must be 1 to {MAX_NAME_LENGTH} characters of a-z, 0-9, '_' and '-'",
            field=field,
        )
    return name


def create_category(
    *, session: Session, tenant_id: int, name: str, description: str | None, now: datetime
) -> Category:
    """A new category; ``Conflict`` when the tenant already has one by that name."""
    check_name(name)
    if description is not None:
        description = description.strip() or None
    if description is not None and len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidInput(
            f"description is longer than {MAX_DESCRIPTION_LENGTH} characters", field="description"
        )
    row = Category(tenant_id=tenant_id, name=name, description=description, created_at=now)
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        raise Conflict(f"a category named {name!r} exists already", field="name") from None
    return row


def list_categories(
    *, session: Session, tenant_id: int, limit: int, cursor: str | None
) -> Page[Category]:
    query = select(Category).where(Category.tenant_id == tenant_id)
    return paginate(session, query, Category.id, limit=limit, cursor=cursor)


def all_categories(*, session: Session, tenant_id: int) -> Sequence[Category]:
    """The categories a preference page shows, by name."""
    return session.scalars(
        select(Category)
        .where(Category.tenant_id == tenant_id)
        .order_by(Category.name)
        .limit(MAX_CATEGORIES_SHOWN)
    ).all()


def delete_category(*, session: Session, tenant_id: int, category_id: int) -> None:
    """Remove the category (its contacts' preferences stay, see the module docstring)."""
    row = session.scalar(
        select(Category).where(Category.tenant_id == tenant_id, Category.id == category_id)
    )
    if row is None:
        raise NotFound("no such category")
    session.delete(row)
    session.flush()
