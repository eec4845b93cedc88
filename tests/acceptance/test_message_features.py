"""End to end through a real SMTP server, on both databases: a sender's name, Reply-To, X- and
List-Id headers and files arrive as given (the received bytes parsed by the stdlib); a campaign's
file is stored once whatever its audience; a campaign's test send arrives as its contact would get
it, is not counted, and its unsubscribe link changes nothing; a tenant's message can only ever
carry its own tenant's files."""

from __future__ import annotations

import email
import os
import re
from base64 import b64encode
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from tests.acceptance.conftest import (
    WorkerThread,
    api_setup,
    start_campaign,
    wait_for_completion,
    wait_until,
)
from tests.conftest import TenantKeys
from tests.smtp_server import SmtpTestServer
from tidings.db.engine import transaction
from tidings.db.models import Attachment, Contact, Message, Suppression
from tidings.runtime import Runtime

SYLLABUS = b"%PDF-1.4\n" + os.urandom(20_000) + b"\n%%EOF\n"
NAME = "Lehrplan für Straße \u2013 Übersicht (endgültig).pdf"
PEOPLE = [(f"student{i}@example.edu", f"Student{i}") for i in range(6)]


def b64(data: bytes) -> str:
    return b64encode(data).decode()


def received(server: SmtpTestServer, count: int) -> dict[str, EmailMessage]:
    """The mail received so far by recipient, parsed again from the exact bytes on the wire."""
    server.wait_for(count, timeout=30)
    mails = {}
    for m in server.messages:
        parsed = email.message_from_bytes(m.raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        mails[m.rcpt_tos[0]] = parsed
    return mails


def files(mail: EmailMessage) -> list[tuple[str | None, str, bytes]]:
    return [
        (part.get_filename(), part.get_content_type(), part.get_content())
        for part in mail.iter_attachments()
    ]


def attachment_rows(runtime: Runtime, tenant_id: int | None = None) -> int:
    with runtime.sessions() as session:
        query = select(func.count()).select_from(Attachment)
        if tenant_id is not None:
            query = query.where(Attachment.tenant_id == tenant_id)
        return int(session.scalar(query) or 0)


def test_a_message_arrives_with_its_sender_reply_to_headers_and_file_exactly(
    client: TestClient,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    body = {
        "to": "student@example.edu",
        "subject": "Your syllabus",
        "text": "The syllabus is attached.",
        "html": "<p>The syllabus is attached.</p>",
        "from": {"name": "Ms Ada Lovelace-Ünal", "address": "ada@school.example"},
        "reply_to": {"name": "Course office", "address": "office@school.example"},
        "headers": {"X-Course": "ML 101", "List-Id": "ML 101 news <ml101.school.example>"},
        "attachments": [
            {"filename": f"C:\\Users\\ada\\{NAME}", "content_type": "application/pdf",
             "content": b64(SYLLABUS)},
        ],
    }  # fmt: skip
    answer = client.post("/v1/messages", json=body, headers=acme.auth(acme.sender))
    assert answer.status_code == 201, answer.text
    shown = answer.json()
    assert shown["attachments"] == [
        {"filename": NAME, "content_type": "application/pdf", "size": len(SYLLABUS)}
    ]
    assert shown["headers"] == {
        "X-Course": "ML 101",
        "List-Id": "ML 101 news <ml101.school.example>",
    }
    assert "content" not in answer.text.replace('"content_type"', "")
    worker()

    mail = received(smtp_server, 1)["student@example.edu"]
    sender = mail["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == ("Ms Ada Lovelace-Ünal", "ada@school.example")
    reply = mail["Reply-To"].addresses[0]
    assert (reply.display_name, reply.addr_spec) == ("Course office", "office@school.example")
    assert mail["X-Course"] == "ML 101"
    assert mail["List-Id"] == "ML 101 news <ml101.school.example>"
    assert mail.get_content_type() == "multipart/mixed"
    assert files(mail) == [(NAME, "application/pdf", SYLLABUS)]
    assert smtp_server.messages[0].mail_from == "ada@school.example"


def test_a_campaign_stores_its_file_once_and_every_recipient_gets_it(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    """The template gives a Reply-To and a header; the campaign its own header value and file."""
    ids = api_setup(
        client,
        acme,
        PEOPLE,
        reply_to="Instructors <instructors@school.example>",
        headers={"X-Course": "from the template", "X-Term": "2026"},
    )
    campaign_id = start_campaign(
        client,
        acme,
        ids,
        **{"from": "Ms Ada <ada@school.example>"},
        headers={"X-Course": "ML 101"},
        attachments=[
            {"filename": NAME, "content_type": "application/pdf", "content": b64(SYLLABUS)}
        ],
    )
    worker()
    status = wait_for_completion(client, acme, campaign_id)
    assert (status["sent"], status["recipient_count"]) == (len(PEOPLE), len(PEOPLE))

    mails = received(smtp_server, len(PEOPLE))
    assert sorted(mails) == sorted(email for email, _ in PEOPLE)
    for mail in mails.values():
        assert files(mail) == [(NAME, "application/pdf", SYLLABUS)]
        assert mail["Reply-To"].addresses[0].addr_spec == "instructors@school.example"
        assert (mail["X-Course"], mail["X-Term"]) == ("ML 101", "2026")
        assert mail["From"].addresses[0].display_name == "Ms Ada"
        assert mail["List-Unsubscribe"].startswith("<http")
    assert attachment_rows(runtime, acme.tenant_id) == 1
    # The same file again, in another campaign or message of the tenant: still one row.
    again = client.post(
        "/v1/campaigns",
        json={"name": "again", "template_id": ids["template_id"], "list_ids": [ids["list_id"]],
              "attachments": [{"filename": "copy.pdf", "content_type": "application/pdf",
                               "content": b64(SYLLABUS)}]},
        headers=acme.auth(acme.sender),
    )  # fmt: skip
    assert again.status_code == 201, again.text
    assert attachment_rows(runtime, acme.tenant_id) == 1


def _link(mail: EmailMessage) -> str:
    found = re.search(r"<(http[^>]+)>", str(mail["List-Unsubscribe"]))
    assert found
    return found.group(1)


def test_a_test_send_arrives_as_the_contact_would_get_it_uncounted_with_an_inert_link(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    ids = api_setup(client, acme, [("ann@example.edu", "Ann")], reply_to="office@school.example")
    auth = acme.auth(acme.sender)
    created = client.post(
        "/v1/campaigns",
        json={"name": "Term", "template_id": ids["template_id"], "list_ids": [ids["list_id"]],
              "data": {"personal_message": "Grades are due.", "deadline": "Friday"},
              "headers": {"X-Course": "ML 101"},
              "attachments": [{"filename": NAME, "content_type": "application/pdf",
                               "content": b64(SYLLABUS)}]},
        headers=auth,
    )  # fmt: skip
    assert created.status_code == 201, created.text
    campaign_id = created.json()["id"]
    with runtime.sessions() as session:
        ann = session.scalar(select(Contact.id).where(Contact.email == "ann@example.edu"))
    before = client.get(f"/v1/campaigns/{campaign_id}", headers=auth).json()

    answer = client.post(
        f"/v1/campaigns/{campaign_id}/test",
        json={"to": ["me@example.com", "boss@example.com"], "contact_id": ann},
        headers=auth,
    )
    assert answer.status_code == 202, answer.text
    assert [m["to"] for m in answer.json()["messages"]] == ["me@example.com", "boss@example.com"]
    worker()
    mails = received(smtp_server, 2)

    assert sorted(mails) == ["boss@example.com", "me@example.com"]
    mail = mails["me@example.com"]
    assert mail["Subject"] == "[TEST] Reminder for Ann"
    html = mail.get_body(("html",))
    assert html is not None
    assert "Dear Ann, Grades are due. Deadline: Friday." in html.get_content()
    assert files(mail) == [(NAME, "application/pdf", SYLLABUS)]
    assert mail["X-Course"] == "ML 101"
    assert mail["Reply-To"].addresses[0].addr_spec == "office@school.example"
    assert mail["X-Tidings-Test"] == str(campaign_id)
    # Its links, in the header and the body, are the preview's: they act on nobody.
    link = _link(mail)
    assert link.endswith("/u/preview")
    assert re.search(r'href="[^"]*/u/preview"', html.get_content())
    path = "/" + link.split("/", 3)[3]
    clicked = client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert clicked.status_code == 200 and "preview" in clicked.text.lower()

    def recorded() -> set[tuple[int | None, int | None, str]]:
        # The server has the mail before the worker has recorded it as sent: wait for that.
        with runtime.sessions() as session:
            tests = session.scalars(select(Message).where(Message.tenant_id == acme.tenant_id))
            found = {(m.campaign_id, m.contact_id, m.status) for m in tests}
        return found if found == {(None, None, "sent")} else set()

    assert wait_until(recorded) == {(None, None, "sent")}
    with runtime.sessions() as session:
        assert session.scalar(select(Contact.status).where(Contact.id == ann)) == "active"
        assert session.scalar(select(func.count()).select_from(Suppression)) == 0
    after = client.get(f"/v1/campaigns/{campaign_id}", headers=auth).json()
    figures = ("status", "recipient_count", "sent", "failed", "pending", "suppressed")
    assert {k: after[k] for k in figures} == {k: before[k] for k in figures}
    assert after["status"] == "draft" and after["recipient_count"] == 0


def test_a_test_send_of_a_finished_campaign_leaves_its_figures_and_without_a_contact_renders_for_the_address(
    client: TestClient,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    ids = api_setup(
        client,
        acme,
        PEOPLE[:2],
        subject="Hello {{ email }}",
        html='<p>{{ email }}</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>',
    )
    campaign_id = start_campaign(client, acme, ids)
    worker()
    done = wait_for_completion(client, acme, campaign_id)
    received(smtp_server, 2)
    answer = client.post(
        f"/v1/campaigns/{campaign_id}/test",
        json={"to": ["me@example.com"]},
        headers=acme.auth(acme.sender),
    )
    assert answer.status_code == 202, answer.text
    mail = received(smtp_server, 3)["me@example.com"]
    assert mail["Subject"] == "[TEST] Hello me@example.com"
    html = mail.get_body(("html",))
    assert html is not None
    links = re.findall(r'href="([^"]+)"', html.get_content())
    assert links and all(link.endswith("/u/preview") for link in links), links

    def settled() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(
            f"/v1/campaigns/{campaign_id}", headers=acme.auth(acme.viewer)
        ).json()
        return body if body["pending"] == 0 else None

    after = wait_until(settled)
    for figure in ("status", "recipient_count", "sent", "failed", "pending", "progress_percentage"):
        assert after[figure] == done[figure], figure


def test_a_message_can_only_carry_its_own_tenants_files(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    globex: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    """The same file sent by two tenants is two rows; a message whose stored reference names
    another tenant's row (as if ids were reused) fails rather than carry that tenant's file."""
    secret = b"acme's confidential figures\n" * 100
    ids = {}
    for name, tenant in (("acme", acme), ("globex", globex)):
        answer = client.post(
            "/v1/messages",
            json={"to": f"x@{name}.example", "subject": "figures", "text": "attached",
                  "attachments": [{"filename": "figures.csv", "content_type": "text/csv",
                                   "content": b64(secret)}]},
            headers=tenant.auth(tenant.sender),
        )  # fmt: skip
        assert answer.status_code == 201, answer.text
        ids[name] = answer.json()["id"]
    assert (
        attachment_rows(runtime, acme.tenant_id),
        attachment_rows(runtime, globex.tenant_id),
    ) == (1, 1)
    with transaction(runtime.sessions) as session:
        acme_file = session.scalar(
            select(Attachment.id).where(Attachment.tenant_id == acme.tenant_id)
        )
        features = session.scalar(select(Message.features).where(Message.id == ids["globex"]))
        assert features is not None
        features["attachments"][0]["id"] = acme_file
        session.execute(
            update(Message).where(Message.id == ids["globex"]).values(features=features)
        )
    worker()

    def final(message_id: int, auth: dict[str, str]) -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/messages/{message_id}", headers=auth).json()
        return body if body["status"] in ("sent", "failed") else None

    theirs = wait_until(lambda: final(ids["globex"], globex.auth(globex.viewer)))
    assert theirs["status"] == "failed"
    assert "attachment" in theirs["last_error"] and "missing" in theirs["last_error"]
    ours = wait_until(lambda: final(ids["acme"], acme.auth(acme.viewer)))
    assert ours["status"] == "sent"
    mails = received(smtp_server, 1)
    assert list(mails) == ["x@acme.example"]
