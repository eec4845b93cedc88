"""How long a campaign's fan-out takes: 100,000 recipients from two overlapping lists, on each database.

Creates its own databases (a temporary SQLite file; a throw-away PostgreSQL database, dropped at the
end), seeds the audience, then times a fresh campaign's whole fan-out: its first chunk in the
start's transaction (``fan_out_campaign``), the rest in committed chunks as a worker writes them
(``prepare_campaign``), and the longest of those transactions. Prints figures; asserts nothing
about time.

    python bench/bench_fanout.py [--recipients 100000] [--runs 3] [--pg postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

from databases import PG_ADMIN_URL, postgres_database, sqlite_database
from sqlalchemy import func, insert, select, text

from tidings.db.engine import make_engine, make_session_factory, transaction, upgrade
from tidings.db.models import (
    Campaign,
    Contact,
    ContactList,
    ListMember,
    Message,
    Suppression,
    Template,
    Tenant,
)
from tidings.domain import CampaignStatus
from tidings.queue.fanout import (
    audience_condition,
    chunk_insert,
    fan_out_campaign,
    prepare_campaign,
)

SEED_BATCH = 10_000  # rows per executemany while seeding
SUPPRESSED_EVERY = 100  # one address in a hundred is on the suppression list


def seed(url: str, recipients: int) -> tuple[int, int, list[int]]:
    """A tenant, a template and two lists whose union is ``recipients`` contacts (a tenth in both)."""
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    now = datetime.now(UTC)
    with transaction(sessions) as session:
        tenant = Tenant(name="bench", created_at=now)
        session.add(tenant)
        session.flush()
        template = Template(
            tenant_id=tenant.id,
            name="news",
            subject="Hello {{ first_name }}",
            html="<p>{{ personal_message }}</p>",
            created_at=now,
            updated_at=now,
        )
        lists = [ContactList(tenant_id=tenant.id, name=n, created_at=now) for n in ("a", "b")]
        session.add_all([template, *lists])
        session.flush()
        tenant_id, template_id, list_ids = tenant.id, template.id, [x.id for x in lists]
    with engine.begin() as connection:
        for start in range(0, recipients, SEED_BATCH):
            batch = range(start, min(start + SEED_BATCH, recipients))
            connection.execute(
                insert(Contact),
                [
                    {
                        "tenant_id": tenant_id,
                        "email": f"person{i}@example.com",
                        "first_name": f"P{i}",
                        "attributes": {},
                        "status": "active",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in batch
                ],
            )
        ids = list(
            connection.scalars(
                select(Contact.id).where(Contact.tenant_id == tenant_id).order_by(Contact.id)
            )
        )
        split, overlap = len(ids) // 2, len(ids) // 10
        members = [(list_ids[0], cid) for cid in ids[: split + overlap]]
        members += [(list_ids[1], cid) for cid in ids[split:]]
        for start in range(0, len(members), SEED_BATCH):
            connection.execute(
                insert(ListMember),
                [
                    {"list_id": lid, "contact_id": cid, "tenant_id": tenant_id, "added_at": now}
                    for lid, cid in members[start : start + SEED_BATCH]
                ],
            )
        connection.execute(
            insert(Suppression),
            [
                {
                    "tenant_id": tenant_id,
                    "email": f"person{i}@example.com",
                    "reason": "hard_bounce",
                    "created_at": now,
                }
                for i in range(0, recipients, SUPPRESSED_EVERY)
            ],
        )
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("ANALYZE"))
    engine.dispose()
    return tenant_id, template_id, list_ids


def time_fan_outs(url: str, recipients: int, runs: int) -> tuple[list[float], float]:
    """Each run's whole fan-out (seconds), and the longest transaction of all runs."""
    tenant_id, template_id, list_ids = seed(url, recipients)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    timings = []
    longest = 0.0
    for run in range(runs):
        now = datetime.now(UTC)
        with transaction(sessions) as session:
            campaign = Campaign(
                tenant_id=tenant_id,
                name=f"run {run}",
                template_id=template_id,
                list_ids=list_ids,
                contact_ids=[],
                data={"personal_message": "hello"},
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
            campaign = session.get_one(Campaign, campaign_id)
            result = fan_out_campaign(
                session=session, campaign=campaign, now=now, ttl_seconds=432_000
            )
        marks = [time.perf_counter()]
        longest = max(longest, marks[0] - started)
        if not result.done:
            prepare_campaign(
                sessions,
                campaign_id,
                ttl_seconds=432_000,
                keep_going=_marker(marks),
            )
            marks.append(time.perf_counter())
        timings.append(marks[-1] - started)
        longest = max([longest, *(b - a for a, b in itertools.pairwise(marks))])
        with sessions() as session:
            campaign = session.get_one(Campaign, campaign_id)
            written = session.scalar(select(func.count()).where(Message.campaign_id == campaign_id))
        if campaign.recipient_count != recipients or written != recipients:
            raise SystemExit(
                f"expected {recipients} messages, got {campaign.recipient_count} / {written}"
            )
    engine.dispose()
    return timings, longest


def _marker(marks: list[float]) -> Callable[[], bool]:
    """``keep_going`` for ``prepare_campaign`` that notes when each chunk's transaction begins."""

    def mark() -> bool:
        marks.append(time.perf_counter())
        return True

    return mark


def explain_postgres(url: str) -> None:
    """Where PostgreSQL spends a fan-out: the insert itself vs. each foreign-key check (rolled back)."""
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    now = datetime.now(UTC)
    with sessions() as session, session.begin():
        campaign = session.scalars(select(Campaign).order_by(Campaign.id)).first()
        assert campaign is not None
        fresh = Campaign(
            tenant_id=campaign.tenant_id,
            name="explained",
            template_id=campaign.template_id,
            list_ids=campaign.list_ids,
            contact_ids=[],
            data={},
            priority=5,
            status=CampaignStatus.running.value,
            recipient_count=0,
            created_at=now,
        )
        session.add(fresh)
        session.flush()
        statement = chunk_insert(
            session,
            fresh,
            audience_condition(fresh, dialect=session.get_bind().dialect.name),
            now=now,
            expires_at=now,
        ).compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
        plan = [row[0] for row in session.execute(text(f"EXPLAIN (ANALYZE) {statement}"))]
        session.rollback()
    engine.dispose()
    for line in plan:
        if line.startswith(("Trigger for constraint", "Execution Time")):
            print(f"           {line}")


def report(name: str, recipients: int, measured: tuple[list[float], float]) -> None:
    timings, longest = measured
    median = statistics.median(timings)
    runs = ", ".join(f"{t:.2f}" for t in timings)
    print(
        f"{name:<10} {recipients} recipients: median {median:.2f} s "
        f"({recipients / median:,.0f} rows/s); runs: {runs} s; longest transaction {longest:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pg", default=PG_ADMIN_URL)
    parser.add_argument("--skip-pg", action="store_true")
    args = parser.parse_args()
    with sqlite_database() as url:
        report("SQLite", args.recipients, time_fan_outs(url, args.recipients, args.runs))
    if not args.skip_pg:
        with postgres_database(args.pg, purpose="fanout") as url:
            report("PostgreSQL", args.recipients, time_fan_outs(url, args.recipients, args.runs))
            explain_postgres(url)


if __name__ == "__main__":
    main()
