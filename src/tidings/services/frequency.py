"""Frequency caps: at most N messages of one category to one contact in any rolling day.

The caps are only stored here; they are enforced at send time by ``queue/compliance.py``, which
counts what each contact was really sent, so a cap set or lowered today already holds for mail
queued yesterday.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tidings.db.models import FrequencyCap
from tidings.domain import FrequencyCapMode
from tidings.errors import InvalidInput, NotFound
from tidings.services.messages import MAX_CATEGORY_LENGTH, check_header_text
from tidings.services.pagination import Page, paginate

MAX_PER_DAY = 1000  # messages: beyond that a cap protects nobody


def check_category(category: str) -> str:
    """Any category a message may carry (not only those the preference centre shows)."""
    checked = check_header_text(category, field="category", max_length=MAX_CATEGORY_LENGTH)
    assert checked is not None
    return checked


def list_caps(
    *, session: Session, tenant_id: int, limit: int, cursor: str | None
) -> Page[FrequencyCap]:
    query = select(FrequencyCap).where(FrequencyCap.tenant_id == tenant_id)
    return paginate(session, query, FrequencyCap.id, limit=limit, cursor=cursor)


def set_cap(
    *,
    session: Session,
    tenant_id: int,
    category: str,
    max_per_day: int,
    mode: FrequencyCapMode,
    now: datetime,
) -> tuple[FrequencyCap, bool]:
    """The category's cap, created or replaced, and whether it was created.

    One ``INSERT … ON CONFLICT DO UPDATE``: two admins setting the same cap at once end with one
    row holding the last value.
    """
    check_category(category)
    if not 1 <= max_per_day <= MAX_PER_DAY:
        raise InvalidInput(f"max_per_day must be from 1 to {MAX_PER_DAY}", field="max_per_day")
    existed = session.scalar(
        select(FrequencyCap.id).where(
            FrequencyCap.tenant_id == tenant_id, FrequencyCap.category == category
        )
    )
    dialect_insert = (
        postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    )
    statement = dialect_insert(FrequencyCap).values(
        tenant_id=tenant_id,
        category=category,
        max_per_day=max_per_day,
        mode=mode.value,
        created_at=now,
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["tenant_id", "category"],
            set_={"max_per_day": max_per_day, "mode": mode.value},
        )
    )
    row = session.scalars(
        select(FrequencyCap)
        .where(FrequencyCap.tenant_id == tenant_id, FrequencyCap.category == category)
        .execution_options(populate_existing=True)
    ).one()
    return row, existed is None


def delete_cap(*, session: Session, tenant_id: int, category: str) -> None:
    removed = session.execute(
        delete(FrequencyCap)
        .where(FrequencyCap.tenant_id == tenant_id, FrequencyCap.category == category)
        .returning(FrequencyCap.id)
    ).all()
    if not removed:
        raise NotFound("no frequency cap for that category")
