"""End to end: a verified sender domain's mail reaches a real SMTP server DKIM-signed, and a real
verifier (dkimpy) accepts the exact bytes the server received, looking the key up in a real DNS
server on 127.0.0.1 that serves the records the API said to publish."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dkim
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from tests.acceptance.conftest import (
    FAST,
    WorkerThread,
    api_setup,
    start_campaign,
    wait_for_completion,
    wait_until,
)
from tests.conftest import TenantKeys, make_settings
from tests.dns_server import DnsTestServer, dns_server  # noqa: F401 - a fixture
from tests.smtp_server import ReceivedMessage, SmtpTestServer
from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import SenderDomain
from tidings.runtime import Runtime
from tidings.transports import dkim_sign


@pytest.fixture
def settings(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    db_url: str,
    smtp_server: SmtpTestServer,
    dns_server: DnsTestServer,  # noqa: F811
) -> Settings:
    """Parametrize it indirectly with a dict to change settings."""
    changed: dict[str, Any] = getattr(request, "param", {})
    return make_settings(
        tmp_path,
        db_url,
        transport_url=smtp_server.url,
        dns_resolver=dns_server.address,
        **{**FAST, **changed},
    )


def verified_domain(
    client: TestClient,
    tenant: TenantKeys,
    dns: DnsTestServer,
    domain: str = "mail.example.com",
    algorithm: str = "rsa-sha256",
) -> dict[str, Any]:
    """Add the domain, publish its DKIM record as the API gave it, verify it."""
    admin = tenant.auth(tenant.admin)
    created = client.post(
        "/v1/domains", json={"domain": domain, "algorithm": algorithm}, headers=admin
    )
    assert created.status_code == 201, created.text
    (record,) = [r for r in created.json()["dns_records"] if r["purpose"] == "dkim"]
    dns.publish(record["name"], record["strings"])
    verified = client.post(f"/v1/domains/{created.json()['id']}/verify", headers=admin).json()
    assert verified["status"] == "verified", verified
    return dict(verified)


def send(client: TestClient, tenant: TenantKeys, to: str, from_address: str) -> int:
    answer = client.post(
        "/v1/messages",
        json={
            "to": to,
            "from_address": from_address,
            "subject": "Your grades  are in",
            "html": "<p>Dear Ann,</p>\n<p>grades are   in.</p>",
        },
        headers=tenant.auth(tenant.sender),
    )
    assert answer.status_code == 201, answer.text
    message_id: int = answer.json()["id"]
    return message_id


def received(smtp_server: SmtpTestServer, to: str) -> ReceivedMessage:
    def find() -> ReceivedMessage | None:
        return next((m for m in smtp_server.messages if to in m.rcpt_tos), None)

    found: ReceivedMessage = wait_until(find, timeout=20)
    return found


def one_byte_changed_in_the_body(raw: bytes) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    at = body.index(b"Ann")
    return head + b"\r\n\r\n" + body[:at] + b"B" + body[at + 1 :]


def events(client: TestClient, tenant: TenantKeys, message_id: int) -> list[dict[str, Any]]:
    def sent() -> list[dict[str, Any]] | None:
        shown = client.get(f"/v1/messages/{message_id}", headers=tenant.auth(tenant.viewer)).json()
        return shown["events"] if shown["status"] == "sent" else None

    found: list[dict[str, Any]] = wait_until(sent, timeout=20)
    return found


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_a_verified_domains_mail_verifies_on_the_bytes_the_server_received(
    client: TestClient,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    dns_server: DnsTestServer,  # noqa: F811
    worker: Callable[..., WorkerThread],
    algorithm: str,
) -> None:
    domain = verified_domain(client, acme, dns_server, algorithm=algorithm)
    message_id = send(client, acme, "ann@example.org", "Registrar <registrar@mail.example.com>")
    worker()
    raw = received(smtp_server, "ann@example.org").raw
    assert raw.startswith(b"DKIM-Signature: v=1; a=" + algorithm.encode())
    assert f"s={domain['selector']};".encode() in raw and b"d=mail.example.com;" in raw
    assert dkim.verify(raw, dnsfunc=dns_server.txt)
    assert not dkim.verify(one_byte_changed_in_the_body(raw), dnsfunc=dns_server.txt)
    assert dkim_sign.signed_header_names(raw) == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "from",
    ]
    assert "unsigned" not in [e["type"] for e in events(client, acme, message_id)]


def test_campaign_mail_signs_the_unsubscribe_headers_and_a_subdomain_uses_its_parent(
    client: TestClient,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    dns_server: DnsTestServer,  # noqa: F811
    worker: Callable[..., WorkerThread],
) -> None:
    verified_domain(client, acme, dns_server, domain="example.edu")
    ids = api_setup(
        client, acme, [("ann@school.example.org", "Ann"), ("bob@school.example.org", "Bob")]
    )
    campaign_id = start_campaign(
        client, acme, ids, from_address="Registrar <registrar@news.example.edu>"
    )
    worker()
    wait_for_completion(client, acme, campaign_id)
    assert len(smtp_server.messages) == 2
    for message in smtp_server.messages:
        assert b"d=example.edu;" in message.raw
        assert dkim.verify(message.raw, dnsfunc=dns_server.txt)
        assert dkim_sign.signed_header_names(message.raw) == [
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "list-unsubscribe",
            "list-unsubscribe-post",
            "from",
        ]
        assert not dkim.verify(
            message.raw.replace(b"List-Unsubscribe: <http", b"List-Unsubscribe: <htTp"),
            dnsfunc=dns_server.txt,
        )


def test_an_unverified_domain_goes_unsigned_with_a_warning_event(
    client: TestClient,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    dns_server: DnsTestServer,  # noqa: F811
    worker: Callable[..., WorkerThread],
) -> None:
    client.post(
        "/v1/domains", json={"domain": "pending.example.com"}, headers=acme.auth(acme.admin)
    )  # added, never verified
    message_id = send(client, acme, "ann@example.org", "news@pending.example.com")
    worker()
    raw = received(smtp_server, "ann@example.org").raw
    assert b"DKIM-Signature" not in raw
    shown = events(client, acme, message_id)
    assert [e["type"] for e in shown][-2:] == ["unsigned", "sent"]
    assert "pending.example.com" in shown[-2]["detail"]
    assert "not a verified sender domain" in shown[-2]["detail"]


def test_one_tenants_key_never_signs_another_tenants_mail(
    client: TestClient,
    acme: TenantKeys,
    globex: TenantKeys,
    smtp_server: SmtpTestServer,
    dns_server: DnsTestServer,  # noqa: F811
    worker: Callable[..., WorkerThread],
) -> None:
    verified_domain(client, acme, dns_server)
    theirs = send(client, globex, "eve@example.org", "news@mail.example.com")
    ours = send(client, acme, "ann@example.org", "news@mail.example.com")
    worker()
    assert b"DKIM-Signature" not in received(smtp_server, "eve@example.org").raw
    assert dkim.verify(received(smtp_server, "ann@example.org").raw, dnsfunc=dns_server.txt)
    # globex has no sender domain at all: it chose to send without DKIM, and its mail is not
    # flagged message by message (no extra event row for every message of such a tenant).
    assert "unsigned" not in [e["type"] for e in events(client, globex, theirs)]
    assert "unsigned" not in [e["type"] for e in events(client, acme, ours)]


def test_a_key_that_cannot_be_opened_sends_unsigned_and_logs(
    client: TestClient,
    acme: TenantKeys,
    runtime: Runtime,
    smtp_server: SmtpTestServer,
    dns_server: DnsTestServer,  # noqa: F811
    worker: Callable[..., WorkerThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    domain = verified_domain(client, acme, dns_server)
    with transaction(runtime.sessions) as session:  # as if sealed under another secret key
        session.execute(
            update(SenderDomain)
            .where(SenderDomain.id == domain["id"])
            .values(private_key="v1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        )
    message_id = send(client, acme, "ann@example.org", "news@mail.example.com")
    with caplog.at_level(logging.WARNING, logger="tidings.dkim"):
        worker()
        raw = received(smtp_server, "ann@example.org").raw
    assert b"DKIM-Signature" not in raw
    assert "unsigned" in [e["type"] for e in events(client, acme, message_id)]
    assert any("cannot be opened" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("settings", [{"require_verified_from": True}], indirect=True)
def test_with_verified_from_required_the_worker_never_sends_from_an_unverified_domain(
    client: TestClient,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    dns_server: DnsTestServer,  # noqa: F811
    worker: Callable[..., WorkerThread],
) -> None:
    """The API checks the From when it accepts a message, but the rule must hold for every way
    a message is queued (the dashboard, the CLI, a scheduled campaign) and for a domain deleted
    after its mail was accepted: the worker checks it again before it sends."""
    kept = verified_domain(client, acme, dns_server, domain="kept.example.com")
    gone = verified_domain(client, acme, dns_server, domain="gone.example.com")
    stays = send(client, acme, "ann@example.org", "news@kept.example.com")
    stopped = send(client, acme, "bob@example.org", "news@gone.example.com")
    deleted = client.delete(f"/v1/domains/{gone['id']}", headers=acme.auth(acme.admin))
    assert deleted.status_code == 204, deleted.text
    worker()
    assert dkim.verify(received(smtp_server, "ann@example.org").raw, dnsfunc=dns_server.txt)
    assert kept["status"] == "verified" and stays

    def failed() -> dict[str, Any] | None:
        shown = client.get(f"/v1/messages/{stopped}", headers=acme.auth(acme.viewer)).json()
        return dict(shown) if shown["status"] in ("failed", "dead") else None

    shown = wait_until(failed, timeout=20)
    assert "gone.example.com is not a verified sender domain" in shown["last_error"]
    assert "TIDINGS_REQUIRE_VERIFIED_FROM" in shown["last_error"]
    assert not [m for m in smtp_server.messages if "bob@example.org" in m.rcpt_tos]
