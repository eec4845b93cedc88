"""Resend transport against a local server speaking Resend's documented API (tests/resend_server.py):
the request shapes, batching, idempotency keys and how every answer maps to an outcome."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from tests.resend_server import ResendTestServer
from tidings.delivery.features import EncodedContent
from tidings.domain.message import Attachment, OutgoingMessage, Permanent, Sent, Transient
from tidings.transports.factory import open_transport
from tidings.transports.resend import ResendTransport, email_payload


def message(i: int, to: str | None = None, **changes: object) -> OutgoingMessage:
    msg = OutgoingMessage(
        message_id=i,
        tenant_id=7,
        from_address="Acme <news@acme.test>",
        to_address=to or f"user{i}@example.com",
        to_name=f"User {i}",
        subject=f"Hello {i}",
        html=f"<p>Hello {i}</p>",
        text=f"Hello {i}",
        message_id_header=f"<{i}@acme.test>",
        headers=(
            ("List-Unsubscribe", f"<https://acme.test/u/{i}>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ),
        idempotency_key=f"msg-{i}",
    )
    return replace(msg, **changes)  # type: ignore[arg-type]


def scoped_key(tenant_id: int, key: str) -> str:
    return f"tidings/{tenant_id}/" + hashlib.sha256(f"{tenant_id}:{key}".encode()).hexdigest()


@pytest.fixture(scope="module")
def api_process() -> Iterator[ResendTestServer]:
    with ResendTestServer(api_key="re_test_123") as server:
        yield server


@pytest.fixture
def api(api_process: ResendTestServer) -> ResendTestServer:
    api_process.reset()
    return api_process


@pytest.fixture
async def resend(api: ResendTestServer) -> AsyncIterator[ResendTransport]:
    transport = open_transport(api.url, concurrency=4)
    assert isinstance(transport, ResendTransport)
    yield transport
    await transport.close()


async def test_a_single_message_is_posted_as_documented(
    api: ResendTestServer, resend: ResendTransport
) -> None:
    (outcome,) = await resend.send([message(1, to_name='Smith, "Bob"')])

    (request,) = api.requests
    assert request.path == "/emails"
    assert request.headers["authorization"] == "Bearer re_test_123"
    assert request.headers["idempotency-key"] == scoped_key(7, "msg-1")
    assert request.body == {
        "from": "Acme <news@acme.test>",
        "to": ['"Smith, \\"Bob\\"" <user1@example.com>'],
        "subject": "Hello 1",
        "text": "Hello 1",
        "html": "<p>Hello 1</p>",
        "headers": {
            "List-Unsubscribe": "<https://acme.test/u/1>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    }
    # Resend confirms delivery later (its email.delivered webhook): accepted is not delivered.
    assert outcome == Sent(provider_id=api.emails[0]["id"], delivery_reported_later=True)


async def test_many_messages_go_in_batches_of_at_most_100(
    api: ResendTestServer, resend: ResendTransport
) -> None:
    outcomes = await resend.send([message(i) for i in range(150)])

    assert sorted(len(r.body) for r in api.requests) == [50, 100]
    assert {r.path for r in api.requests} == {"/emails/batch"}
    ids_by_recipient = {e["to"][0].split("<")[1].rstrip(">"): e["id"] for e in api.emails}
    assert outcomes == [
        Sent(provider_id=ids_by_recipient[f"user{i}@example.com"], delivery_reported_later=True)
        for i in range(150)
    ]


async def test_a_repeated_batch_carries_the_same_key_and_is_not_sent_twice(
    api: ResendTestServer, resend: ResendTransport
) -> None:
    batch = [message(i) for i in range(3)]
    first = await resend.send(batch)
    again = await resend.send(batch)
    await resend.send([message(i) for i in range(3, 6)])

    keys = [r.headers["idempotency-key"] for r in api.requests]
    assert keys[0] == keys[1] != keys[2]
    assert first == again
    assert len(api.emails) == 6


async def test_one_invalid_message_does_not_fail_its_batch(
    api: ResendTestServer, resend: ResendTransport
) -> None:
    api.reject("bad@example.com", "Invalid `to` field.")
    outcomes = await resend.send([message(1), message(2, "bad@example.com"), message(3)])

    assert isinstance(outcomes[0], Sent) and isinstance(outcomes[2], Sent)
    assert outcomes[1] == Permanent("Resend 422 validation_error: Invalid `to` field.")
    assert [r.path for r in api.requests] == ["/emails/batch"] + ["/emails"] * 3
    assert len(api.emails) == 2


async def test_rate_limit_is_a_throttled_transient_with_retry_after(
    api: ResendTestServer, resend: ResendTransport
) -> None:
    api.fail_next(429, retry_after="7", message="Too many requests")
    outcomes = await resend.send([message(1), message(2)])
    assert (
        outcomes
        == [
            Transient(
                "Resend 429 rate_limit_exceeded: Too many requests", retry_after=7.0, throttled=True
            )
        ]
        * 2
    )

    later = datetime.now(UTC) + timedelta(seconds=120)
    api.fail_next(429, retry_after=format_datetime(later, usegmt=True))
    (dated,) = await resend.send([message(3)])
    assert isinstance(dated, Transient) and dated.retry_after is not None
    assert 100 < dated.retry_after <= 120


@pytest.mark.parametrize(
    ("status", "name", "expected_type"),
    [
        (500, "internal_server_error", Transient),
        (503, "application_error", Transient),
        (400, "validation_error", Permanent),
        (422, "invalid_attachment", Permanent),
        (401, "missing_api_key", Transient),  # the operator's key, not the message
        (403, "validation_error", Transient),  # e.g. the sending domain is not verified
        (409, "concurrent_idempotent_requests", Transient),
        (409, "invalid_idempotent_request", Permanent),
    ],
)
async def test_each_error_status_maps_to_the_right_outcome(
    api: ResendTestServer,
    resend: ResendTransport,
    status: int,
    name: str,
    expected_type: type,
) -> None:
    api.fail_next(status, name=name, message="details here")
    (outcome,) = await resend.send([message(1)])
    assert type(outcome) is expected_type
    assert outcome.reason == f"Resend {status} {name}: details here"  # type: ignore[union-attr]


async def test_a_wrong_api_key_is_transient(api: ResendTestServer) -> None:
    transport = open_transport(api.url.replace("re_test_123", "re_wrong"))
    try:
        (outcome,) = await transport.send([message(1)])
    finally:
        await transport.close()
    assert isinstance(outcome, Transient) and "401 missing_api_key" in outcome.reason
    assert "re_wrong" not in outcome.reason


async def test_an_unanswered_request_is_repeated_once_with_the_same_key(
    api: ResendTestServer,
) -> None:
    api.fail_next(200, delay=1.0)  # answers too late for the client's timeout
    transport = open_transport(api.url + "?timeout=0.5")
    try:
        outcomes = await transport.send([message(1), message(2)])
    finally:
        await transport.close()
    assert all(isinstance(o, Sent) for o in outcomes)
    requests = api.requests
    assert len(requests) == 2
    assert requests[0].headers["idempotency-key"] == requests[1].headers["idempotency-key"]


async def test_an_unreachable_api_is_transient() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = open_transport(f"resend+http://re_key@127.0.0.1:{port}")
    try:
        outcomes = await transport.send([message(1), message(2)])
    finally:
        await transport.close()
    assert all(isinstance(o, Transient) and "cannot reach Resend" in o.reason for o in outcomes)


async def test_a_header_with_a_line_break_fails_before_any_request(
    api: ResendTestServer, resend: ResendTransport
) -> None:
    bad = message(2, headers=(("List-Unsubscribe", "<https://x>\r\nBcc: victim@example.com"),))
    outcomes = await resend.send([message(1), bad])
    assert isinstance(outcomes[0], Sent)
    assert isinstance(outcomes[1], Permanent) and "line break" in outcomes[1].reason
    assert len(api.requests) == 1 and api.requests[0].path == "/emails"


async def test_a_message_without_its_own_key_gets_a_stable_one(
    api: ResendTestServer, resend: ResendTransport
) -> None:
    await resend.send([message(5, idempotency_key="")])
    await resend.send([message(5, idempotency_key="")])
    keys = [r.headers["idempotency-key"] for r in api.requests]
    assert keys == ["tidings/7/5", "tidings/7/5"]
    assert len(api.emails) == 1  # the second request was answered from the first


async def test_two_tenants_with_the_same_key_both_get_their_mail_sent(
    api: ResendTestServer, resend: ResendTransport
) -> None:
    """Resend keeps keys per account and every tenant shares ours: the same ``reset-42`` from
    two tenants, with the very same email, must be two emails, not one answered twice."""
    first = message(1, to="ada@example.com", idempotency_key="reset-42", tenant_id=1)
    second = replace(first, message_id=2, tenant_id=2)
    assert email_payload(first) == email_payload(second)
    (sent_first,) = await resend.send([first])
    (sent_second,) = await resend.send([second])
    (again,) = await resend.send([second])  # tenant 2's retry is still answered, not resent

    assert len(api.emails) == 2
    assert isinstance(sent_first, Sent) and isinstance(sent_second, Sent)
    assert sent_first.provider_id != sent_second.provider_id
    assert again == sent_second
    keys = [r.headers["idempotency-key"] for r in api.requests]
    assert keys == [scoped_key(1, "reset-42"), scoped_key(2, "reset-42"), scoped_key(2, "reset-42")]


async def test_the_stand_in_honours_idempotency_keys_as_resend_documents(
    api: ResendTestServer,
) -> None:
    """What the test above relies on: a key seen before answers the first email again."""
    email = {"from": "a@acme.test", "to": ["b@example.com"], "subject": "Hi", "text": "Hi"}
    auth = {"Authorization": f"Bearer {api.api_key}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}", headers=auth) as http:
        first = await http.post("/emails", json=email, headers={"Idempotency-Key": "k"})
        again = await http.post("/emails", json=email, headers={"Idempotency-Key": "k"})
        other = await http.post(
            "/emails", json={**email, "text": "Ho"}, headers={"Idempotency-Key": "k"}
        )
        too_long = await http.post("/emails", json=email, headers={"Idempotency-Key": "k" * 257})
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert other.status_code == 409 and other.json()["name"] == "invalid_idempotent_request"
    assert too_long.status_code == 400 and too_long.json()["name"] == "invalid_idempotency_key"
    assert len(api.emails) == 1


async def test_files_and_reply_to_go_in_the_documented_fields_and_never_in_a_batch(
    api: ResendTestServer, resend: ResendTransport
) -> None:
    """Resend's batch endpoint refuses attachments: a message with files goes on its own."""
    encoded = EncodedContent.of(b"%PDF-1.4 syllabus")
    syllabus = Attachment(
        "Lehrplan für Straße.pdf", "application/pdf", encoded.content_base64, encoded.mime_body
    )
    batch = [
        message(1),
        message(2, attachments=(syllabus,), reply_to='"Ms Ada" <ada@school.example>'),
        message(3),
    ]
    outcomes = await resend.send(batch)

    assert all(isinstance(o, Sent) for o in outcomes)
    by_path = {r.path: r.body for r in api.requests}
    assert sorted(by_path) == ["/emails", "/emails/batch"]
    assert [e["to"] for e in by_path["/emails/batch"]] == [
        ["User 1 <user1@example.com>"],
        ["User 3 <user3@example.com>"],
    ]
    single = by_path["/emails"]
    assert single["reply_to"] == '"Ms Ada" <ada@school.example>'
    assert single["attachments"] == [
        {
            "filename": "Lehrplan für Straße.pdf",
            "content": encoded.content_base64,
            "content_type": "application/pdf",
        }
    ]
