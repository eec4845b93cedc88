"""Many worker processes on one queue: exactly once, crash recovery, and a shared throttle.

The first three run on SQLite (several processes on one file, serialised by ``BEGIN IMMEDIATE``)
and on PostgreSQL (``SKIP LOCKED``, row locks, ``NOTIFY``); the rest on PostgreSQL only. Every
PostgreSQL test runs twice: straight to the server, and through PgBouncer in transaction mode
(no server-side prepared statements, LISTEN on a direct connection of its own).
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from tests.acceptance.conftest import (
    WorkerProcess,
    process_environment,
    start_campaign,
    wait_for_completion,
    wait_until,
)
from tests.acceptance.throttled import (
    arrivals,
    delivered,
    share_of_limit,
    smtp_server_process,
    throttle_backlog,
)
from tests.conftest import TenantKeys
from tests.smtp_server import TRY_LATER, SmtpTestServer, hold, slow
from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import Contact, ContactList, Event, ListMember, Message
from tidings.delivery.throttle import busiest
from tidings.runtime import Runtime

#: PostgreSQL both directly and through PgBouncer in transaction mode (``tests/conftest.py``).
every_database = pytest.mark.parametrize(
    "db_url", ["sqlite", "postgres", "pgbouncer"], indirect=True
)
postgres_only = pytest.mark.parametrize("db_url", ["postgres", "pgbouncer"], indirect=True)


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


@every_database
def test_three_worker_processes_deliver_every_message_exactly_once(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    campaign_id = start_campaign(client, acme, audience(client, runtime, acme, 300))
    processes = [worker_process(concurrency=20) for _ in range(3)]
    smtp_server.wait_for(300, timeout=60)
    wait_for_completion(client, acme, campaign_id, timeout=60)
    counts = recipients(smtp_server)
    assert len(counts) == 300 and set(counts.values()) == {1}
    with runtime.sessions() as session:
        owners = session.scalars(select(func.count(func.distinct(Message.lease_owner)))).one()
        assert owners == 0  # no lease left behind
    assert [process.terminate() for process in processes] == [0, 0, 0]


@every_database
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


#: The shared throttle under contention: several processes claiming often (a short poll, so that
#: claims race for every free slot), on both databases. Without the row lock on the throttle read
#: (``FOR UPDATE``) racing claims admit the same slots: 12-17 messages then arrived within one
#: second at 5 a second.
THROTTLE_PROCESSES = 3
THROTTLE_PER_SECOND = 20
THROTTLE_SECONDS = 10.0  # measured: ten windows of the limit
THROTTLE_POLL_SECONDS = "0.02"


@every_database
def test_a_throttle_holds_across_worker_processes(
    runtime: Runtime,
    acme: TenantKeys,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    """At the server, no second holds more than the limit, and the processes together keep
    sending near it (one process alone: ``test_throttle_promise``).

    The floor here is 85 %, not the 97 % ``bench/bench_throttle.py`` measures: a send that misses
    its slot's 20 ms tolerance is given back rather than sent late (``delivery/throttle.py``), so
    the share depends on how promptly this machine schedules four processes on two cores. On 2
    December the CI machine gave 90.5-92 % with steady 16-20 messages a second, on this stop's
    code and on the previous stop's alike. 85 % still fails a throttle that stalls or splits the
    limit between processes; the 97 % is the benchmark's figure."""
    count = int(THROTTLE_PER_SECOND * (THROTTLE_SECONDS + 1))
    recipients = throttle_backlog(runtime, acme.tenant_id, THROTTLE_PER_SECOND, count)
    with smtp_server_process() as server:
        for _ in range(THROTTLE_PROCESSES):
            worker_process(
                concurrency=20,
                TIDINGS_POLL_SECONDS=THROTTLE_POLL_SECONDS,
                TIDINGS_TRANSPORT_URL=server.url,
            )
        wait_until(lambda: delivered(runtime, acme.tenant_id) == count, THROTTLE_SECONDS + 30)
    times = arrivals(server, recipients)
    assert len(times) == count
    worst = busiest(times, 1.0)
    assert worst <= THROTTLE_PER_SECOND, f"{worst} messages arrived within one second"
    assert share_of_limit(times, THROTTLE_PER_SECOND, THROTTLE_SECONDS) >= 0.85


