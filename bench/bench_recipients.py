"""A campaign's per-recipient results over HTTP: rows per second and the server's memory, on each
database.

Seeds a completed campaign of N recipients in a throw-away database (N contacts, N messages: 95 %
sent, 3 % failed with a reply, 2 % suppressed; a person's first open on 30 %, first click on 8 %;
one ``sent`` or ``failed`` event per message, which the export reads as the last event), starts
``tidings serve`` (API only) in its own process, and downloads
``GET /v1/campaigns/{id}/recipients`` as CSV and JSON with a streaming client that keeps nothing,
sampling the server's resident memory as ``bench_export.py`` does. The target is 1,000,000
recipients; prints figures, asserts nothing.

    python bench/bench_recipients.py [--recipients 200000] [--databases sqlite,postgres]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta

from bench_export import download, report_downloads, server_pid
from bench_import import serve
from databases import add_database_options, each_database
from sqlalchemy import and_, case, func, insert, literal, null, select, text

from tidings.db.engine import make_engine, make_session_factory, transaction, upgrade
from tidings.db.models import Campaign, Contact, Event, Message, Template, table
from tidings.db.types import UTCDateTime
from tidings.domain import Role
from tidings.services import tenants

SEED_BATCH = 10_000  # rows per executemany while seeding


def seed(url: str, count: int) -> tuple[str, int]:
    """A tenant with a completed campaign of ``count`` recipients: (a viewer key, its id)."""
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    now = datetime.now(UTC)
    with transaction(sessions) as session:
        tenant, _ = tenants.create_tenant(session=session, name="bench", now=now)
        viewer = tenants.create_key(
            session=session, tenant_id=tenant.id, name="v", role=Role.viewer, now=now
        )
        template = Template(
            tenant_id=tenant.id, name="t", subject="s", html="x", created_at=now, updated_at=now
        )
        session.add(template)
        session.flush()
        campaign = Campaign(
            tenant_id=tenant.id,
            name="spring",
            template_id=template.id,
            list_ids=[],
            contact_ids=[],
            data={},
            status="completed",
            recipient_count=count,
            created_at=now,
            started_at=now,
        )
        session.add(campaign)
        session.flush()
        tenant_id, campaign_id, key = tenant.id, campaign.id, viewer.secret
    opened, clicked = now + timedelta(minutes=5), now + timedelta(minutes=6)
    with engine.begin() as connection:
        for start in range(0, count, SEED_BATCH):
            batch = range(start, min(start + SEED_BATCH, count))
            connection.execute(
                insert(Contact),
                [
                    {
                        "tenant_id": tenant_id,
                        "email": f"person{i}@example.com",
                        "name": f"Person {i}",
                        "attributes": {},
                        "status": "active",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in batch
                ],
            )
        # Messages and events set-based from the contacts (row-wise inserts of a million
        # messages took PostgreSQL most of an hour). ``n`` numbers the contacts from 0, and
        # decides each message's status and engagement as _status does.
        numbered = select(
            Contact.id.label("contact_id"),
            Contact.email,
            (Contact.id - select(func.min(Contact.id)).scalar_subquery()).label("n"),
        ).subquery()
        n = numbered.c.n
        status = case(
            (n % 100 < 3, literal("failed")), (n % 100 < 5, literal("suppressed")), else_="sent"
        )
        sent = (n % 100) >= 5
        stamp = literal(now, UTCDateTime())
        connection.execute(
            insert(table(Message)).from_select(
                [
                    "tenant_id",
                    "campaign_id",
                    "contact_id",
                    "to_address",
                    "status",
                    "priority",
                    "not_before",
                    "expires_at",
                    "attempts",
                    "lease_expiries",
                    "created_at",
                    "updated_at",
                    "sent_at",
                    "last_error",
                    "first_opened_at",
                    "first_clicked_at",
                ],
                select(
                    literal(tenant_id),
                    literal(campaign_id),
                    numbered.c.contact_id,
                    numbered.c.email,
                    status,
                    literal(5),
                    stamp,
                    stamp,
                    literal(1),
                    literal(0),
                    stamp,
                    stamp,
                    case((sent, stamp), else_=null()),
                    case((n % 100 < 3, literal("550 5.1.1 user unknown")), else_=null()),
                    case((and_(sent, n % 10 < 3), literal(opened, UTCDateTime())), else_=null()),
                    case((and_(sent, n % 25 < 2), literal(clicked, UTCDateTime())), else_=null()),
                ).order_by(numbered.c.contact_id),
            )
        )
        connection.execute(
            insert(table(Event)).from_select(
                ["tenant_id", "message_id", "campaign_id", "type", "created_at"],
                select(
                    Message.tenant_id,
                    Message.id,
                    Message.campaign_id,
                    case((Message.status == "failed", literal("failed")), else_=literal("sent")),
                    stamp,
                ).where(Message.campaign_id == campaign_id, Message.status != "suppressed"),
            )
        )
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return key, campaign_id


def bench(label: str, url: str, count: int) -> None:
    started = time.perf_counter()
    key, campaign_id = seed(url, count)
    print(f"{label}: seeded {count:,} recipients in {time.perf_counter() - started:.1f} s")
    path = f"/v1/campaigns/{campaign_id}/recipients"
    with tempfile.TemporaryDirectory() as data_dir, serve(url, data_dir) as base_url:
        pid = server_pid(base_url.rsplit(":", 1)[1])
        download(base_url, key, {"status": "queued"}, pid, path)  # warm up: 0 rows
        report_downloads(
            base_url,
            key,
            pid,
            [
                ("csv, all", {"format": "csv"}),
                ("json, all", {"format": "json"}),
                ("csv, opened (30 %)", {"format": "csv", "opened": "true"}),
                ("csv, failed (3 %)", {"format": "csv", "status": "failed"}),
            ],
            path,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=200_000, help="target: 1,000,000")
    add_database_options(parser)
    args = parser.parse_args()
    for database, url in each_database(args, purpose="recipients"):
        bench(database, url, args.recipients)


if __name__ == "__main__":
    main()
