"""Tracking benchmarks: the public routes under an open-loop flood, and the cost of making a mail
tracked.

    python bench/bench_tracking.py [--rate 1000] [--seconds 10] [--postgres] [--messages 10000]
    python bench/bench_tracking.py --rewrite

The route benchmark starts one ``tidings serve --workers 0`` process (SQLite by default, or a
throw-away PostgreSQL database), writes sent messages of one campaign straight into the database,
and sends ``/o/`` and ``/c/`` requests (half each, over all the messages) at a steady rate with
``httpload.open_loop``. It prints p50/p99 and the rate answered, the server's CPU per request,
then stops the server (its lifespan flushes the buffer) and counts the hits written. It prints
figures and asserts nothing about time.
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
from sqlalchemy import func, insert, select

from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import Campaign, Message, Template, TrackingHit, table
from tidings.runtime import build_runtime
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
    args = parser.parse_args()
    if args.rewrite:
        bench_rewrite()
        return
    bench_routes(args)


if __name__ == "__main__":
    main()