def holds_a_transaction(database_url: str, runtime: Runtime, application_name: str) -> bool:
    """Whether a process (known to PostgreSQL by ``application_name``) is inside a transaction; on
    SQLite, whether anyone holds the write lock for more than a moment."""
    if runtime.dialect == "postgresql":
        with runtime.engine.connect() as conn:
            return bool(
                conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE application_name = :name AND xact_start IS NOT NULL"
                    ),
                    {"name": application_name},
                )
            )
    probe = sqlite3.connect(make_url(database_url).database or "", timeout=1.0)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.rollback()
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        probe.close()


def stopped(process: WorkerProcess) -> bool:
    """Whether the kernel has the process stopped (state ``T`` in /proc/PID/stat)."""
    stat = Path(f"/proc/{process.process.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def freeze(process: WorkerProcess, in_transaction: Callable[[], bool]) -> None:
    """SIGSTOP ``process`` at a moment it holds no transaction: frozen inside one, it would hold
    row locks (or SQLite's write lock) and stall everyone, which is another test's subject."""
    for _ in range(50):
        process.process.send_signal(signal.SIGSTOP)
        wait_until(lambda: stopped(process), timeout=5)
        if not in_transaction():
            return
        process.process.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the worker was always inside a transaction")


#: While the frozen worker's lease runs out, the other worker is busy with this many campaign
#: messages of a second each, two at a time: its heartbeat runs all along.
BUSY_MESSAGES = 40


def test_a_frozen_worker_is_taken_over_and_its_late_writes_are_fenced(
    client: TestClient,
    runtime: Runtime,
    settings: Settings,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    """A worker frozen (SIGSTOP) mid-send past its lease loses its message to another worker,
    whose heartbeat renews only its own leases; resumed, the frozen one's outcome is dropped."""
    smtp_server.fail("frozen@example.edu", hold(TRY_LATER), times=1)
    answer = client.post(
        "/v1/messages",
        json={"to": "frozen@example.edu", "subject": "Hi", "text": "x"},
        headers=acme.auth(acme.sender),
    )
    assert answer.status_code == 201, answer.text
    message_id = answer.json()["id"]
    frozen = worker_process(concurrency=1, PGAPPNAME="tidings-frozen")
    # Its RCPT is unanswered: the frozen worker will hold an open transaction with the server.
    wait_until(lambda: smtp_server.attempts("frozen@example.edu") == 1, timeout=30)
    smtp_server.fail(None, slow(1.0, at="MAIL"))
    start_campaign(client, acme, audience(client, runtime, acme, BUSY_MESSAGES))
    worker_process(concurrency=2)
    busy = [f"p{i}@example.edu" for i in range(BUSY_MESSAGES)]
    wait_until(lambda: any(smtp_server.attempts(r) for r in busy), timeout=30)  # its heartbeat runs
    freeze(
        frozen,
        lambda: holds_a_transaction(settings.resolved_database_url(), runtime, "tidings-frozen"),
    )
    smtp_server.release_holds()  # the 451 waits in the frozen worker's socket
    frozen_at = time.monotonic()
    # The lease (3 s) runs out, the reaper requeues, the busy worker sends it at its next free slot.
    (taken_over,) = wait_until(lambda: smtp_server.to("frozen@example.edu"), timeout=15)
    assert stopped(frozen) and taken_over.received_monotonic - frozen_at < 12
    frozen.process.send_signal(signal.SIGCONT)
    assert frozen.terminate() == 0  # it records its batch (the late 451) before it exits
    with runtime.sessions() as session:
        row = session.get(Message, message_id)
        assert row is not None and row.status == "sent" and row.attempts == 1
        events = session.scalars(
            select(Event.type).where(Event.message_id == message_id).order_by(Event.id)
        ).all()
    assert "deferred" not in events and events[-2:] == ["lease_expired", "sent"], events
    counts = recipients(smtp_server)
    assert counts["frozen@example.edu"] == 1 and set(counts.values()) == {1}


@postgres_only
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


@postgres_only
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
