"""End to end, on both databases: tenants' own transports (real aiosmtpd relays), a worker, the API.

A relay that dies in the middle of a campaign hands its share to the next priority and every
message arrives exactly once in all; weights share a priority; a tenant's mail never goes through
another tenant's relay nor the service's default; a relay that keeps failing is shown unhealthy and
comes back after a probe; a bounce domain makes the MAIL FROM a VERP address that a bounce report
is matched back by.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.acceptance.conftest import (
    FAST,
    WorkerThread,
    api_setup,
    start_campaign,
    wait_for_completion,
    wait_until,
)
from tests.bounce_samples import postfix_dsn
from tests.conftest import TEST_SECRET, TenantKeys, create_tenant, make_settings
from tests.smtp_server import TRY_LATER, SmtpTestServer, drop, reply
from tidings.bounces.identify import message_id_from_verp
from tidings.bounces.mailbox import process_report
from tidings.config import Settings
from tidings.runtime import Runtime
from tidings.transports import routing


@pytest.fixture
def settings(tmp_path: Path, db_url: str, smtp_server: SmtpTestServer) -> Settings:
    # smtp_server is the service's default transport; tenants' relays are on 127.0.0.1 too.
    return make_settings(
        tmp_path, db_url, transport_url=smtp_server.url, transport_allow_private=True, **FAST
    )


@pytest.fixture
def relays() -> Iterator[list[SmtpTestServer]]:
    servers = [SmtpTestServer().start() for _ in range(2)]
    yield servers
    for server in servers:
        with contextlib.suppress(AssertionError):  # one a test stopped already
            server.stop()


def add_transport(
    client: TestClient, tenant: TenantKeys, server: SmtpTestServer, **fields: Any
) -> int:
    body = {"name": f"relay {server.port}", "url": server.url, **fields}
    answer = client.post("/v1/transports", json=body, headers=tenant.auth(tenant.admin))
    assert answer.status_code == 201, answer.text
    transport_id: int = answer.json()["id"]
    return transport_id


def people(count: int, domain: str = "example.com") -> list[tuple[str, str]]:
    return [(f"p{i}@{domain}", f"P{i}") for i in range(count)]


def message_ids(*servers: SmtpTestServer) -> Counter[str]:
    return Counter(str(m.message["Message-ID"]) for s in servers for m in s.messages)


def send_one(client: TestClient, tenant: TenantKeys, to: str) -> int:
    answer = client.post(
        "/v1/messages",
        json={"to": to, "subject": "Hello", "text": "Hello there"},
        headers=tenant.auth(tenant.sender),
    )
    assert answer.status_code in (201, 202), answer.text
    message_id: int = answer.json()["id"]
    return message_id


def test_a_relay_killed_mid_campaign_loses_nothing_and_duplicates_nothing(
    client: TestClient,
    acme: TenantKeys,
    relays: list[SmtpTestServer],
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    first, second = relays
    add_transport(client, acme, first, priority=1)
    add_transport(client, acme, second, priority=2)
    admin = acme.auth(acme.admin)
    # 40 a second: the campaign lasts seconds, so the relay dies in the middle of it.
    throttle = {"enabled": True, "per_second": 40}
    assert client.put("/v1/throttle", json=throttle, headers=admin).status_code == 200
    total = 120
    ids = api_setup(client, acme, people(total))
    worker()
    campaign_id = start_campaign(client, acme, ids)
    wait_until(lambda: len(first.messages) >= 30, timeout=30)
    # The relay dies: it hangs up on every new transaction, then stops. Hanging up first lands
    # the stop between transactions: a stop that cuts the reply to a final dot is the RFC 1047
    # window, where the relay has the message and nobody can know it (the one duplicate a
    # client cannot rule out; ``test_routing_smtp.py`` shows that failover adds none there).
    first.fail(None, drop(at="MAIL"))
    time.sleep(0.5)
    first.stop()
    status = wait_for_completion(client, acme, campaign_id, timeout=90)
    assert status["sent"] == total
    received = message_ids(first, second)
    assert len(received) == total  # none lost
    assert set(received.values()) == {1}  # none twice, across both relays
    assert 30 <= len(first.messages) < total
    assert len(second.messages) == total - len(first.messages)
    assert smtp_server.messages == []  # never the service's default


def test_transports_of_one_priority_share_its_mail_by_weight(
    client: TestClient,
    acme: TenantKeys,
    relays: list[SmtpTestServer],
    worker: Callable[..., WorkerThread],
) -> None:
    heavy, light = relays
    add_transport(client, acme, heavy, weight=3)
    add_transport(client, acme, light, weight=1)
    total = 80
    ids = api_setup(client, acme, people(total))
    worker()
    wait_for_completion(client, acme, start_campaign(client, acme, ids), timeout=60)
    assert len(heavy.messages) + len(light.messages) == total
    assert abs(len(heavy.messages) - 60) <= 4, (len(heavy.messages), len(light.messages))


def test_a_tenants_mail_goes_only_through_its_own_relays(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    globex: TenantKeys,
    relays: list[SmtpTestServer],
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    acme_relay, globex_relay = relays
    add_transport(client, acme, acme_relay)
    add_transport(client, globex, globex_relay)
    initech = create_tenant(runtime, "initech")  # no relay of its own: the default
    worker()
    for i in range(10):
        send_one(client, acme, f"a{i}@acme-people.example")
        send_one(client, globex, f"g{i}@globex-people.example")
        send_one(client, initech, f"i{i}@initech-people.example")
    wait_until(
        lambda: (
            len(acme_relay.messages) + len(globex_relay.messages) + len(smtp_server.messages) >= 30
        )
    )

    def domains(server: SmtpTestServer) -> set[str]:
        return {r.rpartition("@")[2] for m in server.messages for r in m.rcpt_tos}

    assert domains(acme_relay) == {"acme-people.example"}
    assert domains(globex_relay) == {"globex-people.example"}
    assert domains(smtp_server) == {"initech-people.example"}
    assert len(acme_relay.messages) == len(globex_relay.messages) == 10


def test_a_failing_relay_is_shown_unhealthy_then_healthy_after_a_probe(
    client: TestClient,
    acme: TenantKeys,
    relays: list[SmtpTestServer],
    worker: Callable[..., WorkerThread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(routing, "PROBE_BASE_SECONDS", 0.5)
    flaky, backup = relays
    flaky_id = add_transport(client, acme, flaky, priority=1)
    add_transport(client, acme, backup, priority=2)
    flaky.fail(None, reply(TRY_LATER, at="MAIL"))
    worker()
    viewer = acme.auth(acme.viewer)
    for i in range(routing.UNHEALTHY_AFTER):  # one call each: each counts one failure
        send_one(client, acme, f"early{i}@example.com")
        wait_until(lambda i=i: len(backup.messages) >= i + 1)
    shown = client.get(f"/v1/transports/{flaky_id}", headers=viewer).json()
    assert shown["healthy"] is False, shown
    assert "451" in shown["last_error"]
    listed = client.get("/v1/transports", headers=viewer).json()["items"]
    assert [t["healthy"] for t in listed] == [False, True]
    flaky.clear_faults()
    count = 0

    def recovered() -> bool:
        nonlocal count
        send_one(client, acme, f"late{count}@example.com")
        count += 1
        return bool(client.get(f"/v1/transports/{flaky_id}", headers=viewer).json()["healthy"])

    wait_until(recovered, timeout=20, interval=0.3)
    assert flaky.messages  # the probe went through it
    assert set(message_ids(flaky, backup).values()) == {1}


def test_a_bounce_domain_makes_mail_from_a_verp_address_that_a_bounce_is_matched_by(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    put = client.put(
        "/v1/settings", json={"bounce_domain": "bounces.acme.test"}, headers=acme.auth(acme.admin)
    )
    assert put.status_code == 200, put.text
    worker()
    message_id = send_one(client, acme, "ada@example.com")
    smtp_server.wait_for(1)
    (received,) = smtp_server.messages
    local, _, domain = received.mail_from.partition("@")
    assert domain == "bounces.acme.test"
    assert local.startswith(f"bounces+m{message_id}.")
    assert message_id_from_verp(TEST_SECRET, received.mail_from) == message_id
    wait_until(
        lambda: (
            client.get(f"/v1/messages/{message_id}", headers=acme.auth(acme.viewer)).json()[
                "status"
            ]
            == "sent"
        )
    )
    bounce = postfix_dsn(recipient="ada@example.com", message_id=None, to=received.mail_from)
    assert process_report(runtime, bounce).result.message_id == message_id
