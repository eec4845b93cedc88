"""How long a segment preview (count + first ten) takes on a large tenant, and a fan-out from a
segment, on each database.

Creates its own databases (a temporary SQLite file; a throw-away PostgreSQL database, dropped at
the end), seeds ``--contacts`` contacts with realistic attributes (COPY on PostgreSQL, multi-row
executemany on SQLite), a list of 30 % of them, and another tenant as large as a tenth of it (so
the tenant condition does real work), then times ``segments.preview`` for a few filters (median
of ``--runs``) and the whole fan-out of a campaign to one segment (3 % of the tenant: a sparse
audience), with its number of chunks and its longest chunk transaction. Prints figures; asserts
nothing about time.

    python bench/bench_segments.py [--contacts 1000000] [--runs 3] [--skip-sqlite] [--pg URL]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from databases import PG_ADMIN_URL, postgres_database, sqlite_database
from sqlalchemy import Engine, func, insert, literal, select, text

from tidings.db.engine import make_engine, make_session_factory, transaction, upgrade
from tidings.db.models import (
    Campaign,
    Contact,
    ContactList,
    ListMember,
    Message,
    Segment,
    Template,
    Tenant,
)
from tidings.db.types import BigId
from tidings.domain import CampaignStatus
from tidings.queue.fanout import fan_out_campaign, prepare_campaign
from tidings.services import segments

SEED_BATCH = 20_000  # rows per executemany (SQLite) or per COPY buffer flush (PostgreSQL)
CITIES = ["Paris"] * 5 + ["Lyon"] * 3 + ["Nice"] * 2 + [f"City{i}" for i in range(90)]
PLANS = ["free"] * 7 + ["pro"] * 2 + ["team"]

#: (label, filter): the kinds of segment people build, from index-friendly to full scans.
FILTERS: list[tuple[str, Callable[[int], dict[str, Any]]]] = [
    ("city eq Paris (5 %)", lambda _l: {"field": "attributes.city", "op": "eq", "value": "Paris"}),
    (
        "city eq a rare one (0.01 %)",
        lambda _l: {"field": "attributes.city", "op": "eq", "value": "Reykjavik"},
    ),
    (
        "plan pro and 30 <= age < 40",
        lambda _l: {
            "all": [
                {"field": "attributes.plan", "op": "eq", "value": "pro"},
                {"field": "attributes.age", "op": "gte", "value": 30},
                {"field": "attributes.age", "op": "lt", "value": 40},
            ]
        },
    ),
    (
        "city in [Lyon, Nice] or not free",
        lambda _l: {
            "any": [
                {"field": "attributes.city", "op": "in", "value": ["Lyon", "Nice"]},
                {"not": {"field": "attributes.plan", "op": "eq", "value": "free"}},
            ]
        },
    ),
    ("email contains '4242'", lambda _l: {"field": "email", "op": "contains", "value": "4242"}),
    (
        "in_list and city ne Paris and active",
        lambda list_id: {
            "all": [
                {"in_list": list_id},
                {"field": "attributes.city", "op": "ne", "value": "Paris"},
                {"field": "status", "op": "eq", "value": "active"},
            ]
        },
    ),
]
FAN_OUT_FILTER = FILTERS[2]


def _people(tenant_id: int, count: int, now: datetime, prefix: str) -> Iterator[dict[str, Any]]:
    pick = random.Random(tenant_id)
    for i in range(count):
        city = "Reykjavik" if i % 10_000 == 7 else pick.choice(CITIES)
        yield {
            "tenant_id": tenant_id,
            "email": f"{prefix}{i}@example.com",
            "first_name": f"P{i}",
            "attributes": {
                "city": city,
                "plan": pick.choice(PLANS),
                "age": pick.randint(18, 80),
                "score": round(pick.random(), 3),
                "newsletter": pick.random() < 0.8,
            },
            "status": "active" if pick.random() < 0.95 else "unsubscribed",
            "created_at": now - timedelta(minutes=count - i),
            "updated_at": now,
        }


def _copy_contacts(engine: Engine, rows: Iterator[dict[str, Any]]) -> None:
    columns = [
        "tenant_id",
        "email",
        "first_name",
        "attributes",
        "status",
        "created_at",
        "updated_at",
    ]
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(f"COPY contacts ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(
                    [json.dumps(row[c]) if c == "attributes" else row[c] for c in columns]
                )
        raw.commit()
    finally:
        raw.close()


def _insert_contacts(engine: Engine, rows: Iterator[dict[str, Any]]) -> None:
    with engine.begin() as connection:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == SEED_BATCH:
                connection.execute(insert(Contact), batch)
                batch = []
        if batch:
            connection.execute(insert(Contact), batch)


def seed(url: str, contacts: int) -> tuple[int, int, int]:
    """(tenant id, template id, list id) of the measured tenant."""
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    now = datetime.now(UTC)
    with transaction(sessions) as session:
        tenants = [Tenant(name=n, created_at=now) for n in ("bench", "neighbour")]
        session.add_all(tenants)
        session.flush()
        tenant_id, neighbour = tenants[0].id, tenants[1].id
        template = Template(
            tenant_id=tenant_id,
            name="news",
            subject="Hi",
            html="<p>hi</p>",
            created_at=now,
            updated_at=now,
        )
        contact_list = ContactList(tenant_id=tenant_id, name="customers", created_at=now)
        session.add_all([template, contact_list])
        session.flush()
        template_id, list_id = template.id, contact_list.id
    write = _copy_contacts if engine.dialect.name == "postgresql" else _insert_contacts
    started = time.perf_counter()
    write(engine, _people(tenant_id, contacts, now, "person"))
    write(engine, _people(neighbour, contacts // 10, now, "other"))
    with engine.begin() as connection:
        connection.execute(
            insert(ListMember).from_select(
                ["list_id", "contact_id", "tenant_id", "added_at"],
                select(
                    literal(list_id, BigId), Contact.id, Contact.tenant_id, Contact.created_at
                ).where(Contact.tenant_id == tenant_id, Contact.id % 10 < 3),
            )
        )
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    else:
        with engine.begin() as connection:
            connection.execute(text("ANALYZE"))
    print(
        f"  seeded {contacts:,} + {contacts // 10:,} contacts in {time.perf_counter() - started:.1f} s"
    )
    engine.dispose()
    return tenant_id, template_id, list_id


def time_previews(url: str, tenant_id: int, list_id: int, runs: int) -> None:
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    for label, build in FILTERS:
        timings = []
        count = 0
        for _ in range(runs):
            with sessions() as session:
                started = time.perf_counter()
                found = segments.preview(session=session, tenant_id=tenant_id, raw=build(list_id))
                timings.append(time.perf_counter() - started)
                count = found.count
        print(
            f"  preview {label:<38} {count:>9,} contacts: median {statistics.median(timings) * 1000:7.1f} ms"
            f" (runs: {', '.join(f'{t * 1000:.0f}' for t in timings)} ms)"
        )
    engine.dispose()


def time_fan_out(url: str, tenant_id: int, template_id: int, list_id: int) -> None:
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    now = datetime.now(UTC)
    label, build = FAN_OUT_FILTER
    with transaction(sessions) as session:
        segment = Segment(
            tenant_id=tenant_id, name="fan", filter=build(list_id), created_at=now, updated_at=now
        )
        session.add(segment)
        session.flush()
        campaign = Campaign(
            tenant_id=tenant_id,
            name="from a segment",
            template_id=template_id,
            list_ids=[],
            contact_ids=[],
            segment_ids=[segment.id],
            data={},
            priority=5,
            status=CampaignStatus.running.value,
            recipient_count=0,
            created_at=now,
            started_at=now,
        )
        session.add(campaign)
        session.flush()
        campaign_id = campaign.id
    started = time.perf_counter()
    with transaction(sessions) as session:
        result = fan_out_campaign(
            session=session,
            campaign=session.get_one(Campaign, campaign_id),
            now=now,
            ttl_seconds=432_000,
        )
    marks = [time.perf_counter()]
    if not result.done:
        prepare_campaign(sessions, campaign_id, ttl_seconds=432_000, keep_going=_marker(marks))
        marks.append(time.perf_counter())
    total = marks[-1] - started
    # Each chunk is a transaction of its own: the first in the start's, the rest a worker's.
    chunks = [marks[0] - started, *(b - a for a, b in itertools.pairwise(marks))]
    with sessions() as session:
        written = (
            session.scalar(select(func.count()).where(Message.campaign_id == campaign_id)) or 0
        )
    print(
        f"  fan-out of segment '{label}': {written:,} messages in {total:.2f} s "
        f"({written / total:,.0f} rows/s; {len(chunks)} chunks, first {chunks[0]:.2f} s, "
        f"longest {max(chunks):.2f} s)"
    )
    engine.dispose()


def _marker(marks: list[float]) -> Callable[[], bool]:
    """``keep_going`` for ``prepare_campaign`` that notes when each chunk's transaction begins."""

    def mark() -> bool:
        marks.append(time.perf_counter())
        return True

    return mark


def run(name: str, url: str, contacts: int, runs: int) -> None:
    print(f"{name}, {contacts:,} contacts:")
    tenant_id, template_id, list_id = seed(url, contacts)
    time_previews(url, tenant_id, list_id, runs)
    time_fan_out(url, tenant_id, template_id, list_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pg", default=PG_ADMIN_URL)
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    if not args.skip_pg:
        with postgres_database(args.pg, purpose="segments") as url:
            run("PostgreSQL", url, args.contacts, args.runs)
    if not args.skip_sqlite:
        with sqlite_database() as url:
            run("SQLite", url, args.contacts, args.runs)


if __name__ == "__main__":
    main()
