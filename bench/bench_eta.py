"""How far off ``estimated_completion`` is on a throttled campaign, read at 10, 25 and 50 % sent.

    python bench/bench_eta.py [--recipients 2000] [--rates 20,70,200] [--sqlite]

One ``tidings worker`` process sends to an in-process SMTP sink (aiosmtpd) on 127.0.0.1, PostgreSQL
by default. For each per-second limit it prints the run's length and, for each reading, the
estimate's error against the campaign's ``completed_at`` (which the workers set at their next
housekeeping pass, up to a second after the last send). It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime

from aiosmtpd.controller import Controller
from databases import postgres_database, sqlite_database
from sqlalchemy import insert, text

from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import Contact, ContactList, Template, table
from tidings.runtime import build_runtime
from tidings.services import campaigns, tenants, throttles

SECRET = "bench-secret-" + "y" * 40
READINGS = (0.10, 0.25, 0.50)  # shares of the recipients sent when the estimate is read


class Sink:
    async def handle_DATA(self, _server: object, _session: object, _envelope: object) -> str:
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(url: str, recipients: int, rate: int) -> None:
    sink = Controller(Sink(), hostname="127.0.0.1", port=free_port())
    sink.start()
    with tempfile.TemporaryDirectory() as data_dir:
        transport = f"smtp://127.0.0.1:{sink.port}?tls=none"
        settings = Settings(
            database_url=url, transport_url=transport, secret_key=SECRET, data_dir=data_dir
        )
        runtime = build_runtime(settings, migrate=True)
        now = datetime.now(UTC)
        with transaction(runtime.sessions) as session:
            tenant, _key = tenants.create_tenant(session=session, name=f"eta-{rate}", now=now)
            throttles.update_throttle(
                session=session,
                tenant_id=tenant.id,
                changes={"enabled": True, "per_second": rate},
                now=now,
            )
            template = Template(
                tenant_id=tenant.id,
                name="t",
                subject="Hello {{ first_name }}",
                html="<p>Hi {{ first_name }}</p>",
                created_at=now,
                updated_at=now,
            )
            people = ContactList(tenant_id=tenant.id, name="all", created_at=now)
            session.add_all([template, people])
            session.flush()
            session.execute(
                insert(table(Contact)),
                [
                    {
                        "tenant_id": tenant.id,
                        "email": f"p{i}@example.com",
                        "first_name": f"P{i}",
                        "attributes": {},
                        "status": "active",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in range(recipients)
                ],
            )
            session.execute(
                text(
                    "INSERT INTO list_members (list_id, contact_id, tenant_id, added_at) "
                    "SELECT :list, id, tenant_id, :now FROM contacts WHERE tenant_id = :tenant"
                ),
                {"list": people.id, "tenant": tenant.id, "now": now},
            )
            campaign = campaigns.create_campaign(
                session=session,
                tenant_id=tenant.id,
                draft=campaigns.CampaignDraft(
                    name="eta", template_id=template.id, list_ids=[people.id]
                ),
                now=now,
            )
            tenant_id, campaign_id = tenant.id, campaign.id
        environment = {
            **os.environ,
            "TIDINGS_DATABASE_URL": url,
            "TIDINGS_TRANSPORT_URL": transport,
            "TIDINGS_SECRET_KEY": SECRET,
            "TIDINGS_DATA_DIR": data_dir,
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "tidings", "worker", "--concurrency", "20"],
            env=environment,
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(2)  # the worker is up and idle
            with transaction(runtime.sessions) as session:
                campaigns.start_campaign(
                    session=session,
                    tenant_id=tenant_id,
                    campaign_id=campaign_id,
                    now=datetime.now(UTC),
                    ttl_seconds=settings.message_ttl_seconds,
                )
            estimates: list[tuple[float, int, datetime | None]] = []
            pending = list(READINGS)
            while True:
                with transaction(runtime.sessions) as session:
                    row = campaigns.get_campaign(
                        session=session, tenant_id=tenant_id, campaign_id=campaign_id
                    )
                    progress = campaigns.campaign_progress(
                        session=session, campaigns=[row], now=datetime.now(UTC)
                    )[campaign_id]
                    status, started, completed = row.status, row.started_at, row.completed_at
                if pending and progress.sent >= pending[0] * recipients:
                    estimates.append((pending.pop(0), progress.sent, progress.estimated_completion))
                if status == "completed":
                    break
                time.sleep(0.1)
        finally:
            worker.terminate()
            worker.wait(30)
            runtime.close()
            sink.stop()
    assert started is not None and completed is not None
    duration = (completed - started).total_seconds()
    print(f"per_second={rate:<4} {recipients} recipients: ran {duration:6.1f} s")
    for share, sent, estimate in estimates:
        if estimate is None:
            print(f"    read at {share:4.0%} ({sent} sent): no estimate")
            continue
        error = (estimate - completed).total_seconds()
        print(
            f"    read at {share:4.0%} ({sent:>5} sent): {error:+6.2f} s off, "
            f"{error / duration:+6.1%} of the run"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=int, default=2000)
    parser.add_argument("--rates", default="20,70,200", help="per_second limits, comma-separated")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    args = parser.parse_args()
    for rate in (int(r) for r in args.rates.split(",")):
        database: AbstractContextManager[str] = (
            sqlite_database() if args.sqlite else postgres_database(purpose="eta")
        )
        with database as url:
            run(url, args.recipients, rate)


if __name__ == "__main__":
    main()
