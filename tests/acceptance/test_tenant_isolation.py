"""End to end: a deleted row's id never lets one tenant's mail reach another tenant's content, and
an old link never reaches a new contact.

The reproduction of issue 9: tenant A's failed message uses template 2; A deletes template 2;
tenant B creates a template (on SQLite without AUTOINCREMENT it got id 2); A requeues the message
from the dashboard; the worker sent it with B's content. Two guards stop it, each tested: ids are
never reused (migration 0009), and the worker reads a message's template, contact and campaign by
``(tenant_id, id)`` (``delivery/compose.load_context``), so even a row that does sit under a
reused id (forced here with an explicit id) belongs to the wrong tenant and is not found.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.acceptance.conftest import WorkerThread, api_setup, start_campaign, wait_until
from tests.browser.dashboard_helpers import sign_in
from tests.conftest import TenantKeys
from tests.smtp_server import SmtpTestServer
from tidings.db.engine import transaction
from tidings.db.models import Contact, Message, Suppression, Template
from tidings.runtime import Runtime

B_SECRET = "Globex confidential offer"


def _template(client: TestClient, tenant: TenantKeys, name: str, html: str) -> int:
    answer = client.post(
        "/v1/templates",
        json={"name": name, "subject": f"From {name}", "html": html},
        headers=tenant.auth(tenant.sender),
    )
    assert answer.status_code == 201, answer.text
    template_id: int = answer.json()["id"]
    return template_id


def _failed_message_of_a_deleted_template(
    client: TestClient, runtime: Runtime, a: TenantKeys
) -> tuple[int, int]:
    """Steps 1 and 2: A's message failed with template 2, then A deleted template 2."""
    _template(client, a, "first", "<p>A's first</p>")
    second = _template(client, a, "second", "<p>A's own words</p>")
    sent = client.post(
        "/v1/messages",
        json={"to": "zed@example.com", "template_id": second},
        headers=a.auth(a.sender),
    )
    assert sent.status_code in (201, 202), sent.text
    message_id: int = sent.json()["id"]
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(status="failed", last_error="550 5.2.2 mailbox full")
        )
    deleted = client.delete(f"/v1/templates/{second}", headers=a.auth(a.sender))
    assert deleted.status_code == 204, deleted.text
    return message_id, second


def _requeue_from_the_dashboard_and_send(
    client: TestClient,
    runtime: Runtime,
    a: TenantKeys,
    message_id: int,
    worker: Callable[..., WorkerThread],
) -> Message:
    """Steps 4 and 5: A retries the dead letter on the queue page; a worker takes it."""
    csrf = sign_in(client, a.sender)
    answer = client.post(
        f"/queue/messages/{message_id}/retry", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    worker()

    def final() -> Message | None:
        with runtime.sessions() as session:
            row = session.get(Message, message_id)
            return row if row is not None and row.status in ("sent", "failed", "dead") else None

    found: Message = wait_until(final)
    return found


def test_a_requeued_message_never_goes_out_with_the_template_another_tenant_created_after(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    globex: TenantKeys,
    worker: Callable[..., WorkerThread],
    smtp_server: SmtpTestServer,
) -> None:
    message_id, deleted = _failed_message_of_a_deleted_template(client, runtime, acme)
    theirs = _template(client, globex, "offer", f"<p>{B_SECRET}</p>")
    message = _requeue_from_the_dashboard_and_send(client, runtime, acme, message_id, worker)
    assert not any(B_SECRET.encode() in m.raw for m in smtp_server.messages)
    assert message.status == "failed"
    assert (message.last_error or "").endswith("its template was deleted")
    assert theirs != deleted  # the id of A's deleted template was not handed out again


def test_a_row_under_a_reused_id_is_another_tenants_and_never_read_for_this_one(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    globex: TenantKeys,
    worker: Callable[..., WorkerThread],
    smtp_server: SmtpTestServer,
) -> None:
    """Step 3 forced: B's template really gets id 2 (a restored backup, an old database)."""
    message_id, deleted = _failed_message_of_a_deleted_template(client, runtime, acme)
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        session.add(
            Template(
                id=deleted,
                tenant_id=globex.tenant_id,
                name="offer",
                subject="Offer",
                html=f"<p>{B_SECRET}</p>",
                created_at=now,
                updated_at=now,
            )
        )
    message = _requeue_from_the_dashboard_and_send(client, runtime, acme, message_id, worker)
    assert message.status == "failed"
    assert (message.last_error or "").endswith("its template was deleted")
    assert not any(B_SECRET.encode() in m.raw for m in smtp_server.messages)


def _contact_state(runtime: Runtime, email: str) -> tuple[Any, ...]:
    with runtime.sessions() as session:
        return (
            session.scalar(select(Contact.status).where(Contact.email == email)),
            session.scalar(select(Suppression.reason).where(Suppression.email == email)),
        )


@pytest.mark.parametrize("reuse", ["natural", "forced"])
def test_an_old_unsubscribe_link_of_a_deleted_contact_never_touches_a_new_contact(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    worker: Callable[..., WorkerThread],
    smtp_server: SmtpTestServer,
    reuse: str,
) -> None:
    ids = api_setup(client, acme, [("ann@example.edu", "Ann")])
    start_campaign(client, acme, ids)
    worker()
    [mail] = smtp_server.wait_for(1, timeout=20)
    header = str(mail.message["List-Unsubscribe"]).strip("<>")
    path = header.removeprefix(runtime.settings.public_url)

    def recorded_as_sent() -> bool:  # a link works once its message is recorded as sent
        with runtime.sessions() as session:
            return (
                session.scalar(
                    select(Message.sent_at).where(Message.to_address == "ann@example.edu")
                )
                is not None
            )

    wait_until(recorded_as_sent, 10)
    assert path.startswith("/u/") and client.get(path).status_code == 200  # Ann's link works
    with runtime.sessions() as session:
        ann = session.scalar(select(Contact.id).where(Contact.email == "ann@example.edu"))
    assert ann is not None
    gone = client.delete(f"/v1/contacts/{ann}", headers=acme.auth(acme.admin))
    assert gone.status_code == 204, gone.text
    if reuse == "natural":
        created = client.post(
            "/v1/contacts", json={"email": "new@example.edu"}, headers=acme.auth(acme.admin)
        )
        assert created.status_code == 201, created.text
        assert created.json()["id"] != ann  # ids are never reused
    else:
        now = datetime.now(UTC)
        with transaction(runtime.sessions) as session:
            session.add(
                Contact(
                    id=ann,
                    tenant_id=acme.tenant_id,
                    email="new@example.edu",
                    attributes={},
                    status="active",
                    created_at=now,
                    updated_at=now,
                )
            )
    answer = client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 404
    assert _contact_state(runtime, "new@example.edu") == ("active", None)
