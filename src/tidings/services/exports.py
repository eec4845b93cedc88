"""Contact export: every matching contact with its attributes and list ids, as CSV or JSON Lines.

The export is streamed: contacts are read ``EXPORT_PAGE`` at a time by keyset (``id > last``,
never ``OFFSET``), each page in a short transaction of its own, and encoded as soon as read, so
memory stays flat whatever the audience (the whole export is never one query result, nor one
transaction holding SQLite's write lock). A contact created or deleted while an export runs may or
may not appear, as with paging ``GET /v1/contacts``.

**CSV layout.** Attribute keys are free and only known once every row was read, so they are not
flattened into columns: the header is fixed (``CSV_HEADER``), ``list_ids`` holds the ids separated
by spaces, and ``attributes`` holds the attributes as one JSON object. Cells a spreadsheet would
read as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return) are prefixed
with ``'``, as OWASP advises against CSV injection; JSON Lines is written as is.
"""

from __future__ import annotations

import csv
import enum
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, Text, and_, cast, select
from sqlalchemy.orm import Session, sessionmaker

from tidings.db.engine import transaction
from tidings.db.models import Contact, ListMember
from tidings.domain import ContactStatus
from tidings.domain.segment_filter import parse_filter
from tidings.errors import NotFound
from tidings.queue.segments import segment_condition
from tidings.services import lists, segments

EXPORT_PAGE = 1_000  # contacts per read: one short transaction, a few hundred KB of output
CSV_HEADER = (
    "email",
    "name",
    "first_name",
    "last_name",
    "status",
    "timezone",
    "locale",
    "created_at",
    "updated_at",
    "list_ids",
    "attributes",
)
#: First characters that make a spreadsheet evaluate a cell (OWASP "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_COLUMNS = (
    Contact.id,
    Contact.email,
    Contact.name,
    Contact.first_name,
    Contact.last_name,
    Contact.status,
    Contact.timezone,
    Contact.locale,
    Contact.created_at,
    Contact.updated_at,
    # The stored JSON text as is: decoding and re-encoding it was a third of the export's time.
    cast(Contact.attributes, Text).label("attributes"),
)


class ExportFormat(enum.StrEnum):
    csv = "csv"
    jsonl = "jsonl"


_ENCODER = json.JSONEncoder(ensure_ascii=False)
MEDIA_TYPES = {
    ExportFormat.csv: "text/csv; charset=utf-8",
    ExportFormat.jsonl: "application/x-ndjson",
}


@dataclass(frozen=True, slots=True)
class ExportSelection:
    """Which contacts an export reads: ``where`` on contacts, and a list to walk instead of the
    whole table (its members in ``(list_id, contact_id)`` key order: a page is one index range,
    where a membership sub-query made SQLite read the whole list again for every page)."""

    where: ColumnElement[bool]
    list_id: int | None = None


def export_filter(
    *,
    session: Session,
    tenant_id: int,
    list_id: int | None = None,
    segment_id: int | None = None,
    status: ContactStatus | None = None,
) -> ExportSelection:
    """Which of the tenant's contacts to export; checked before a byte is streamed, so a missing
    list (or another tenant's) answers 404, not a broken download."""
    conditions: list[ColumnElement[bool]] = [Contact.tenant_id == tenant_id]
    if status is not None:
        conditions.append(Contact.status == status.value)
    if list_id is not None:
        lists.get_list(session=session, tenant_id=tenant_id, list_id=list_id, field="list_id")
    if segment_id is not None:
        conditions.append(
            segment_filter(session=session, tenant_id=tenant_id, segment_id=segment_id)
        )
    return ExportSelection(where=and_(*conditions), list_id=list_id)


def segment_filter(*, session: Session, tenant_id: int, segment_id: int) -> ColumnElement[bool]:
    """The condition of the tenant's segment ``segment_id`` (another tenant's: 404 naming it)."""
    try:
        segment = segments.get_segment(session=session, tenant_id=tenant_id, segment_id=segment_id)
    except NotFound:
        raise NotFound("no such segment", field="segment_id") from None
    return segment_condition(
        parse_filter(segment.filter),
        tenant_id=tenant_id,
        dialect=session.get_bind().dialect.name,
    )


def export_contacts(
    sessions: sessionmaker[Session],
    *,
    selection: ExportSelection,
    file_format: ExportFormat,
    tenant_id: int,
) -> Iterator[bytes]:
    """The export, one encoded page at a time (the CSV header first)."""
    if file_format is ExportFormat.csv:
        yield csv_line(CSV_HEADER)
    after = 0
    while True:
        with transaction(sessions) as session:
            rows = session.execute(_page(selection, after)).all()
            memberships = _list_ids(session, tenant_id, [row.id for row in rows])
        if not rows:
            return
        if file_format is ExportFormat.csv:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\r\n").writerows(
                _csv_cells(row, memberships.get(row.id, [])) for row in rows
            )
            yield buffer.getvalue().encode()
        else:
            yield "".join(_jsonl_row(row, memberships.get(row.id, [])) for row in rows).encode()
        if len(rows) < EXPORT_PAGE:
            return
        after = rows[-1].id


def _page(selection: ExportSelection, after: int) -> Select[*tuple[Any, ...]]:
    """The next ``EXPORT_PAGE`` contacts after id ``after``."""
    if selection.list_id is None:
        return (
            select(*_COLUMNS)
            .where(selection.where, Contact.id > after)
            .order_by(Contact.id)
            .limit(EXPORT_PAGE)
        )
    return (
        select(*_COLUMNS)
        .select_from(ListMember)
        .join(Contact, Contact.id == ListMember.contact_id)
        .where(
            ListMember.list_id == selection.list_id,
            ListMember.contact_id > after,
            selection.where,
        )
        .order_by(ListMember.contact_id)
        .limit(EXPORT_PAGE)
    )


def _list_ids(session: Session, tenant_id: int, contact_ids: list[int]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    if not contact_ids:
        return found
    for contact_id, list_id in session.execute(
        select(ListMember.contact_id, ListMember.list_id)
        .where(
            ListMember.tenant_id == tenant_id,
            ListMember.contact_id >= contact_ids[0],
            ListMember.contact_id <= contact_ids[-1],
            ListMember.contact_id.in_(contact_ids),
        )
        .order_by(ListMember.contact_id, ListMember.list_id)
    ):
        found.setdefault(contact_id, []).append(list_id)
    return found


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def defuse(cell: str) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def csv_line(cells: tuple[str, ...] | list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(cells)
    return buffer.getvalue().encode()


def _csv_cells(row: Any, list_ids: list[int]) -> list[str]:
    # Only the free-text cells can start like a formula: dates and ids start with a digit, and
    # the attributes with "{".
    return [
        defuse(row.email),
        defuse(row.name or ""),
        defuse(row.first_name or ""),
        defuse(row.last_name or ""),
        row.status,
        defuse(row.timezone or ""),
        defuse(row.locale or ""),
        _iso(row.created_at) or "",
        _iso(row.updated_at) or "",
        " ".join(map(str, list_ids)),
        row.attributes or "{}",
    ]


def _jsonl_row(row: Any, list_ids: list[int]) -> str:
    record = {
        "id": row.id,
        "email": row.email,
        "name": row.name,
        "first_name": row.first_name,
        "last_name": row.last_name,
        "status": row.status,
        "timezone": row.timezone,
        "locale": row.locale,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "list_ids": list_ids,
    }
    # The stored attributes are JSON text already: spliced in, not decoded and encoded again.
    return _ENCODER.encode(record)[:-1] + ', "attributes": ' + (row.attributes or "{}") + "}\n"
