"""``POST /v1/webhooks/inbound/resend``: Resend's bounce and complaint events, Svix-signed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import TenantKeys, make_settings
from tests.integration.sent_mail import (
    events_of,
    footprint,
    seed_sent_mail,
    status_of,
    suppressions_of,
)
from tests.live_server import LiveServer
from tidings import webhook_signature
from tidings.app import create_app
from tidings.config import Settings
from tidings.runtime import Runtime

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
URL = "/v1/webhooks/inbound/resend"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url, resend_webhook_secret=SECRET)


def bounced(
    email_id: str, *, bounce_type: str = "Permanent", to: str = "ada@example.com"
) -> dict[str, Any]:
    """An ``email.bounced`` event as Resend documents it."""
    return {
        "type": "email.bounced",
        "created_at": "2026-01-01T00:00:05.000Z",
        "data": {
            "broadcast_id": None,
            "created_at": "2026-01-01T00:00:00.000Z",
            "email_id": email_id,
            "from": "Tidings <noreply@tidings.test>",
            "to": [to],
            "subject": "Reminder",
            "bounce": {
                "message": "The recipient's email provider sent a hard bounce message.",
                "subType": "General",
                "type": bounce_type,
            },
            "tags": [{"name": "campaign", "value": "reminder"}],
        },
    }


def complained(email_id: str) -> dict[str, Any]:
    return {
        "type": "email.complained",
        "created_at": "2026-01-01T00:00:05.000Z",
        "data": {
            "created_at": "2026-01-01T00:00:00.000Z",
            "email_id": email_id,
            "from": "Tidings <noreply@tidings.test>",
            "to": ["ada@example.com"],
            "subject": "Reminder",
        },
    }


def signed(
    event: dict[str, Any] | bytes,
    *,
    event_id: str = "msg_2Lh9KRb0pzN4LePd3XiA4dD1yDO",
    secret: str = SECRET,
    at: datetime | None = None,
) -> tuple[bytes, dict[str, str]]:
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    stamp = int((at or datetime.now(UTC)).timestamp())
    signature = webhook_signature.sign(secret, message_id=event_id, timestamp=stamp, body=body)
    headers = {
        "svix-id": event_id,
        "svix-timestamp": str(stamp),
        "svix-signature": signature,
        "content-type": "application/json",
    }
    return body, headers


def test_a_hard_bounce_suppresses_the_address_and_fails_the_message(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com", provider_message_id="re-1")
    body, headers = signed(bounced("re-1"))
    answer = client.post(URL, content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "status": "recorded",
        "message_id": mail.id,
        "kind": "hard_bounce",
        "reason": None,
    }
    assert suppressions_of(runtime, acme.tenant_id) == [("ada@example.com", "hard_bounce")]
    contact, message, error = status_of(runtime, mail)
    assert (contact, message) == ("bounced", "failed")
    assert error is not None and "hard bounce message" in error
    (event,) = events_of(runtime, mail.id)
    assert event[:2] == ("bounced", mail.campaign_id)
    assert "Permanent / General" in (event[2] or "")


def test_a_complaint_suppresses_the_address_and_keeps_the_message_sent(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com", provider_message_id="re-2")
    body, headers = signed(complained("re-2"))
    answer = client.post(URL, content=body, headers=headers)
    assert answer.status_code == 200 and answer.json()["status"] == "recorded"
    assert suppressions_of(runtime, acme.tenant_id) == [("ada@example.com", "complaint")]
    assert status_of(runtime, mail)[:2] == ("complained", "sent")
    assert [e[:2] for e in events_of(runtime, mail.id)] == [("complained", mail.campaign_id)]


def test_a_transient_bounce_is_noted_without_suppressing(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com", provider_message_id="re-3")
    body, headers = signed(bounced("re-3", bounce_type="Transient"))
    answer = client.post(URL, content=body, headers=headers)
    assert answer.json()["kind"] == "soft_bounce"
    assert suppressions_of(runtime, acme.tenant_id) == []
    assert status_of(runtime, mail)[:2] == ("active", "sent")
    assert [e[0] for e in events_of(runtime, mail.id)] == ["deferred"]


def test_the_message_is_also_found_by_its_message_id_header(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    event = bounced("unknown-to-us")
    event["data"]["headers"] = [{"name": "Message-ID", "value": mail.message_id_header}]
    body, headers = signed(event)
    assert client.post(URL, content=body, headers=headers).json()["message_id"] == mail.id


@pytest.mark.parametrize(
    "tamper",
    ["body", "wrong-secret", "old-timestamp", "future-timestamp", "no-signature", "other-id"],
)
def test_a_bad_or_old_signature_is_401_and_changes_nothing(
    client: TestClient, runtime: Runtime, acme: TenantKeys, tamper: str
) -> None:
    seed_sent_mail(runtime, acme.tenant_id, "ada@example.com", provider_message_id="re-4")
    before = footprint(runtime)
    event = bounced("re-4")
    if tamper == "wrong-secret":
        body, headers = signed(event, secret=webhook_signature.new_secret())
    elif tamper == "old-timestamp":
        body, headers = signed(event, at=datetime.now(UTC) - timedelta(minutes=10))
    elif tamper == "future-timestamp":
        body, headers = signed(event, at=datetime.now(UTC) + timedelta(minutes=10))
    else:
        body, headers = signed(event)
        if tamper == "body":
            body = body.replace(b"Permanent", b"Transient")
        elif tamper == "no-signature":
            del headers["svix-signature"]
        elif tamper == "other-id":
            headers["svix-id"] = "msg_someone_else"
    answer = client.post(URL, content=body, headers=headers)
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == "unauthenticated"
    assert footprint(runtime) == before


def test_the_same_event_twice_is_recorded_once(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com", provider_message_id="re-5")
    body, headers = signed(bounced("re-5"))
    assert client.post(URL, content=body, headers=headers).json()["status"] == "recorded"
    again = client.post(URL, content=body, headers=headers)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert len(events_of(runtime, mail.id)) == 1


def test_the_same_event_delivered_five_times_at_once_makes_exactly_one_suppression(
    runtime: Runtime, acme: TenantKeys
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com", provider_message_id="re-6")
    body, headers = signed(complained("re-6"), event_id="msg_concurrent")
    start = threading.Barrier(5)
    answers: list[str] = []

    def deliver(base_url: str) -> None:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            start.wait()
            answers.append(http.post(URL, content=body, headers=headers).json()["status"])

    with LiveServer(create_app(runtime)) as server:
        threads = [threading.Thread(target=deliver, args=(server.url,)) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert sorted(answers) == ["duplicate"] * 4 + ["recorded"]
    assert suppressions_of(runtime, acme.tenant_id) == [("ada@example.com", "complaint")]
    assert [e[0] for e in events_of(runtime, mail.id)] == ["complained"]
    assert footprint(runtime).inbound_events == 1


def test_other_event_types_and_unknown_messages_are_acknowledged_and_ignored(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    seed_sent_mail(runtime, acme.tenant_id, "ada@example.com", provider_message_id="re-7")
    before = footprint(runtime)
    delivered = {"type": "email.delivered", "created_at": "x", "data": {"email_id": "re-7"}}
    body, headers = signed(delivered, event_id="msg_a")
    answer = client.post(URL, content=body, headers=headers)
    assert answer.status_code == 200 and answer.json()["status"] == "ignored"
    body, headers = signed(bounced("not-ours"), event_id="msg_b")
    answer = client.post(URL, content=body, headers=headers)
    assert answer.json() == {
        "status": "ignored",
        "message_id": None,
        "kind": "hard_bounce",
        "reason": "no message of ours matches",
    }
    assert footprint(runtime) == before


def test_a_signed_body_that_is_not_an_event_is_422(client: TestClient) -> None:
    for payload in (b"not json", b"[1, 2]", b'{"type": "email.bounced"}'):
        body, headers = signed(payload)
        assert client.post(URL, content=body, headers=headers).status_code == 422


def test_an_unknown_provider_is_404(client: TestClient) -> None:
    body, headers = signed(bounced("x"))
    answer = client.post("/v1/webhooks/inbound/sendgrid", content=body, headers=headers)
    assert answer.status_code == 404


@pytest.fixture
def unconfigured_client(tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    from tidings.runtime import build_runtime

    runtime = build_runtime(make_settings(tmp_path, db_url), migrate=True)
    with TestClient(create_app(runtime)) as client:
        yield client
    runtime.close()


def test_without_a_configured_secret_the_endpoint_says_how_to_configure_it(
    unconfigured_client: TestClient,
) -> None:
    body, headers = signed(bounced("x"))
    answer = unconfigured_client.post(URL, content=body, headers=headers)
    assert answer.status_code == 404
    assert "TIDINGS_RESEND_WEBHOOK_SECRET" in answer.json()["error"]["message"]
