"""``tidings contacts``: bulk import of a CSV or JSON Lines file into a list, with a progress bar,
and export of a tenant's contacts (the same stream as ``GET /v1/contacts/export``)."""

from __future__ import annotations

import enum
import os
import sys
from datetime import datetime
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.orm import Session

from tidings.address_hash import address_key
from tidings.cli.common import console, fail, open_runtime, tenant_id_of, unit_of_work
from tidings.cli.progress import ImportProgress
from tidings.db.models import ContactList
from tidings.domain import ContactStatus
from tidings.private_files import create_private_file
from tidings.services import exports, imports, lists
from tidings.services.imports import ImportFormat, ImportResult
from tidings.services.pagination import MAX_LIMIT

contacts_app = typer.Typer(help="Contacts: bulk import into a list, export.", no_args_is_help=True)

JSON_LINES_SUFFIXES = frozenset({".jsonl", ".ndjson", ".jsonlines"})


class FileFormat(enum.StrEnum):
    csv = "csv"
    jsonl = "jsonl"


@contacts_app.command("import")
def import_file(
    file: Path = typer.Argument(
        ...,
        exists=True,
        file_okay=True,
        dir_okay=False,
        readable=True,
        help="A UTF-8 CSV file with a header line (an email column; name, first_name, last_name,"
        " timezone, locale, status; other columns become attributes), or JSON Lines.",
    ),
    list_name: str = typer.Option(..., "--list", help="The list every imported contact joins."),
    tenant: str = typer.Option(..., help="Tenant name."),
    file_format: FileFormat | None = typer.Option(
        None,
        "--format",
        help="csv or jsonl (default: from the file name; .jsonl and .ndjson are JSON Lines).",
        show_default=False,
    ),
    create_list: bool = typer.Option(
        False, "--create-list", help="Create the list when the tenant has none of that name."
    ),
    show_skipped: int = typer.Option(
        20, min=0, help="Skipped lines to list with their reason (all are counted)."
    ),
) -> None:
    """Upsert every contact of FILE by email and add it to a list, in one transaction.

    A file that cannot be read (not UTF-8, no email column) changes nothing; rows that are bad on
    their own are skipped and reported with their line number and reason.
    """
    chosen = file_format or (
        FileFormat.jsonl if file.suffix.lower() in JSON_LINES_SUFFIXES else FileFormat.csv
    )
    with open_runtime() as runtime:
        with unit_of_work(runtime) as session:
            owner = tenant_id_of(session, tenant)
            contact_list, created_list = _list_named(
                session, owner, list_name, create=create_list, now=runtime.clock.now()
            )
            with (
                file.open("rb") as handle,
                ImportProgress(console, file.stat().st_size, f"importing {file.name}") as bar,
            ):
                result = imports.import_contacts(
                    session=session,
                    tenant_id=owner,
                    list_id=contact_list.id,
                    chunks=bar.chunks(handle),
                    file_format=(
                        ImportFormat.json_lines if chosen is FileFormat.jsonl else ImportFormat.csv
                    ),
                    now=runtime.clock.now(),
                    max_attributes_bytes=runtime.settings.max_attributes_bytes,
                    address_key=address_key(runtime.secret_key),
                )
        # Reported only now: the transaction has committed.
        if created_list:
            console.print(f"created list {contact_list.name!r} (id {contact_list.id})")
        _report(result, list_name=contact_list.name, show_skipped=show_skipped)


@contacts_app.command("export")
def export_file(
    tenant: str = typer.Option(..., help="Tenant name."),
    file_format: FileFormat = typer.Option(FileFormat.csv, "--format", help="csv or jsonl."),
    list_name: str | None = typer.Option(None, "--list", help="Only members of this list."),
    status: ContactStatus | None = typer.Option(None, help="Only contacts in this status."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write here (created mode 0600); default: standard output."
    ),
) -> None:
    """Write every matching contact with its attributes and list ids, read in keyset pages.

    CSV has a fixed header and the attributes as one JSON column (see the README); JSON Lines
    has one object per contact.
    """
    with open_runtime() as runtime:
        with unit_of_work(runtime) as session:
            owner = tenant_id_of(session, tenant)
            list_id = None
            if list_name is not None:
                contact_list, _ = _list_named(
                    session, owner, list_name, create=False, now=runtime.clock.now()
                )
                list_id = contact_list.id
            where = exports.export_filter(
                session=session, tenant_id=owner, list_id=list_id, status=status
            )
        stream = exports.export_contacts(
            runtime.sessions,
            selection=where,
            file_format=exports.ExportFormat(file_format.value),
            tenant_id=owner,
        )
        if output is None:
            sink = sys.stdout.buffer
            for chunk in stream:
                sink.write(chunk)
            sink.flush()
            return
        fd = create_private_file(output)
        if fd is None:  # never overwrite: a file of personal data may be someone else's
            raise fail(f"{output} already exists; give another --output or remove it")
        with os.fdopen(fd, "wb") as handle:
            for chunk in stream:
                handle.write(chunk)
        console.print(f"wrote {output}", highlight=False)


def _list_named(
    session: Session, tenant_id: int, name: str, *, create: bool, now: datetime
) -> tuple[ContactList, bool]:
    """The tenant's list called ``name`` (and False), or a new one when ``create`` (and True)."""
    cursor: str | None = None
    while True:
        page = lists.list_lists(
            session=session, tenant_id=tenant_id, limit=MAX_LIMIT, cursor=cursor
        )
        for contact_list in page.items:
            if contact_list.name == name.strip():
                return contact_list, False
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    if not create:
        raise fail(f"no list named {name!r}; add --create-list to create it")
    return lists.create_list(
        session=session, tenant_id=tenant_id, name=name, description=None, now=now
    ), True


def _report(result: ImportResult, *, list_name: str, show_skipped: int) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("rows", f"{result.total_rows:,}")
    table.add_row("created", f"{result.created:,}")
    table.add_row("updated", f"{result.updated:,}")
    table.add_row(f"added to {escape(list_name)}", f"{result.added_to_list:,}")
    table.add_row("skipped", f"{result.skipped_count:,}")
    console.print(table)
    shown = result.skipped[:show_skipped]
    if not shown:
        return
    skipped = Table("line", "reason", title="skipped lines", title_justify="left")
    for row in shown:
        skipped.add_row(str(row.line), escape(row.reason))
    console.print(skipped)
    if result.skipped_count > len(shown):
        console.print(f"… and {result.skipped_count - len(shown):,} more skipped")
