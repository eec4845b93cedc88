"""Bulk import: a CSV or JSON Lines file upserted into contacts and added to one list, set-based.

The rows stream into a temporary staging table (``COPY`` on PostgreSQL, ``executemany`` in chunks
on SQLite); duplicates inside the file are then found in SQL, and two statements do the rest: an
``INSERT … SELECT … ON CONFLICT (tenant_id, email) DO UPDATE`` into contacts and an ``INSERT …
SELECT … ON CONFLICT DO NOTHING`` into the list. Everything runs in the caller's transaction, so a
fatal error anywhere leaves nothing behind.

What an import changes on a contact that exists: fields with a value in the file replace the stored
ones, empty cells change nothing, attributes merge key by key (the merged object must fit the cap,
else the row is skipped), and ``status`` only ever moves away from ``active``: an import can record
that someone unsubscribed elsewhere, it can never re-subscribe them. The second occurrence of an
address in the same file is skipped ("duplicate of line N"), never merged.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy import bindparam, select, text
from sqlalchemy.orm import Session

from tidings.db.models import ContactList
from tidings.db.types import UTCDateTime
from tidings.errors import InvalidInput, NotFound
from tidings.services import suppressions
from tidings.services.contacts import attributes_json
from tidings.services.import_files import (
    MAX_ROW_BYTES,
    MAX_SKIPPED_REPORTED,
    STAGED_COLUMNS,
    ContactRows,
    ImportFormat,
    SkippedRow,
    Skips,
)

SQLITE_STAGING_BATCH = 5_000  # rows per executemany: large enough to amortise, small in memory
IMPORT_WORK_MEM = "64MB"  # PostgreSQL work_mem for the import's transaction only (SET LOCAL)

__all__ = ["ImportFormat", "ImportResult", "SkippedRow", "import_contacts"]


@dataclass(frozen=True)
class ImportResult:
    created: int  # new contacts
    updated: int  # contacts that existed, updated from the file
    added_to_list: int  # contacts that were not yet members of the list
    total_rows: int  # data rows in the file (blank lines and the CSV header not counted)
    skipped: list[SkippedRow]  # the first ones by line
    skipped_count: int


def import_contacts(
    *,
    session: Session,
    tenant_id: int,
    list_id: int,
    chunks: Iterable[bytes],
    file_format: ImportFormat,
    now: datetime,
    max_attributes_bytes: int,
    address_key: bytes,
    max_row_bytes: int = MAX_ROW_BYTES,
    max_skipped: int = MAX_SKIPPED_REPORTED,
) -> ImportResult:
    """Imports the file read from ``chunks`` into the tenant's list ``list_id``.

    Raises InvalidInput or PayloadTooLarge for a file that cannot be read (the caller's rollback
    then undoes everything); rows that are bad on their own are skipped and reported.
    ``address_key``: the erasure key; an erased address that comes back stays suppressed.
    """
    _lock_list(session, tenant_id, list_id)
    skips = Skips(max_skipped)
    rows = ContactRows(
        chunks,
        file_format,
        max_row_bytes=max_row_bytes,
        max_attributes_bytes=max_attributes_bytes,
        skips=skips,
    )
    postgres = session.get_bind().dialect.name == "postgresql"
    staging = f"import_staging_{uuid.uuid4().hex[:16]}"
    params = {"tenant_id": tenant_id, "list_id": list_id, "now": now}
    if postgres:
        # The sort and the hash join over the staged rows fit in memory instead of spilling.
        session.execute(text(f"SET LOCAL work_mem = '{IMPORT_WORK_MEM}'"))
        _stage_postgres(session, staging, rows)
        _drop_duplicates(session, staging, skips)
        created, updated, added = _upsert_postgres(
            session, staging, skips, {**params, "max_bytes": max_attributes_bytes}
        )
    else:
        _stage_sqlite(session, staging, rows)
        _drop_duplicates(session, staging, skips)
        _merge_attributes_sqlite(session, staging, skips, tenant_id, max_attributes_bytes)
        created, updated, added = _upsert_sqlite(session, staging, params)
    if suppressions.has_erased(session=session, tenant_id=tenant_id):
        staged = session.execute(text(f"SELECT email FROM {staging}")).scalars()
        suppressions.restore_erased(
            session=session,
            tenant_id=tenant_id,
            addresses=staged,
            address_key=address_key,
        )
    session.execute(text(f"DROP TABLE {staging}"))
    return ImportResult(
        created=created,
        updated=updated,
        added_to_list=added,
        total_rows=rows.total_rows,
        skipped=skips.rows(),
        skipped_count=skips.count,
    )


def _lock_list(session: Session, tenant_id: int, list_id: int) -> None:
    # FOR KEY SHARE (PostgreSQL): the list cannot be deleted under a running import, which would
    # otherwise end in a foreign-key error instead of an answer. SQLite's write lock does the same.
    found = session.scalar(
        select(ContactList.id)
        .where(ContactList.tenant_id == tenant_id, ContactList.id == list_id)
        .with_for_update(read=True, key_share=True)
    )
    if found is None:
        raise NotFound("no such list")


def _driver_connection(session: Session) -> Any:
    return session.connection().connection.driver_connection


def _stage_postgres(session: Session, staging: str, rows: ContactRows) -> None:
    session.execute(
        text(
            f"CREATE TEMP TABLE {staging} (line bigint NOT NULL, email text NOT NULL, name text,"
            " first_name text, last_name text, timezone text, locale text,"
            " attributes jsonb NOT NULL, status text) ON COMMIT DROP"
        )
    )
    columns = ", ".join(STAGED_COLUMNS)
    # One COPY for the whole file, fed as rows are parsed; an error inside aborts the COPY and the
    # transaction with it.
    with (
        _driver_connection(session).cursor() as cursor,
        cursor.copy(f"COPY {staging} ({columns}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)


def _stage_sqlite(session: Session, staging: str, rows: ContactRows) -> None:
    session.execute(
        text(
            f"CREATE TEMP TABLE {staging} (line INTEGER PRIMARY KEY, email TEXT NOT NULL, name TEXT,"
            " first_name TEXT, last_name TEXT, timezone TEXT, locale TEXT,"
            " attributes TEXT NOT NULL, status TEXT)"
        )
    )
    insert = f"INSERT INTO {staging} VALUES ({', '.join('?' * len(STAGED_COLUMNS))})"
    connection = _driver_connection(session)
    batches = iter(rows)
    while batch := list(islice(batches, SQLITE_STAGING_BATCH)):
        connection.executemany(insert, batch)


def _drop_duplicates(session: Session, staging: str, skips: Skips) -> None:
    """Keeps the first row of each address; the later ones are skipped, naming the first."""
    staged, distinct = session.execute(
        text(f"SELECT count(*), count(DISTINCT email) FROM {staging}")
    ).one()
    if staged == distinct:
        return
    first_rows = session.execute(
        text(
            f"SELECT s.line, f.first_line FROM {staging} s JOIN"
            f" (SELECT email, min(line) AS first_line FROM {staging} GROUP BY email"
            "  HAVING count(*) > 1) f ON f.email = s.email"
            " WHERE s.line > f.first_line ORDER BY s.line LIMIT :cap"
        ),
        {"cap": skips.cap},
    )
    skips.extend(
        (SkippedRow(line, f"duplicate of line {first}") for line, first in first_rows),
        staged - distinct,
    )
    session.execute(
        text(
            f"DELETE FROM {staging} WHERE line NOT IN"
            f" (SELECT min(line) FROM {staging} GROUP BY email)"
        )
    )


# Fields from the file win when present; empty cells keep what is stored (see the module docstring).
_KEEP_UNLESS_GIVEN = ", ".join(
    f"{field} = coalesce(excluded.{field}, contacts.{field})"
    for field in ("name", "first_name", "last_name", "timezone", "locale")
)
_STATUS_ONLY_AWAY_FROM_ACTIVE = (
    "status = CASE WHEN contacts.status = 'active' THEN excluded.status ELSE contacts.status END"
)
_NEW_CONTACT_COLUMNS = (
    "tenant_id, email, name, first_name, last_name, timezone, locale, attributes, status,"
    " created_at, updated_at"
)


def _upsert_postgres(
    session: Session, staging: str, skips: Skips, params: dict[str, Any]
) -> tuple[int, int, int]:
    """Upsert and list membership in one statement; a row whose merged attributes would be over
    the cap is neither updated nor added, and is reported as skipped.

    Rows are upserted in address order (byte order: cheap to sort, the same in every session), so
    two imports touching the same contacts lock them in the same order and cannot deadlock.
    ``xmax = 0`` holds only for a row version this statement inserted: created, not updated.
    """
    statement = text(
        f"WITH up AS ("
        f" INSERT INTO contacts ({_NEW_CONTACT_COLUMNS})"
        f" SELECT :tenant_id, s.email, s.name, s.first_name, s.last_name, s.timezone, s.locale,"
        f"  s.attributes, coalesce(s.status, 'active'), :now, :now FROM {staging} s"
        f'  ORDER BY s.email COLLATE "C"'
        f" ON CONFLICT (tenant_id, email) DO UPDATE SET {_KEEP_UNLESS_GIVEN},"
        f"  attributes = contacts.attributes || excluded.attributes,"
        f"  {_STATUS_ONLY_AWAY_FROM_ACTIVE}, updated_at = excluded.updated_at"
        f" WHERE octet_length((contacts.attributes || excluded.attributes)::text) <= :max_bytes"
        f" RETURNING contacts.id, (contacts.xmax = 0) AS created"
        f"), added AS ("
        f" INSERT INTO list_members (list_id, contact_id, tenant_id, added_at)"
        f" SELECT :list_id, up.id, :tenant_id, :now FROM up ON CONFLICT DO NOTHING RETURNING 1"
        f") SELECT (SELECT count(*) FROM up WHERE created), (SELECT count(*) FROM up WHERE NOT created),"
        f" (SELECT count(*) FROM added), (SELECT count(*) FROM {staging})"
    ).bindparams(bindparam("now", type_=UTCDateTime()))
    created, updated, added, staged = session.execute(statement, params).one()
    if created + updated < staged:
        # Every row this statement wrote carries this import's timestamp; the rows it left alone
        # (their merged attributes would not fit) still carry an earlier one.
        rejected = (
            session.execute(
                text(
                    f"SELECT s.line FROM {staging} s JOIN contacts c"
                    " ON c.tenant_id = :tenant_id AND c.email = s.email"
                    " WHERE c.updated_at <> :now ORDER BY s.line"
                ).bindparams(bindparam("now", type_=UTCDateTime())),
                params,
            )
            .scalars()
            .all()
        )
        reason = (
            f"attributes would be over {params['max_bytes']} bytes once merged"
            " with the contact's stored ones"
        )
        skips.extend((SkippedRow(line, reason) for line in rejected[: skips.cap]), len(rejected))
    return created, updated, added


def _merge_attributes_sqlite(
    session: Session, staging: str, skips: Skips, tenant_id: int, max_bytes: int
) -> None:
    """Writes the merged attributes into the staging rows of existing contacts.

    SQLite has no shallow JSON merge (``json_patch`` recurses and drops nulls), and SQLite holds
    the database's write lock for the whole transaction, so merging here in Python cannot race.
    """
    pairs = session.execute(
        text(
            f"SELECT s.line, s.attributes, c.attributes FROM {staging} s"
            " JOIN contacts c ON c.tenant_id = :tenant_id AND c.email = s.email"
            " WHERE s.attributes <> '{}' AND c.attributes <> '{}'"
        ),
        {"tenant_id": tenant_id},
    ).all()
    merged: list[tuple[str, int]] = []
    rejected: list[tuple[int]] = []
    for line, new, old in pairs:
        try:
            merged.append(
                (attributes_json({**json.loads(old), **json.loads(new)}, max_bytes=max_bytes), line)
            )
        except InvalidInput:
            rejected.append((line,))
            skips.add(
                line,
                f"attributes would be over {max_bytes} bytes once merged with the contact's stored ones",
            )
    connection = _driver_connection(session)
    connection.executemany(f"UPDATE {staging} SET attributes = ? WHERE line = ?", merged)
    connection.executemany(f"DELETE FROM {staging} WHERE line = ?", rejected)


def _upsert_sqlite(session: Session, staging: str, params: dict[str, Any]) -> tuple[int, int, int]:
    now = bindparam("now", type_=UTCDateTime())
    staged, existing = session.execute(
        text(
            f"SELECT count(*), (SELECT count(*) FROM {staging} s JOIN contacts c"
            f" ON c.tenant_id = :tenant_id AND c.email = s.email) FROM {staging}"
        ),
        params,
    ).one()
    # "WHERE true": SQLite's documented way to keep ON CONFLICT from parsing as a join's ON.
    session.execute(
        text(
            f"INSERT INTO contacts ({_NEW_CONTACT_COLUMNS})"
            f" SELECT :tenant_id, email, name, first_name, last_name, timezone, locale, attributes,"
            f" coalesce(status, 'active'), :now, :now FROM {staging} WHERE true ORDER BY email"
            f" ON CONFLICT (tenant_id, email) DO UPDATE SET {_KEEP_UNLESS_GIVEN},"
            f" attributes = CASE WHEN excluded.attributes = '{{}}' THEN contacts.attributes"
            f" ELSE excluded.attributes END,"
            f" {_STATUS_ONLY_AWAY_FROM_ACTIVE}, updated_at = excluded.updated_at"
        ).bindparams(now),
        params,
    )
    added = session.execute(  # type: ignore[attr-defined]  # an INSERT's result has rowcount
        text(
            "INSERT INTO list_members (list_id, contact_id, tenant_id, added_at)"
            f" SELECT :list_id, c.id, :tenant_id, :now FROM {staging} s"
            " JOIN contacts c ON c.tenant_id = :tenant_id AND c.email = s.email WHERE true"
            " ON CONFLICT DO NOTHING"
        ).bindparams(now),
        params,
    ).rowcount
    return staged - existing, existing, added
