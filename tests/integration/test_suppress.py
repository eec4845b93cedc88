"""queue/suppress.py: a suppression and the contact status that goes with it, on every path."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import TenantKeys
from tests.integration import campaign_seed as seed
from tidings.db.engine import transaction
from tidings.db.models import Contact, Suppression
from tidings.domain import SuppressionReason
from tidings.queue.suppress import suppress
from tidings.runtime import Runtime

#: (status before, reason) -> status after: a complaint outranks everything; a bounce and an
#: unsubscribe only replace active; a manual entry changes no contact.
RANKING = [
    ("active", "unsubscribe", "unsubscribed"),
    ("active", "hard_bounce", "bounced"),
    ("active", "complaint", "complained"),
    ("active", "manual", "active"),
    ("unsubscribed", "hard_bounce", "unsubscribed"),
    ("unsubscribed", "complaint", "complained"),
    ("bounced", "unsubscribe", "bounced"),
    ("bounced", "complaint", "complained"),
    ("complained", "unsubscribe", "complained"),
    ("complained", "hard_bounce", "complained"),
]


def _status(runtime: Runtime, contact_id: int) -> str:
    with runtime.sessions() as session:
        return session.scalars(select(Contact.status).where(Contact.id == contact_id)).one()


@pytest.mark.parametrize(("before", "reason", "after"), RANKING)
def test_a_contacts_status_follows_the_strongest_reason(
    runtime: Runtime, acme: TenantKeys, before: str, reason: str, after: str
) -> None:
    [contact] = seed.contacts(runtime, acme.tenant_id, ["ann@example.com"], status=before)
    with transaction(runtime.sessions) as session:
        suppress(
            session,
            tenant_id=acme.tenant_id,
            entries={"ann@example.com": "why"},
            reason=SuppressionReason(reason),
            now=datetime.now(UTC),
        )
    assert _status(runtime, contact) == after


def test_contacts_are_found_by_address_or_by_id_within_the_tenant_only(
    runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    ann, bob = seed.contacts(runtime, acme.tenant_id, ["ann@example.com", "bob@example.com"])
    [theirs] = seed.contacts(runtime, globex.tenant_id, ["ann@example.com"])
    with transaction(runtime.sessions) as session:
        added, changed = suppress(
            session,
            tenant_id=acme.tenant_id,
            entries={"ann@example.com": None},
            reason=SuppressionReason.unsubscribe,
            now=datetime.now(UTC),
            contact_ids=[bob],  # a link in mail sent to an older address of bob's
        )
    assert (added, changed) == (1, 2)
    assert [_status(runtime, c) for c in (ann, bob, theirs)] == [
        "unsubscribed",
        "unsubscribed",
        "active",
    ]
    with runtime.sessions() as session:
        listed = session.execute(select(Suppression.tenant_id, Suppression.email)).all()
    assert listed == [(acme.tenant_id, "ann@example.com")]


def test_an_entry_added_through_the_api_moves_the_contact_too(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    ann, bob = seed.contacts(runtime, acme.tenant_id, ["ann@example.com", "bob@example.com"])
    for email, reason in (("ann@example.com", "complaint"), ("bob@example.com", "manual")):
        answer = client.post(
            "/v1/suppressions",
            json={"email": email, "reason": reason},
            headers=acme.auth(acme.sender),
        )
        assert answer.status_code in (200, 201), answer.text
    assert (_status(runtime, ann), _status(runtime, bob)) == ("complained", "active")
    contact = client.get(f"/v1/contacts/{ann}", headers=acme.auth(acme.viewer)).json()
    assert contact["status"] == "complained"
