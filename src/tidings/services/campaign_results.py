"""A campaign's results per recipient (``GET /v1/campaigns/{id}/recipients``): each message's
address, status, last event, and a person's first open and first click, as CSV or a JSON array.

Streamed like the contact export (``services/exports.py``: short transaction per keyset page, CSV
cells defused the same way), so memory stays flat at a million recipients. The pages walk the
campaign's messages by ``contact_id`` through the unique ``(campaign_id, contact_id)`` index the
fan-out already keeps, so a page is one index range whatever the filters, and no index is added
for the export; then the few messages whose contact was deleted (``contact_id`` NULL), by id, in
the same index. A message whose contact is deleted while the export runs may appear twice.

What the columns mean:

* ``first_opened_at``/``first_clicked_at``: a person's first open / click (``messages``' columns
  of migration 0025, kept by the tracking flush); machines' (privacy proxies, scanners) never set
  them, and they outlive the purge of the hits. A click does not imply an open here, as in
  ``stats``: ``opened=true`` means the pixel was fetched by a person.
* ``last_event``/``last_event_at``: the message's latest delivery event (``sent``, ``deferred``,
  ``bounced``, ``complained`` …), blank once the retention purge took its events.
* ``error``: the receiving server's last reply, for messages not sent (or sent and bounced).
"""

from __future__ import annotations

import csv
import enum
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, select
from sqlalchemy.orm import Session, sessionmaker

from tidings.db.engine import transaction
from tidings.db.models import Contact, Event, Message
from tidings.domain import MessageStatus
from tidings.services.campaigns import get_campaign
from tidings.services.exports import csv_line, defuse

RESULTS_PAGE = 1_000  # messages per read: one short transaction, a few hundred KB of output
CSV_HEADER = (
    "message_id",
    "contact_id",
    "email",
    "name",
    "status",
    "sent_at",
    "last_event",
    "last_event_at",
    "first_opened_at",
    "first_clicked_at",
    "error",
)
#: The contact's name by a look-up per row, not a join: PostgreSQL merge-joined the page with
#: ``contacts`` scanned from its first id, so each page read every contact before it (a page
#: deep into 200,000 recipients took 57 ms, and the export grew quadratically).
_NAME = (
    select(Contact.name)
    .where(Contact.id == Message.contact_id, Contact.tenant_id == Message.tenant_id)
    .scalar_subquery()
    .label("name")
)
_COLUMNS = (
    Message.id,
    Message.contact_id,
    Message.to_address,
    _NAME,
    Message.status,
    Message.sent_at,
    Message.first_opened_at,
    Message.first_clicked_at,
    Message.last_error,
)


class ResultsFormat(enum.StrEnum):
    csv = "csv"
    # A JSON array, not JSON Lines: the result is one document a spreadsheet tool or ``jq`` reads
    # whole; it is still written as it is read.
    json = "json"


MEDIA_TYPES = {
    ResultsFormat.csv: "text/csv; charset=utf-8",
    ResultsFormat.json: "application/json",
}
_ENCODER = json.JSONEncoder(ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class ResultsSelection:
    """Which of a campaign's messages the export reads (checked before a byte is streamed)."""

    tenant_id: int
    campaign_id: int
    status: MessageStatus | None = None
    opened: bool | None = None  # a person opened it (True), or not (False); None: either
    clicked: bool | None = None

    def where(self) -> ColumnElement[bool]:
        conditions: list[ColumnElement[bool]] = [
            Message.campaign_id == self.campaign_id,
            Message.tenant_id == self.tenant_id,
        ]
        if self.status is not None:
            conditions.append(Message.status == self.status.value)
        for wanted, column in (
            (self.opened, Message.first_opened_at),
            (self.clicked, Message.first_clicked_at),
        ):
            if wanted is not None:
                conditions.append(column.is_not(None) if wanted else column.is_(None))
        return and_(*conditions)


def results_selection(
    *,
    session: Session,
    tenant_id: int,
    campaign_id: int,
    status: MessageStatus | None = None,
    opened: bool | None = None,
    clicked: bool | None = None,
) -> ResultsSelection:
    """The selection, once the campaign is known to be the tenant's (else NotFound: a 404, not a
    broken download)."""
    get_campaign(session=session, tenant_id=tenant_id, campaign_id=campaign_id)
    return ResultsSelection(tenant_id, campaign_id, status, opened, clicked)


def download_headers(selection: ResultsSelection, file_format: ResultsFormat) -> dict[str, str]:
    """The headers of the download (API and dashboard alike): a file name, and no caching."""
    name = f"campaign-{selection.campaign_id}-recipients.{file_format.value}"
    return {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}


def export_results(
    sessions: sessionmaker[Session], *, selection: ResultsSelection, file_format: ResultsFormat
) -> Iterator[bytes]:
    """The export, one encoded page at a time (the CSV header, or ``[``, first)."""
    first = True
    yield csv_line(CSV_HEADER) if file_format is ResultsFormat.csv else b"["
    for rows, last_events in _pages(sessions, selection):
        if file_format is ResultsFormat.csv:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\r\n").writerows(
                _csv_cells(row, last_events.get(row.id)) for row in rows
            )
            yield buffer.getvalue().encode()
        else:
            records = ",\n".join(_json_record(row, last_events.get(row.id)) for row in rows)
            yield (("\n" if first else ",\n") + records).encode()
        first = False
    if file_format is ResultsFormat.json:
        yield b"\n]\n" if not first else b"]\n"


