"""``POST /v1/contacts/{id}/erase`` (GDPR erasure): the address leaves the whole database, stays
suppressed as a keyed hash, and nobody else's data changes."""

from __future__ import annotations

import sqlite3
import subprocess
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.engine import make_url

from tests.conftest import TEST_SECRET, TenantKeys
from tidings.address_hash import address_key, hashed_address
from tidings.db.engine import transaction
from tidings.db.models import (
    Campaign,
    Contact,
    Event,
    Message,
    Preference,
    Suppression,
    Template,
    TrackingHit,
    WebhookDelivery,
)
from tidings.domain import EventType, MessageStatus
from tidings.queue.claim import claim_batch
from tidings.runtime import Runtime
from tidings.tracking.record import Hit, record_hits

ERASED = "Erin.Erased@example.org"  # the normalised form (domain lower-cased)
FORMS = (ERASED, ERASED.lower(), ERASED.upper(), "Erin.Erased@Example.org")
OTHER = "bob.kept@example.org"


def dump(runtime: Runtime) -> str:
    """The whole database as text: SQLite's iterdump, PostgreSQL's pg_dump."""
    url = make_url(runtime.settings.resolved_database_url())
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        with sqlite3.connect(url.database) as connection:
            return "\n".join(connection.iterdump())
    command = [
        "pg_dump",
        "--host",
        url.host or "127.0.0.1",
        "--port",
        str(url.port or 5432),
        "--username",
        url.username or "postgres",
        "--no-owner",
        url.database or "",
    ]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def contact(client: TestClient, tenant: TenantKeys, email: str, **fields: Any) -> int:
    answer = client.post(
        "/v1/contacts", json={"email": email, **fields}, headers=tenant.auth(tenant.sender)
    )
    assert answer.status_code in (200, 201), answer.text
    return int(answer.json()["id"])


def send(client: TestClient, tenant: TenantKeys, body: dict[str, Any], key: str) -> int:
    answer = client.post(
        "/v1/messages",
        json=body,
        headers={**tenant.auth(tenant.sender), "Idempotency-Key": key},
    )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def history_of(
    client: TestClient, runtime: Runtime, tenant: TenantKeys, email: str, *, prefix: str
) -> int:
    """A contact with everything a person leaves behind: a list, a preference, mail (by contact
    and by address), an SMTP error and a bounce naming the address, an unsubscribe event, a
    suppression, a webhook delivery, a campaign reason."""
    list_id = client.post(
        "/v1/lists", json={"name": f"{prefix} news"}, headers=tenant.auth(tenant.sender)
    ).json()["id"]
    contact_id = contact(
        client,
        tenant,
        email,
        name=f"{prefix} Person",
        attributes={"backup_email": email, "city": "Paris"},
        list_ids=[list_id],
    )
    by_contact = send(
        client,
        tenant,
        {
            "contact_id": contact_id,
            "subject": f"Hello {email}",
            "text": f"Your address is {email}",
            "html": f"<p>{email}</p>",
            "data": {"who": email},
            "reference": f"ref-{email}",
        },
        key=f"key-{email}",
    )
    by_address = send(
        client,
        tenant,
        {"to": email.lower(), "subject": "Hi", "text": f"to {email.lower()}"},
        key=f"second-{email}",
    )
    answer = client.post(
        "/v1/suppressions",
        json={"email": email, "reason": "complaint", "detail": f"ARF report for {email}"},
        headers=tenant.auth(tenant.sender),
    )
    assert answer.status_code == 201, answer.text
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        session.execute(
            Message.__table__.update()
            .where(Message.id == by_address)
            .values(
                status=MessageStatus.failed.value,
                last_error=f"550 5.1.1 <{email.upper()}>: user unknown",
            )
        )
        session.add_all(
            [
                Event(
                    tenant_id=tenant.tenant_id,
                    message_id=by_address,
                    type=EventType.failed.value,
                    detail=f"550 5.1.1 <{email.upper()}>: user unknown",
                    created_at=now,
                ),
                Event(
                    tenant_id=tenant.tenant_id,
                    contact_id=contact_id,
                    type=EventType.unsubscribed.value,
                    detail=f"{email} from all mail",
                    created_at=now,
                ),
                WebhookDelivery(
                    tenant_id=tenant.tenant_id,
                    endpoint_id=_endpoint(session, tenant.tenant_id, now),
                    event_type="failed",
                    payload={"type": "failed", "email": email, "message_id": by_contact},
                    next_attempt_at=now,
                    last_status=f"200 got {email}",
                    created_at=now,
                ),
            ]
        )
        template = Template(
            tenant_id=tenant.tenant_id,
            name=f"{prefix} t",
            subject="s",
            html="<p>x</p>",
            created_at=now,
            updated_at=now,
        )
        session.add(template)
        session.flush()
        session.add(
            Campaign(
                tenant_id=tenant.tenant_id,
                name=f"{prefix} c",
                template_id=template.id,
                status="failed",
                status_reason=f"the most frequent error: 550 <{email}> unknown",
                created_at=now,
            )
        )
        session.add(
            Preference(
                contact_id=contact_id,
                category=f"{prefix}-news",
                tenant_id=tenant.tenant_id,
                subscribed=False,
                updated_at=now,
            )
        )
    return contact_id


