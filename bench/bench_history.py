"""What history costs the queue: claim, outcome and ``/metrics`` latency with no finished message
in the database, then with ``--history`` (10 million by default) finished ones.

    PYTHONPATH=$PWD/src python bench/bench_history.py [--history 10000000] [--claims 300] [--sqlite]

Each round claims ``--claims`` batches of 100 from a ready backlog, the way a worker does (one
transaction: the claim and its lease), then records every message as sent (one transaction: the
outcome batch), and scrapes the queue overview the ``/metrics`` endpoint serves. It prints the
median and p95 of each, and the ratio of the second round to the first. The history is written
with ``generate_series`` (PostgreSQL) or a recursive CTE (SQLite) in chunks of a million, spread
over ten tenants, the measured tenant's among them, then analysed, as autovacuum would leave it.

PostgreSQL at 127.0.0.1:5432 (user postgres) unless ``--sqlite``. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from databases import postgres_database, sqlite_database
from sqlalchemy import text

from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.domain import EventType, MessageStatus
from tidings.queue.claim import claim_batch
from tidings.queue.clock import db_now
from tidings.queue.outcomes import Decision, record_outcomes
from tidings.queue.status import queue_overview
from tidings.runtime import Runtime, build_runtime
from tidings.services import tenants

SECRET = "bench-secret-" + "h" * 40
BATCH = 100
CHUNK = 1_000_000
HISTORY_TENANTS = 10
#: Columns of a message row the benchmark writes (the rest take their defaults or NULL).
INSERT = (
    "INSERT INTO messages (tenant_id, to_address, subject, text, status, priority, attempts, "
    "lease_expiries, not_before, expires_at, sent_at, created_at, updated_at) "
)


def backlog(runtime: Runtime, tenant_id: int, count: int) -> None:
    now = "now()" if runtime.dialect == "postgresql" else "CURRENT_TIMESTAMP"
    rows = _series(runtime.dialect, count)
    with transaction(runtime.sessions) as session:
        session.execute(
            text(
                f"{rows} {INSERT} SELECT :t, 'r' || g || '@example.org', 's', 't', 'queued', 0, 0, "
                f"0, {now}, {now}, NULL, {now}, {now} FROM series"
            ),
            {"t": tenant_id},
        )


def history(runtime: Runtime, tenant_ids: list[int], count: int) -> float:
    started = time.perf_counter()
    now = "now()" if runtime.dialect == "postgresql" else "CURRENT_TIMESTAMP"
    for offset in range(0, count, CHUNK):
        size = min(CHUNK, count - offset)
        with transaction(runtime.sessions) as session:
            for index, tenant_id in enumerate(tenant_ids):
                share = size // len(tenant_ids) + (index < size % len(tenant_ids))
                session.execute(
                    text(
                        f"{_series(runtime.dialect, share)} {INSERT} SELECT :t, "
                        f"'h' || g || '@example.org', 's', 't', 'sent', 0, 1, 0, {now}, {now}, "
                        f"{now}, {now}, {now} FROM series"
                    ),
                    {"t": tenant_id},
                )
        print(f"  history: {offset + size:,} finished messages written", flush=True)
    with runtime.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("VACUUM ANALYZE messages" if runtime.dialect == "postgresql" else "ANALYZE")
        )
    return time.perf_counter() - started


def _series(dialect: str, count: int) -> str:
    if dialect == "postgresql":
        return f"WITH series(g) AS (SELECT generate_series(1, {int(count)}))"
    return (
        f"WITH RECURSIVE series(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM series "
        f"WHERE g < {int(count)})"
    )


def measure(runtime: Runtime, tenant_id: int, claims: int) -> dict[str, list[float]]:
    backlog(runtime, tenant_id, claims * BATCH)
    timings: dict[str, list[float]] = {"claim": [], "outcomes": [], "scrape": []}
    for _ in range(claims):
        started = time.perf_counter()
        with transaction(runtime.sessions) as session:
            claim = claim_batch(session=session, owner="bench", limit=BATCH, lease_seconds=60)
        timings["claim"].append(time.perf_counter() - started)
        assert len(claim.messages) == BATCH, "the backlog ran out"
        started = time.perf_counter()
        with transaction(runtime.sessions) as session:
            now = db_now(session)
            decisions = [
                Decision(
                    message_id=m.id,
                    tenant_id=m.tenant_id,
                    campaign_id=None,
                    status=MessageStatus.sent,
                    event=EventType.sent,
                )
                for m in claim.messages
            ]
            record_outcomes(session=session, token=claim.token, decisions=decisions, now=now)
        timings["outcomes"].append(time.perf_counter() - started)
        started = time.perf_counter()
        with transaction(runtime.sessions) as session:
            queue_overview(session=session, now=db_now(session))
        timings["scrape"].append(time.perf_counter() - started)
    return timings


def summary(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history", type=int, default=10_000_000)
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()
    database = sqlite_database() if args.sqlite else postgres_database(purpose="history")
    with tempfile.TemporaryDirectory() as data_dir, database as url:
        runtime = build_runtime(
            Settings(database_url=url, secret_key=SECRET, data_dir=Path(data_dir)), migrate=True
        )
        try:
            now = datetime.now(UTC)
            with transaction(runtime.sessions) as session:
                ids = [
                    tenants.create_tenant(session=session, name=f"t{i}", now=now)[0].id
                    for i in range(HISTORY_TENANTS)
                ]
            rounds = {"empty": measure(runtime, ids[0], args.claims)}
            print(f"writing {args.history:,} finished messages ...", flush=True)
            took = history(runtime, ids, args.history)
            print(f"  written and analysed in {took:.0f} s")
            rounds[f"{args.history:,} finished"] = measure(runtime, ids[0], args.claims)
        finally:
            runtime.close()
    print(
        f"\n{runtime.dialect}, {args.claims} batches of {BATCH} per round "
        "(median / p95, milliseconds per transaction)"
    )
    first = next(iter(rounds.values()))
    for name, timings in rounds.items():
        figures = []
        for step, values in timings.items():
            median, p95 = summary(values)
            ratio = median / (statistics.median(first[step]) * 1000)
            figures.append(f"{step} {median:.2f} / {p95:.2f} (x{ratio:.2f})")
        print(f"  {name:>20}: " + ", ".join(figures))


if __name__ == "__main__":
    main()
