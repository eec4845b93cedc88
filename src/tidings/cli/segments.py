"""``tidings segments``: list, create and preview saved filters over a tenant's contacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from tidings.cli.common import console, fail, open_runtime, tenant_id_of, unit_of_work
from tidings.services import segments
from tidings.services.pagination import MAX_LIMIT

segments_app = typer.Typer(
    help="Segments: saved filters over contacts, usable as a campaign's audience.",
    no_args_is_help=True,
)

FILTER_HELP = (
    'The filter as JSON, e.g. \'{"all": [{"field": "attributes.city", "op": "eq", "value": '
    '"Paris"}, {"field": "status", "op": "eq", "value": "active"}]}\', or @FILE to read it from '
    "a file."
)


def _filter(value: str) -> Any:
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise typer.BadParameter(
                f"cannot read {value[1:]}: {exc.strerror}", param_hint="--filter"
            ) from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--filter") from None


@segments_app.command("list")
def list_command(
    tenant: str = typer.Option(..., help="Tenant name."),
    counts: bool = typer.Option(
        True, "--counts/--no-counts", help="Count each segment's contacts (one query each)."
    ),
) -> None:
    """The tenant's segments with their filters (and how many contacts each matches now)."""
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        owner = tenant_id_of(session, tenant)
        rows: list[tuple[str, ...]] = []
        cursor: str | None = None
        while True:
            page = segments.list_segments(
                session=session, tenant_id=owner, limit=MAX_LIMIT, cursor=cursor
            )
            for segment in page.items:
                matching = (
                    f"{segments.count_matching(session=session, segment=segment):,}"
                    if counts
                    else "-"
                )
                rows.append((str(segment.id), segment.name, matching, json.dumps(segment.filter)))
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    table = Table("id", "name", "contacts", "filter")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)


@segments_app.command("create")
def create(
    tenant: str = typer.Option(..., help="Tenant name."),
    name: str = typer.Option(..., help="The segment's name (unique in the tenant)."),
    filter_json: str = typer.Option(..., "--filter", help=FILTER_HELP),
) -> None:
    """Save a filter as a named segment (checked first: an error names the part that is wrong)."""
    raw = _filter(filter_json)
    with open_runtime() as runtime:
        with unit_of_work(runtime) as session:
            owner = tenant_id_of(session, tenant)
            segment = segments.create_segment(
                session=session, tenant_id=owner, name=name, raw_filter=raw, now=runtime.clock.now()
            )
            matching = segments.count_matching(session=session, segment=segment)
        console.print(f"segment {segment.id} created: {matching:,} contacts match now")


@segments_app.command("preview")
def preview(
    tenant: str = typer.Option(..., help="Tenant name."),
    filter_json: str | None = typer.Option(None, "--filter", help=FILTER_HELP, show_default=False),
    segment_id: int | None = typer.Option(
        None,
        "--segment",
        min=1,
        help="A saved segment's id instead of --filter.",
        show_default=False,
    ),
) -> None:
    """How many contacts a filter (or a saved segment) matches, and the first ten."""
    if (filter_json is None) == (segment_id is None):
        raise fail("give either --filter or --segment", 2)
    with open_runtime() as runtime, unit_of_work(runtime) as session:
        owner = tenant_id_of(session, tenant)
        raw = (
            _filter(filter_json)
            if filter_json is not None
            else segments.get_segment(
                session=session, tenant_id=owner, segment_id=segment_id or 0
            ).filter
        )
        found = segments.preview(session=session, tenant_id=owner, raw=raw)
        sample = [(str(c.id), c.email, c.name or "", c.status) for c in found.sample]
    console.print(f"{found.count:,} contacts match")
    if sample:
        table = Table("id", "email", "name", "status", title="first ones", title_justify="left")
        for row in sample:
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
