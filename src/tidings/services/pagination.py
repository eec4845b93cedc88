"""Keyset pagination shared by every list endpoint: ``limit`` is capped, ``cursor`` is the last id seen."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from tidings.errors import InvalidInput

MAX_LIMIT = 500
DEFAULT_LIMIT = 50

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_cursor: str | None  # opaque to clients; pass it back as ``cursor`` for the next page


def check_limit(limit: int) -> int:
    if limit < 1 or limit > MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    return limit


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None or cursor == "":
        return None
    if not cursor.isdigit() or len(cursor) > 19:
        raise InvalidInput("cursor is not one this server returned", field="cursor")
    return int(cursor)


def paginate(
    session: Session,
    query: Select[Any],
    id_column: InstrumentedAttribute[int],
    *,
    limit: int,
    cursor: str | None,
    descending: bool = False,
) -> Page[Any]:
    """One page of ``query`` by ``id_column``; ids are stable, so concurrent inserts never shift a page."""
    check_limit(limit)
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(id_column < after if descending else id_column > after)
    query = query.order_by(id_column.desc() if descending else id_column).limit(limit + 1)
    rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(items=rows, next_cursor=str(getattr(rows[-1], id_column.key)) if more else None)
