"""Retention purge of N old messages (and as many old events): total time and the longest lock.

Seeds N sent messages with bodies and N events, all older than the retention period, then runs
the purge the workers run (``queue.retention.purge_expired``, batches of 1,000, one transaction
each) until it is done, while a probe writes to ``messages`` every 20 ms in transactions of its
own (as the API and the workers do) and records how long each write waited. Prints the total
time, the longest single purge transaction (the longest any row was locked by the purge) and the
probe's slowest write. The target is 1,000,000 messages; prints figures, asserts nothing.

    python bench/bench_retention.py [--messages 200000] [--databases sqlite,postgres]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from datetime import UTC, datetime, timedelta

from databases import add_database_options, each_database
from sqlalchemy import insert, text

from tidings.db.engine import make_engine, make_session_factory, transaction, upgrade
from tidings.db.models import Event, Message, Tenant
from tidings.queue.retention import purge_expired

SEED_BATCH = 10_000  # rows per executemany while seeding
PROBE_SECONDS = 0.02  # how often the probe writes
RETENTION_DAYS = 180


def seed(url: str, count: int) -> int:
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    old = datetime.now(UTC) - timedelta(days=RETENTION_DAYS + 20)
    with transaction(sessions) as session:
        tenant = Tenant(name="bench", created_at=old)
        session.add(tenant)
        session.flush()
        tenant_id = tenant.id
    with engine.begin() as connection:
        for start in range(0, count, SEED_BATCH):
            batch = range(start, min(start + SEED_BATCH, count))
            connection.execute(
                insert(Message),
                [
                    {
                        "tenant_id": tenant_id,
                        "to_address": f"person{i}@example.com",
                        "subject": f"Your receipt {i}",
                        "html": f"<p>Hello person {i}, here is your receipt.</p>" * 4,
                        "text": f"Hello person {i}, here is your receipt." * 4,
                        "data": {"order": i},
                        "status": "sent",
                        "priority": 5,
                        "attempts": 1,
                        "lease_expiries": 0,
                        "not_before": old,
                        "expires_at": old,
                        "created_at": old,
                        "updated_at": old,
                        "sent_at": old,
                    }
                    for i in batch
                ],
            )
            connection.execute(
                insert(Event),
                [
                    {
                        "tenant_id": tenant_id,
                        "message_id": i + 1,
                        "type": "sent",
                        "detail": "250 2.0.0 OK",
                        "created_at": old,
                    }
                    for i in batch
                ],
            )
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return tenant_id


def bench(label: str, url: str, count: int) -> None:
    started = time.perf_counter()
    tenant_id = seed(url, count)
    print(
        f"{label}: seeded {count:,} old messages and events in {time.perf_counter() - started:.1f} s"
    )
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    stop = threading.Event()
    waits: list[float] = []

    def probe() -> None:
        now = datetime.now(UTC)
        while not stop.is_set():
            began = time.perf_counter()
            with transaction(sessions) as session:
                session.execute(
                    insert(Message).values(
                        tenant_id=tenant_id,
                        to_address="probe@example.com",
                        status="queued",
                        priority=5,
                        attempts=0,
                        lease_expiries=0,
                        not_before=now,
                        expires_at=now,
                        created_at=now,
                        updated_at=now,
                    )
                )
            waits.append(time.perf_counter() - began)
            time.sleep(PROBE_SECONDS)

    writer = threading.Thread(target=probe, daemon=True)
    writer.start()
    began = time.perf_counter()
    total = purge_expired(sessions, retention_days=RETENTION_DAYS, budget=3600)
    wall = time.perf_counter() - began
    stop.set()
    writer.join()
    durations = sorted(total.durations)
    p99 = durations[int(len(durations) * 0.99) - 1] if durations else 0.0
    took = sum(total.durations)
    print(
        f"  purged {total.bodies:,} bodies and {total.events:,} events in {took:.1f} s"
        f" of transactions ({total.bodies / took:,.0f} messages/s), {wall:.1f} s with the rests"
        f" between batches; {total.batches:,} transactions"
    )
    print(
        f"  purge transaction: median {statistics.median(durations) * 1000:.1f} ms,"
        f" p99 {p99 * 1000:.1f} ms, longest {total.longest * 1000:.1f} ms"
    )
    print(
        f"  probe writes to messages meanwhile: {len(waits):,}, median"
        f" {statistics.median(waits) * 1000:.1f} ms, slowest {max(waits) * 1000:.1f} ms"
    )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000, help="target: 1,000,000")
    add_database_options(parser)
    args = parser.parse_args()
    for database, url in each_database(args, purpose="retention"):
        bench(database, url, args.messages)


if __name__ == "__main__":
    main()
