"""End to end: recipients' choices reach the queue, and the worker sends to exactly the others.

The choices are made the way recipients and tenants make them (the one-click POST, the preference
centre, the API), and the mail goes through a real SMTP server.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.acceptance.conftest import WorkerThread, api_setup, start_campaign, wait_until
from tests.conftest import TenantKeys
from tests.integration.sent_mail import sent_link
from tests.smtp_server import SmtpTestServer
from tidings import tokens
from tidings.db.models import Contact, Message
from tidings.runtime import Runtime

PEOPLE = [
    ("ann@example.edu", "Ann"),
    ("bob@example.edu", "Bob"),
    ("cho@example.edu", "Cho"),
    ("dee@example.edu", "Dee"),
    ("eve@example.edu", "Eve"),
    ("fay@example.edu", "Fay"),
]


def contact_id(runtime: Runtime, tenant_id: int, email: str) -> int:
    with runtime.sessions() as session:
        found = session.scalar(
            select(Contact.id).where(Contact.tenant_id == tenant_id, Contact.email == email)
        )
        assert found is not None
        return found


def link(runtime: Runtime, tenant: TenantKeys, email: str, kind: tokens.TokenKind) -> str:
    """The path of the link a mail to ``email`` carries (as the renderer makes it)."""
    token = sent_link(
        runtime,
        tenant.tenant_id,
        contact_id=contact_id(runtime, tenant.tenant_id, email),
        kind=kind,
    )
    return f"/{'u' if kind == 'unsubscribe' else 'p'}/{token}"


def one_click(client: TestClient, runtime: Runtime, tenant: TenantKeys, email: str) -> None:
    answer = client.post(
        link(runtime, tenant, email, "unsubscribe"),
        data={"List-Unsubscribe": "One-Click"},
        follow_redirects=False,
    )
    assert answer.status_code == 200, answer.text


def opt_out_in_preference_centre(
    client: TestClient, runtime: Runtime, tenant: TenantKeys, email: str, keep: list[str]
) -> None:
    """Load the preference page, untick everything but ``keep``, submit: as a browser would."""
    path = link(runtime, tenant, email, "preferences")
    page = client.get(path)
    assert page.status_code == 200
    nonce = re.search(r'name="form_nonce" value="([^"]+)"', page.text)
    assert nonce is not None
    saved = client.post(
        path, data={"form_nonce": nonce.group(1), "action": "save", "category": keep}
    )
    assert saved.status_code == 200, saved.text


def outcome(runtime: Runtime, campaign_id: int) -> dict[str, tuple[str, str | None]]:
    """address -> (status, last_error) of each of the campaign's messages."""
    with runtime.sessions() as session:
        return {
            m.to_address: (m.status, m.last_error)
            for m in session.scalars(select(Message).where(Message.campaign_id == campaign_id))
        }


def settled(runtime: Runtime, campaign_id: int) -> dict[str, tuple[str, str | None]] | None:
    found = outcome(runtime, campaign_id)
    pending = {"queued", "sending", "paused"}
    return found if found and not any(s in pending for s, _ in found.values()) else None


def setup_tenant(client: TestClient, acme: TenantKeys) -> dict[str, int]:
    ids = api_setup(client, acme, PEOPLE)
    for name in ("news", "reminders"):
        created = client.post("/v1/categories", json={"name": name}, headers=acme.auth(acme.admin))
        assert created.status_code == 201, created.text
    return ids


EXPECTED_SUPPRESSED = {
    "bob@example.edu": ("suppressed", "contact is unsubscribed"),
    "cho@example.edu": ("suppressed", "contact is bounced"),
    "dee@example.edu": ("suppressed", "address is on the suppression list (manual)"),
    "eve@example.edu": ("suppressed", "opted out of news"),
}


def make_choices(client: TestClient, runtime: Runtime, acme: TenantKeys) -> None:
    """bob unsubscribes (one-click), cho bounced, dee is suppressed by hand, eve opts out of news."""
    one_click(client, runtime, acme, "bob@example.edu")
    cho = contact_id(runtime, acme.tenant_id, "cho@example.edu")
    bounced = client.patch(
        f"/v1/contacts/{cho}", json={"status": "bounced"}, headers=acme.auth(acme.admin)
    )
    assert bounced.status_code == 200, bounced.text
    listed = client.post(
        "/v1/suppressions",
        json={"email": "dee@example.edu", "detail": "asked by phone"},
        headers=acme.auth(acme.admin),
    )
    assert listed.status_code == 201, listed.text
    opt_out_in_preference_centre(client, runtime, acme, "eve@example.edu", keep=["reminders"])


def test_a_campaign_skips_exactly_those_who_opted_out_and_reaches_the_rest(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    ids = setup_tenant(client, acme)
    make_choices(client, runtime, acme)
    campaign_id = start_campaign(client, acme, ids, category="news")
    worker()
    received = smtp_server.wait_for(2, timeout=20)
    final = wait_until(lambda: settled(runtime, campaign_id))
    assert sorted(r for m in received for r in m.rcpt_tos) == ["ann@example.edu", "fay@example.edu"]
    assert final == {
        **EXPECTED_SUPPRESSED,
        "ann@example.edu": ("sent", None),
        "fay@example.edu": ("sent", None),
    }
    figures = client.get(f"/v1/campaigns/{campaign_id}", headers=acme.auth(acme.viewer)).json()
    assert (figures["sent"], figures["suppressed"], figures["pending"]) == (2, 4, 0)


def test_choices_made_after_the_fan_out_are_honoured_at_send_time(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    """Needs the claim to call ``queue.compliance.screen_claimed`` (the fan-out ran before the choices)."""
    ids = setup_tenant(client, acme)
    campaign_id = start_campaign(client, acme, ids, category="news")
    assert {s for s, _ in outcome(runtime, campaign_id).values()} == {"queued"}
    make_choices(client, runtime, acme)
    worker()
    received = smtp_server.wait_for(2, timeout=20)
    final = wait_until(lambda: settled(runtime, campaign_id))
    assert final == {
        **EXPECTED_SUPPRESSED,
        "ann@example.edu": ("sent", None),
        "fay@example.edu": ("sent", None),
    }
    assert sorted(r for m in received for r in m.rcpt_tos) == ["ann@example.edu", "fay@example.edu"]
    assert len(smtp_server.messages) == 2
