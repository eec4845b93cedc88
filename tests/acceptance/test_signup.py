"""End to end: a public sign-up, its confirmation mail through a real SMTP server and a real
worker, the link in that mail, and the campaign that reaches only confirmed people."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.acceptance.conftest import WorkerThread, start_campaign, wait_until
from tests.conftest import TenantKeys
from tests.smtp_server import SmtpTestServer
from tidings.api.routes import signup as signup_routes
from tidings.db.models import Contact, Message
from tidings.runtime import Runtime

LINK = re.compile(r"http://[^\s\"<>]+/s/confirm/([A-Za-z0-9_-]+)")


@pytest.fixture(autouse=True)
def quick_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signup_routes, "ANSWER_SECONDS", 0.02)


def confirmation_link(smtp_server: SmtpTestServer, email: str) -> str:
    """The path of the confirmation link in the mail ``email`` received."""
    [mail] = wait_until(lambda: smtp_server.to(email))
    body = mail.message.get_body(("plain",))
    assert body is not None
    found = LINK.search(body.get_content())
    assert found is not None, body.get_content()
    return f"/s/confirm/{found.group(1)}"


def status_of(runtime: Runtime, tenant_id: int, email: str) -> str | None:
    with runtime.sessions() as session:
        return session.scalar(
            select(Contact.status).where(Contact.tenant_id == tenant_id, Contact.email == email)
        )


def test_the_confirmation_mail_arrives_and_its_link_confirms_only_by_post(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    auth = acme.auth(acme.admin)
    assert client.post("/v1/categories", json={"name": "news"}, headers=auth).status_code == 201
    created = client.post(
        "/v1/lists", json={"name": "letters", "public": True, "double_opt_in": True}, headers=auth
    ).json()
    signed = client.post(
        f"/s/{created['public_id']}",
        data={"email": "ann@example.edu", "name": "Ann", "categories": ["news"]},
    )
    assert signed.status_code == 200
    worker()
    path = confirmation_link(smtp_server, "ann@example.edu")
    [mail] = smtp_server.to("ann@example.edu")
    assert "letters" in str(mail.message["Subject"])
    assert mail.message["List-Unsubscribe"] is None  # transactional, not bulk

    shown = client.get(path)
    assert shown.status_code == 200 and "<button" in shown.text
    assert status_of(runtime, acme.tenant_id, "ann@example.edu") == "pending"
    nonce = re.search(r'name="form_nonce" value="([^"]+)"', shown.text)
    assert nonce is not None
    done = client.post(path, data={"form_nonce": nonce.group(1)})
    assert done.status_code == 200 and "You are subscribed" in done.text
    assert status_of(runtime, acme.tenant_id, "ann@example.edu") == "active"
    members = client.get(f"/v1/contacts?list_id={created['id']}", headers=auth).json()["items"]
    assert [m["email"] for m in members] == ["ann@example.edu"]
    ann = members[0]["id"]
    prefs = client.get(f"/v1/contacts/{ann}/preferences", headers=auth).json()
    assert prefs["categories"] == {"news": True}


def test_a_pending_contact_receives_no_campaign_mail(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    auth = acme.auth(acme.admin)
    created = client.post(
        "/v1/lists", json={"name": "letters", "public": True, "double_opt_in": True}, headers=auth
    ).json()
    client.post(f"/s/{created['public_id']}", data={"email": "pat@example.edu"})
    confirmed = client.post("/v1/contacts", json={"email": "sam@example.edu"}, headers=auth)
    pending = client.get("/v1/contacts?status=pending", headers=auth).json()["items"]
    assert [c["email"] for c in pending] == ["pat@example.edu"]
    # Even put on the list by hand, the pending contact gets nothing until confirmed.
    added = client.post(
        f"/v1/lists/{created['id']}/members",
        json={"contact_ids": [pending[0]["id"], confirmed.json()["id"]]},
        headers=auth,
    )
    assert added.status_code == 200, added.text
    template = client.post(
        "/v1/templates", json={"name": "t", "subject": "Hello", "html": "<p>Hi</p>"}, headers=auth
    ).json()
    campaign_id = start_campaign(
        client, acme, {"template_id": template["id"], "list_id": created["id"]}
    )
    worker()
    wait_until(lambda: smtp_server.to("sam@example.edu"))
    wait_until(lambda: smtp_server.to("pat@example.edu"))  # the confirmation mail only
    wait_until(
        lambda: (
            client.get(f"/v1/campaigns/{campaign_id}", headers=auth).json()["status"] == "completed"
        )
    )
    subjects = [str(m.message["Subject"]) for m in smtp_server.to("pat@example.edu")]
    assert len(subjects) == 1 and subjects[0].startswith("Please confirm")
    with runtime.sessions() as session:
        held = session.scalar(
            select(Message).where(
                Message.campaign_id == campaign_id, Message.to_address == "pat@example.edu"
            )
        )
    assert held is not None and held.status == "suppressed"
    assert held.last_error == "contact is pending"