def _endpoint(session: Any, tenant_id: int, now: datetime) -> int:
    from tidings.db.models import WebhookEndpoint

    endpoint = session.scalar(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id))
    if endpoint is None:
        endpoint = WebhookEndpoint(
            tenant_id=tenant_id, url="https://hooks.test/x", secret="s", created_at=now
        )
        session.add(endpoint)
        session.flush()
    return int(endpoint.id)


def test_an_erased_address_is_nowhere_in_the_database_and_others_are_untouched(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    erin = history_of(client, runtime, acme, ERASED, prefix="erin")
    bob = history_of(client, runtime, acme, OTHER, prefix="bob")
    before = dump(runtime)
    assert all(form in before for form in FORMS[:3])
    bob_data = client.get(f"/v1/contacts/{bob}/data", headers=acme.auth(acme.viewer)).json()

    answer = client.post(f"/v1/contacts/{erin}/erase", headers=acme.auth(acme.admin))

    assert answer.status_code == 200, answer.text
    assert answer.json()["messages"] == 2
    assert answer.json()["cancelled"] == 1  # the queued one; the failed one stays failed
    assert answer.json()["suppression_reason"] == "complaint"
    after = dump(runtime)
    for form in FORMS:
        assert form not in after, form
    assert "erin Person" not in after and "erin.erased" not in after.lower()
    assert "erin-news" not in after  # the preference went with the contact
    # Bob's record, his mail and its content, as before.
    assert OTHER in after and f"Your address is {OTHER}" in after
    assert client.get(f"/v1/contacts/{bob}/data", headers=acme.auth(acme.viewer)).json() == bob_data
    assert client.get(f"/v1/contacts/{erin}", headers=acme.auth(acme.viewer)).status_code == 404
    with runtime.sessions() as session:
        hashed = hashed_address(address_key(TEST_SECRET), acme.tenant_id, ERASED)
        kept = session.scalars(select(Suppression).where(Suppression.email == hashed)).one()
        assert kept.reason == "complaint"
        audit = session.scalars(
            select(Event).where(Event.type == EventType.contact_erased.value)
        ).one()
        assert audit.contact_id == erin and audit.tenant_id == acme.tenant_id
        messages = session.scalars(select(Message).where(Message.to_address == hashed)).all()
        assert len(messages) == 2
        assert all(m.subject is None and m.text is None and m.data is None for m in messages)


def test_an_erased_address_imported_again_is_suppressed(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    erin = contact(client, acme, ERASED)
    assert (
        client.post(f"/v1/contacts/{erin}/erase", headers=acme.auth(acme.admin)).status_code == 200
    )
    list_id = client.post(
        "/v1/lists", json={"name": "again"}, headers=acme.auth(acme.sender)
    ).json()["id"]
    returning = ERASED.upper().replace("EXAMPLE.ORG", "example.org")

    imported = client.post(
        f"/v1/lists/{list_id}/import",
        content=f"email,name\n{returning},Erin\nnew@example.org,New\n".encode(),
        headers={**acme.auth(acme.sender), "Content-Type": "text/csv"},
    )

    assert imported.status_code == 200, imported.text
    listed = client.get("/v1/suppressions", headers=acme.auth(acme.viewer)).json()["items"]
    assert [(s["email"], s["reason"]) for s in listed] == [(returning, "manual")]


def test_an_erased_address_upserted_again_is_suppressed(
    client: TestClient, acme: TenantKeys
) -> None:
    erin = contact(client, acme, ERASED)
    client.post(f"/v1/contacts/{erin}/erase", headers=acme.auth(acme.admin))

    contact(client, acme, ERASED.lower())

    listed = client.get("/v1/suppressions", headers=acme.auth(acme.viewer)).json()["items"]
    assert [s["email"] for s in listed] == [ERASED.lower()]


def test_a_send_to_an_erased_address_is_suppressed_at_send_time(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    erin = contact(client, acme, ERASED)
    client.post(f"/v1/contacts/{erin}/erase", headers=acme.auth(acme.admin))
    message_id = send(client, acme, {"to": ERASED, "subject": "Reset", "text": "x"}, key="k1")

    with transaction(runtime.sessions) as session:
        claim = claim_batch(
            session=session,
            owner="w",
            limit=10,
            lease_seconds=30,
            address_key=address_key(runtime.secret_key),
        )

    assert claim.messages == []
    with runtime.sessions() as session:
        row = session.get_one(Message, message_id)
        assert row.status == MessageStatus.suppressed.value
        assert row.last_error == "address is on the suppression list (manual)"


def test_deleting_the_suppression_of_an_erased_address_lifts_it(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    erin = contact(client, acme, ERASED)
    client.post(f"/v1/contacts/{erin}/erase", headers=acme.auth(acme.admin))

    answer = client.delete(f"/v1/suppressions/{ERASED}", headers=acme.auth(acme.admin))

    assert answer.status_code == 204
    with runtime.sessions() as session:
        assert session.scalars(select(Suppression)).all() == []


def test_erasure_needs_an_admin_key_and_the_tenants_own_contact(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    erin = contact(client, acme, ERASED)
    for key in (acme.viewer, acme.sender):
        assert client.post(f"/v1/contacts/{erin}/erase", headers=acme.auth(key)).status_code == 403
    other = client.post(f"/v1/contacts/{erin}/erase", headers=globex.auth(globex.admin))
    assert other.status_code == 404
    assert (
        other.json()
        == client.post("/v1/contacts/999999/erase", headers=globex.auth(globex.admin)).json()
    )
    assert client.get(f"/v1/contacts/{erin}", headers=acme.auth(acme.viewer)).status_code == 200


@pytest.mark.parametrize("tenant_id", [1, 2])
def test_the_hash_differs_between_tenants_and_ignores_case(tenant_id: int) -> None:
    key = address_key(TEST_SECRET)
    assert hashed_address(key, tenant_id, ERASED) == hashed_address(key, tenant_id, ERASED.upper())
    assert hashed_address(key, tenant_id, ERASED) != hashed_address(key, 3, ERASED)
    assert hashed_address(key, tenant_id, ERASED) != hashed_address(
        address_key("x" * 40), tenant_id, ERASED
    )
    assert "@" not in hashed_address(key, tenant_id, ERASED)


def _hit(runtime: Runtime, tenant_id: int, message_id: int, agent: str) -> None:
    with transaction(runtime.sessions) as session:
        session.add(
            TrackingHit(
                tenant_id=tenant_id,
                message_id=message_id,
                kind="open",
                machine=False,
                user_agent=agent,
                network="198.51.100.0/24",
                created_at=datetime.now(UTC),
            )
        )


def test_the_opens_and_clicks_of_an_erased_persons_mail_go_and_others_stay(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    erin = contact(client, acme, ERASED)
    bob = contact(client, acme, OTHER)
    mine = send(client, acme, {"contact_id": erin, "subject": "Hi", "text": "x"}, key="k-erin")
    theirs = send(client, acme, {"contact_id": bob, "subject": "Hi", "text": "x"}, key="k-bob")
    _hit(runtime, acme.tenant_id, mine, "ErinsPhone/1.0")
    _hit(runtime, acme.tenant_id, theirs, "BobsLaptop/2.0")
    access = client.get(f"/v1/contacts/{erin}/data", headers=acme.auth(acme.viewer)).json()
    assert [h["user_agent"] for h in access["tracking_hits"]] == ["ErinsPhone/1.0"]
    assert client.post(f"/v1/contacts/{erin}/erase", headers=acme.auth(acme.admin)).is_success
    after = dump(runtime)
    assert "ErinsPhone" not in after and "BobsLaptop" in after


def test_an_open_still_buffered_when_the_person_is_erased_is_never_written(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    """A tracking route buffers hits and writes them about a second later (tracking/hits.py): an
    erasure in between must not be followed by their user agent and network landing in the
    database."""
    erin = contact(client, acme, ERASED)
    mine = send(client, acme, {"contact_id": erin, "subject": "Hi", "text": "x"}, key="k-erin")
    buffered = Hit(
        kind="open",
        tenant_id=acme.tenant_id,
        message_id=mine,
        link_index=None,
        url=None,
        at=datetime.now(UTC),
        user_agent="ErinsPhone/1.0",
        network="198.51.100.0/24",
    )
    assert client.post(f"/v1/contacts/{erin}/erase", headers=acme.auth(acme.admin)).is_success
    with transaction(runtime.sessions) as session:
        flushed = record_hits(session, [buffered], datetime.now(UTC))
    assert flushed.recorded == 0
    assert "ErinsPhone" not in dump(runtime)


def test_an_erased_person_who_complained_cannot_sign_up_again(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    erin = contact(client, acme, ERASED)
    client.post(
        "/v1/suppressions",
        json={"email": ERASED, "reason": "complaint"},
        headers=acme.auth(acme.sender),
    )
    assert client.post(f"/v1/contacts/{erin}/erase", headers=acme.auth(acme.admin)).is_success
    listed = client.post(
        "/v1/lists", json={"name": "public news"}, headers=acme.auth(acme.admin)
    ).json()
    made_public = client.patch(
        f"/v1/lists/{listed['id']}", json={"public": True}, headers=acme.auth(acme.admin)
    ).json()
    answer = client.post(f"/s/{made_public['public_id']}", json={"email": ERASED})
    assert answer.status_code == 202, answer.text  # the same answer as for anyone
    with runtime.sessions() as session:
        assert session.scalars(select(Contact).where(Contact.email == ERASED)).all() == []
        reason = session.scalars(
            select(Suppression.reason).where(Suppression.email == ERASED)
        ).one()
    assert reason == "complaint"  # back in plain form, and still blocking
