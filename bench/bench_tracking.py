"""Tracking benchmarks: the public routes under an open-loop flood, and the cost of making a mail
tracked.

    python bench/bench_tracking.py [--rate 1000] [--seconds 10] [--postgres] [--messages 10000]
    python bench/bench_tracking.py --rewrite
    python bench/bench_tracking.py --stats [--postgres] [--recipients 1000000] [--hits 300000]

The route benchmark starts one ``tidings serve --workers 0`` process (SQLite by default, or a
throw-away PostgreSQL database), writes sent messages of one campaign straight into the database,
and sends ``/o/`` and ``/c/`` requests (half each, over all the messages) at a steady rate with
``httpload.open_loop``. It prints p50/p99 and the rate answered, the server's CPU per request,
then stops the server (its lifespan flushes the buffer) and counts the hits written. It prints
figures and asserts nothing about time.

``--stats`` writes a campaign of ``--recipients`` sent messages (one ``INSERT … SELECT``), records
``--hits`` opens and clicks through the real flush in batches of 5,000 (printing the flush rate),
then times ``campaign_stats`` 50 times.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench_delivery import cpu_seconds, free_port, percentile, wait_http
from databases import postgres_database, sqlite_database
from httpload import open_loop
from sqlalchemy import func, insert, select, update

from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import Campaign, Message, Template, TrackingHit, table
from tidings.runtime import Runtime, build_runtime
from tidings.services import tenants
from tidings.tracking import links
from tidings.tracking.rewrite import LinkRewriter, Tracking

SECRET = "bench-secret-" + "t" * 40
AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120 Safari/537.36"


def seed(url: str, data_dir: str, count: int) -> tuple[int, list[int]]:
    runtime = build_runtime(
        Settings(database_url=url, secret_key=SECRET, data_dir=Path(data_dir)), migrate=True
    )
    now = datetime.now(UTC)
    sent = now - timedelta(hours=1)
    with transaction(runtime.sessions) as session:
        tenant, _ = tenants.create_tenant(session=session, name="bench", now=now)
        template = Template(
            tenant_id=tenant.id,
            name="t",
            subject="s",
            html="<p>x</p>",
            created_at=now,
            updated_at=now,
        )
        session.add(template)
        session.flush()
        campaign = Campaign(
            tenant_id=tenant.id,
            name="c",
            template_id=template.id,
            list_ids=[],
            contact_ids=[],
            data={},
            status="completed",
            created_at=now,
        )
        session.add(campaign)
        session.flush()
        session.execute(
            insert(table(Message)),
            [
                {
                    "tenant_id": tenant.id,
                    "campaign_id": campaign.id,
                    "to_address": f"r{i}@example.com",
                    "status": "sent",
                    "priority": 5,
                    "not_before": sent,
                    "expires_at": now,
                    "attempts": 1,
                    "lease_expiries": 0,
                    "created_at": sent,
                    "updated_at": sent,
                    "sent_at": sent,
                }
                for i in range(count)
            ],
        )
        ids = list(session.scalars(select(Message.id).where(Message.campaign_id == campaign.id)))
        tenant_id = tenant.id
    runtime.close()
    return tenant_id, ids


def bench_routes(args: argparse.Namespace) -> None:
    database: AbstractContextManager[str] = (
        postgres_database(purpose="tracking") if args.postgres else sqlite_database()
    )
    with database as url, tempfile.TemporaryDirectory() as data_dir:
        tenant_id, ids = seed(url, data_dir, args.messages)
        paths = []
        for n, message_id in enumerate(ids):
            if n % 2:
                token = links.open_token(SECRET, tenant_id=tenant_id, message_id=message_id)
                paths.append(f"/o/{token}")
            else:
                token = links.click_token(
                    SECRET,
                    tenant_id=tenant_id,
                    message_id=message_id,
                    link_index=1 + n % 5,
                    url=f"https://shop.example.com/products/{n % 5}?utm_source=news",
                )
                paths.append(f"/c/{token}")
        port = free_port()
        environment = {
            **os.environ,
            "TIDINGS_DATABASE_URL": url,
            "TIDINGS_SECRET_KEY": SECRET,
            "TIDINGS_DATA_DIR": data_dir,
            "TIDINGS_TRANSPORT_URL": "memory://",
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", "--port", str(port), "--workers", "0"],
            env=environment,
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz")
            host = f"127.0.0.1:{port}"
            requests = [
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {AGENT}\r\n\r\n".encode()
                for path in paths
            ]

            def request(i: int) -> bytes:
                return requests[i % len(requests)]

            asyncio.run(open_loop("127.0.0.1", port, request, rate=100, seconds=2))  # warm-up
            cpu = cpu_seconds(server.pid)
            result = asyncio.run(
                open_loop("127.0.0.1", port, request, rate=args.rate, seconds=args.seconds)
            )
            per_request = (cpu_seconds(server.pid) - cpu) / len(result.latencies_ms) * 1000
            latencies = result.latencies_ms
            print(
                f"/o/ and /c/ ({'PostgreSQL' if args.postgres else 'SQLite'}, one tidings serve "
                f"process) at {args.rate} req/s for {args.seconds} s, open loop: "
                f"{len(latencies) / result.elapsed:.0f}/s answered, statuses {result.statuses}, "
                f"{result.errors} connection errors; p50 {statistics.median(latencies):.2f} ms, "
                f"p99 {percentile(latencies, 99):.2f} ms, max {max(latencies):.1f} ms; "
                f"server CPU {per_request:.3f} ms a request"
            )
        finally:
            server.send_signal(signal.SIGTERM)  # the lifespan flushes what is buffered
            server.wait(60)
        runtime = build_runtime(
            Settings(database_url=url, secret_key=SECRET, data_dir=Path(data_dir)), migrate=False
        )
        with transaction(runtime.sessions) as session:
            written = session.scalar(select(func.count()).select_from(TrackingHit))
        runtime.close()
        sent = len(result.latencies_ms) + 200
        print(f"hits written after shutdown: {written} of {sent} requests (warm-up included)")


def bench_stats(args: argparse.Namespace) -> None:
    import random

    from sqlalchemy import text

    from tidings.services.campaign_stats import campaign_stats
    from tidings.tracking.record import Hit, record_hits

    database: AbstractContextManager[str] = (
        postgres_database(purpose="stats") if args.postgres else sqlite_database()
    )
    with database as url, tempfile.TemporaryDirectory() as data_dir:
        tenant_id, ids = seed(url, data_dir, 1)
        runtime = build_runtime(
            Settings(database_url=url, secret_key=SECRET, data_dir=Path(data_dir)), migrate=False
        )
        sent = datetime.now(UTC) - timedelta(days=1)
        started = time.perf_counter()
        with transaction(runtime.sessions) as session:
            campaign_id = session.scalar(select(Message.campaign_id).where(Message.id == ids[0]))
            session.execute(
                text(
                    "WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "
                    "INSERT INTO messages (tenant_id, campaign_id, contact_id, to_address, status, "
                    "priority, not_before, expires_at, attempts, lease_expiries, created_at, "
                    "updated_at, sent_at, delivered_at, bounce) "
                    "SELECT :tenant, :campaign, i, 'r' || i || '@example.com', "
                    "'sent', 5, :sent, :sent, 1, 0, :sent, :sent, :sent, "
                    # One in 50 soft-bounced (a 4.x.x report), the others delivered.
                    "CASE WHEN i % 50 = 0 THEN NULL ELSE :sent END, "
                    "CASE WHEN i % 50 = 0 THEN 'soft' END FROM n"
                ),
                {
                    "count": args.recipients,
                    "tenant": tenant_id,
                    "campaign": campaign_id,
                    "sent": sent,
                },
            )
            session.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id)
                .values(recipient_count=args.recipients, started_at=sent)
            )
            first, last = session.execute(
                select(func.min(Message.id), func.max(Message.id)).where(
                    Message.campaign_id == campaign_id
                )
            ).one()
        print(f"{args.recipients:,} sent messages written in {time.perf_counter() - started:.1f} s")
        chance = random.Random(13)
        hits = []
        for _ in range(args.hits):
            message_id = chance.randint(first, last)
            at = sent + timedelta(seconds=chance.uniform(60, 3 * 86400 // 4))
            if chance.random() < 0.7:
                hits.append(Hit("open", tenant_id, message_id, None, None, at, AGENT, None))
            else:
                link = chance.randint(1, 8)
                hits.append(
                    Hit(
                        "click",
                        tenant_id,
                        message_id,
                        link,
                        f"https://shop.example.com/{link}",
                        at,
                        AGENT,
                        None,
                    )
                )
        hits.sort(key=lambda h: h.at)
        started = time.perf_counter()
        for offset in range(0, len(hits), 5000):
            with transaction(runtime.sessions) as session:
                record_hits(session, hits[offset : offset + 5000], datetime.now(UTC))
        took = time.perf_counter() - started
        print(f"{len(hits):,} hits flushed in batches of 5,000: {len(hits) / took:,.0f} hits/s")
        if args.profile:
            import cProfile
            import pstats

            with runtime.sessions() as session:
                cProfile.runctx(
                    "for _ in range(20): campaign_stats(session=session, tenant_id=tenant_id, "
                    "campaign_id=campaign_id)",
                    globals(),
                    {**locals(), "campaign_stats": campaign_stats},
                    "/tmp/stats.prof",
                )
            pstats.Stats("/tmp/stats.prof").sort_stats("cumtime").print_stats(25)
        timings = []
        for _ in range(50):
            started = time.perf_counter()
            with runtime.sessions() as session:
                found = campaign_stats(
                    session=session, tenant_id=tenant_id, campaign_id=campaign_id
                )
            timings.append((time.perf_counter() - started) * 1000)
        if args.postgres:
            server_side(runtime, tenant_id, campaign_id)
        print(
            f"campaign_stats of {args.recipients:,} recipients, {args.hits:,} hits "
            f"({'PostgreSQL' if args.postgres else 'SQLite'}): p50 "
            f"{statistics.median(timings):.1f} ms, max {max(timings):.1f} ms over 50; sent "
            f"{found.sent:,}, delivered {found.delivered:,}, bounced_soft "
            f"{found.bounced_soft:,}, opens_unique {found.opens_unique:,}, clicks_total "
            f"{found.clicks_total:,}, {len(found.links)} links, {len(found.timeline)} timeline "
            f"points of {found.interval_seconds} s"
        )
        runtime.close()


def server_side(runtime: Runtime, tenant_id: int, campaign_id: int) -> None:
    """PostgreSQL's own execution time of each statement of one stats answer (EXPLAIN ANALYZE):
    what the answer costs the database, apart from round trips on a busy machine."""
    from sqlalchemy import event

    from tidings.services.campaign_stats import campaign_stats

    seen: list[tuple[str, object]] = []

    def keep(_c: object, _cur: object, statement: str, parameters: object, *_: object) -> None:
        seen.append((statement, parameters))

    event.listen(runtime.engine, "before_cursor_execute", keep)
    with runtime.sessions() as session:
        campaign_stats(session=session, tenant_id=tenant_id, campaign_id=campaign_id)
    event.remove(runtime.engine, "before_cursor_execute", keep)
    total = 0.0
    with runtime.engine.connect() as connection:
        for statement, parameters in seen:
            plan = connection.exec_driver_sql(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + statement,
                parameters,  # type: ignore[arg-type]
            ).scalar_one()
            took = float(plan[0]["Execution Time"]) + float(plan[0]["Planning Time"])
            total += took
            print(f"  {took:7.3f} ms  {' '.join(statement.split())[:90]}")
    print(f"  {total:7.3f} ms in all, {len(seen)} statements (planning + execution, server side)")


def bench_rewrite() -> None:
    rewriter = LinkRewriter(secret=SECRET, public_url="https://mail.example.org")
    paragraph = (
        '<p style="margin:0 0 12px">Dear reader, this week we have news about our products '
        "and a few words from the team. "
        '<a href="https://shop.example.com/products/item-{i}?utm_source=news&amp;utm_medium=email">'
        "Read more</a></p>\n"
    )
    html = (
        "<html><head><title>News</title></head><body>"
        + "".join(paragraph.format(i=i) for i in range(12))
        + '<p><a href="https://mail.example.org/u/x">Unsubscribe</a></p></body></html>'
    )
    text = "News\n" + "\n".join(
        f"Read more (https://shop.example.com/products/item-{i}?utm_source=news&utm_medium=email)"
        for i in range(12)
    )
    for name, opens, clicks in (("opens and clicks", True, True), ("opens only", True, False)):
        count = 3000
        started = time.perf_counter()
        for i in range(count):
            rewriter.apply(Tracking(opens, clicks, 12, 1_000_000 + i), html, text)
        each = (time.perf_counter() - started) / count * 1e6
        print(
            f"rewrite ({name}) of a {len(html)}-byte HTML + {len(text)}-byte text mail with 12 "
            f"links: {each:.0f} µs a message"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=1000, help="requests/s, open loop")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--messages", type=int, default=10_000, help="sent messages to hit")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument("--rewrite", action="store_true", help="only the cost of rewriting")
    parser.add_argument("--stats", action="store_true", help="only the stats of a big campaign")
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--hits", type=int, default=300_000)
    parser.add_argument("--profile", action="store_true", help="--stats: profile the reads")
    args = parser.parse_args()
    if args.rewrite:
        bench_rewrite()
        return
    if args.stats:
        bench_stats(args)
        return
    bench_routes(args)


if __name__ == "__main__":
    main()
