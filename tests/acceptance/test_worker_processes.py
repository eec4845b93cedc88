"""Many worker processes on one PostgreSQL queue: exactly once, crash recovery, and a shared throttle."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from tests.acceptance.conftest import (
    WorkerProcess,
    process_environment,
    start_campaign,
    wait_for_completion,
    wait_until,
)
from tests.conftest import TenantKeys, _truncate_pg
from tests.smtp_server import SmtpTestServer, slow
from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import Contact, ContactList, ListMember, Message, Throttle
from tidings.runtime import Runtime


@pytest.fixture
def db_url(pg_database_url: str) -> str:
    """These tests are about PostgreSQL: SKIP LOCKED, NOTIFY and many processes."""
    _truncate_pg(pg_database_url)
    return pg_database_url


def audience(client: TestClient, runtime: Runtime, tenant: TenantKeys, size: int) -> dict[str, int]:
    template = client.post(
        "/v1/templates",
        json={
            "name": "t",
            "subject": "Hello {{ first_name }}",
            "text": "Hi {{ first_name }}: {{ personal_message }}",
        },
        headers=tenant.auth(tenant.admin),
    )
    assert template.status_code == 201, template.text
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        people = ContactList(tenant_id=tenant.tenant_id, name="all", created_at=now)
        session.add(people)
        contacts = [
            Contact(
                tenant_id=tenant.tenant_id,
                email=f"p{i}@example.edu",
                first_name=f"P{i}",
                attributes={},
                status="active",
                created_at=now,
                updated_at=now,
            )
            for i in range(size)
        ]
        session.add_all(contacts)
        session.flush()
        session.add_all(
            ListMember(list_id=people.id, contact_id=c.id, tenant_id=tenant.tenant_id, added_at=now)
            for c in contacts
        )
        return {"template_id": template.json()["id"], "list_id": people.id}


def recipients(server: SmtpTestServer) -> Counter[str]:
    return Counter(r for m in server.messages for r in m.rcpt_tos)


def test_two_worker_processes_deliver_every_message_exactly_once(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    campaign_id = start_campaign(client, acme, audience(client, runtime, acme, 300))
    first, second = worker_process(concurrency=20), worker_process(concurrency=20)
    smtp_server.wait_for(300, timeout=60)
    wait_for_completion(client, acme, campaign_id, timeout=60)
    counts = recipients(smtp_server)
    assert len(counts) == 300 and set(counts.values()) == {1}
    with runtime.sessions() as session:
        owners = session.scalars(select(func.count(func.distinct(Message.lease_owner)))).one()
        assert owners == 0  # no lease left behind
    assert first.terminate() == 0 and second.terminate() == 0


def test_a_killed_worker_loses_nothing(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    smtp_server.script(*[slow(0.05, at="MAIL")] * 400)  # slow enough to kill it mid-campaign
    campaign_id = start_campaign(client, acme, audience(client, runtime, acme, 120))
    doomed = worker_process(concurrency=5)
    smtp_server.wait_for(10, timeout=30)
    doomed.kill()  # SIGKILL: no goodbye, leases left dangling
    with runtime.sessions() as session:
        dangling = session.scalar(select(func.count()).where(Message.status == "sending"))
    assert dangling, "the kill should have caught messages in flight"
    smtp_server.clear_faults()
    worker_process(concurrency=20)  # picks up after the lease (3 s) expires
    wait_for_completion(client, acme, campaign_id, timeout=60)
    counts = recipients(smtp_server)
    assert (
        len(counts) == 120
    )  # every recipient got the message; a few may have got it twice (at-least-once)
    assert sum(counts.values()) - 120 <= dangling


def test_a_throttle_holds_across_two_worker_processes(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Throttle)
            .where(Throttle.tenant_id == acme.tenant_id)
            .values(enabled=True, per_second=10)
        )
    start_campaign(client, acme, audience(client, runtime, acme, 60))
    worker_process(concurrency=20), worker_process(concurrency=20)
    received = smtp_server.wait_for(60, timeout=60)
    times = sorted(m.received_monotonic for m in received)
    worst, left = 0, 0
    for right, moment in enumerate(times):
        while moment - times[left] >= 1.0:
            left += 1
        worst = max(worst, right - left + 1)
    assert worst <= 10, f"{worst} messages arrived within one second"
    assert times[-1] - times[0] >= 5.0  # 60 messages at 10/s cannot take less than ~6 s


def test_sigterm_finishes_in_flight_sends_and_leaves_nothing_leased(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    smtp_server.script(*[slow(0.2, at="MAIL")] * 200)
    campaign_id = start_campaign(client, acme, audience(client, runtime, acme, 80))
    process = worker_process(concurrency=8)
    smtp_server.wait_for(5, timeout=30)
    assert process.terminate() == 0  # a clean exit, after recording what was in flight
    with runtime.sessions() as session:
        leased = session.scalar(select(func.count()).where(Message.status == "sending"))
        sent = session.scalar(select(func.count()).where(Message.status == "sent"))
    assert leased == 0
    assert sent == len(smtp_server.messages)  # every message the server took is recorded as sent
    smtp_server.clear_faults()
    worker_process(concurrency=20)
    wait_for_completion(client, acme, campaign_id, timeout=60)
    assert len(recipients(smtp_server)) == 80 and sum(recipients(smtp_server).values()) == 80


def test_serve_with_two_processes_answers_and_delivers_then_stops_on_sigterm(
    settings: Settings, acme: TenantKeys, smtp_server: SmtpTestServer
) -> None:
    """``tidings serve --processes 2``: both processes answer on one port, each with its own
    embedded worker, and SIGTERM stops them all cleanly."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve = subprocess.Popen(
        [sys.executable, "-m", "tidings", "serve", "--port", str(port), "--processes", "2"],
        env=process_environment(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=30)
        children = Path(f"/proc/{serve.pid}/task/{serve.pid}/children").read_text().split()
        assert len(children) >= 2, children
        with httpx.Client(base_url=base, headers=acme.auth(acme.sender)) as client:
            for i in range(20):
                answer = client.post(
                    "/v1/messages", json={"to": f"m{i}@example.com", "subject": "Hi", "text": "x"}
                )
                assert answer.status_code == 201, answer.text
        wait_until(lambda: len(smtp_server.messages) >= 20, timeout=30)
        assert sorted(recipients(smtp_server)) == sorted(f"m{i}@example.com" for i in range(20))
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(30)
    assert code == 0