def _pages(
    sessions: sessionmaker[Session], selection: ResultsSelection
) -> Iterator[tuple[Sequence[Any], dict[int, tuple[str, datetime]]]]:
    """Keyset pages: by ``contact_id`` first, then the messages without a contact by id."""
    where = selection.where()
    for detached in (False, True):
        after = 0
        while True:
            with transaction(sessions) as session:
                rows = session.execute(_page(where, detached=detached, after=after)).all()
                last_events = _last_events(session, [row.id for row in rows])
            if rows:
                yield rows, last_events
            if len(rows) < RESULTS_PAGE:
                break
            after = rows[-1].id if detached else rows[-1].contact_id


def _page(where: ColumnElement[bool], *, detached: bool, after: int) -> Select[*tuple[Any, ...]]:
    query = select(*_COLUMNS)
    if detached:
        return (
            query.where(where, Message.contact_id.is_(None), Message.id > after)
            .order_by(Message.id)
            .limit(RESULTS_PAGE)
        )
    return (
        query.where(where, Message.contact_id > after)
        .order_by(Message.contact_id)
        .limit(RESULTS_PAGE)
    )


def _last_events(session: Session, message_ids: list[int]) -> dict[int, tuple[str, datetime]]:
    """Each message's latest event. Its events are read whole through ``ix_events_message``
    (a message has a handful), in id order, the last one kept: ``id IN (SELECT max(id) … GROUP
    BY message_id)`` made SQLite take ten times longer."""
    found: dict[int, tuple[str, datetime]] = {}
    if not message_ids:
        return found
    rows = session.execute(
        select(Event.message_id, Event.type, Event.created_at)
        .where(Event.message_id.in_(message_ids))
        .order_by(Event.message_id, Event.id)
    )
    for message_id, kind, at in rows:
        if message_id is not None:
            found[message_id] = (kind, at)
    return found


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _error(row: Any) -> str | None:
    # A sent message may keep the reply of an earlier, deferred attempt: not an error any more.
    return None if row.status == MessageStatus.sent.value else row.last_error


def _csv_cells(row: Any, last: tuple[str, datetime] | None) -> list[str]:
    # Free text (address, name, the server's reply) is defused; ids, statuses, event types and
    # dates are ours and start with a letter or a digit.
    return [
        str(row.id),
        "" if row.contact_id is None else str(row.contact_id),
        defuse(row.to_address),
        defuse(row.name or ""),
        row.status,
        _iso(row.sent_at) or "",
        last[0] if last else "",
        _iso(last[1]) or "" if last else "",
        _iso(row.first_opened_at) or "",
        _iso(row.first_clicked_at) or "",
        defuse(_error(row) or ""),
    ]


def _json_record(row: Any, last: tuple[str, datetime] | None) -> str:
    return _ENCODER.encode(
        {
            "message_id": row.id,
            "contact_id": row.contact_id,
            "email": row.to_address,
            "name": row.name,
            "status": row.status,
            "sent_at": _iso(row.sent_at),
            "last_event": last[0] if last else None,
            "last_event_at": _iso(last[1]) if last else None,
            "first_opened_at": _iso(row.first_opened_at),
            "first_clicked_at": _iso(row.first_clicked_at),
            "error": _error(row),
        }
    )
