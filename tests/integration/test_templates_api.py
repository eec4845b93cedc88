"""Templates API: CRUD, compile errors with lines, preview for a contact, roles, tenant isolation."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import TenantKeys
from tidings.db.engine import transaction
from tidings.db.models import Campaign, Contact, Event, Message, Suppression
from tidings.runtime import Runtime

WELCOME = {
    "name": "welcome",
    "subject": "Welcome, {{ first_name or 'friend' }}",
    "html": "<p>Hi {{ first_name }}, {{ personal_message }}</p>\n"
    '<p>Due {{ deadline }}. <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>',
    "category": "onboarding",
}


def _create(client: TestClient, tenant: TenantKeys, **overrides: Any) -> dict[str, Any]:
    answer = client.post(
        "/v1/templates", json={**WELCOME, **overrides}, headers=tenant.auth(tenant.sender)
    )
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _contact(runtime: Runtime, tenant: TenantKeys, email: str, **fields: Any) -> int:
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        contact = Contact(
            tenant_id=tenant.tenant_id,
            email=email,
            attributes=fields.pop("attributes", {}),
            status=fields.pop("status", "active"),
            created_at=now,
            updated_at=now,
            **fields,
        )
        session.add(contact)
        session.flush()
        return contact.id


def test_create_read_list_replace_and_delete(client: TestClient, acme: TenantKeys) -> None:
    created = _create(client, acme)
    assert created["text"] is None and created["category"] == "onboarding"
    path = f"/v1/templates/{created['id']}"
    assert client.get(path, headers=acme.auth(acme.viewer)).json() == created

    listed = client.get("/v1/templates", headers=acme.auth(acme.viewer)).json()
    assert [t["name"] for t in listed["items"]] == ["welcome"]
    assert "html" not in listed["items"][0]  # bodies only on the template itself

    replaced = client.put(
        path,
        json={"name": "welcome-2", "subject": "Hello", "text": "Plain {{ email }}"},
        headers=acme.auth(acme.sender),
    )
    assert replaced.status_code == 200, replaced.text
    body = replaced.json()
    assert (body["name"], body["html"], body["text"], body["category"]) == (
        "welcome-2",
        None,
        "Plain {{ email }}",
        None,
    )
    assert body["created_at"] == created["created_at"]

    assert client.delete(path, headers=acme.auth(acme.sender)).status_code == 204
    assert client.get(path, headers=acme.auth(acme.viewer)).status_code == 404


def test_names_are_unique_per_tenant(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    first = _create(client, acme)
    again = client.post("/v1/templates", json=WELCOME, headers=acme.auth(acme.sender))
    assert again.status_code == 409 and again.json()["error"]["field"] == "name"
    _create(client, globex)  # another tenant may use the same name
    other = _create(client, acme, name="other")
    clash = client.put(f"/v1/templates/{other['id']}", json=WELCOME, headers=acme.auth(acme.sender))
    assert clash.status_code == 409
    same = client.put(
        f"/v1/templates/{first['id']}",
        json={**WELCOME, "subject": "New"},
        headers=acme.auth(acme.sender),
    )
    assert same.status_code == 200  # keeping its own name is no clash


def test_a_syntax_error_is_refused_naming_the_field_and_line(
    client: TestClient, acme: TenantKeys
) -> None:
    cases = [
        ({"html": "<p>ok</p>\n<p>{% if x %}never closed</p>"}, "html", 2),
        ({"text": "line 1\nline 2\n{{ x|no_such_filter }}"}, "text", 3),
        ({"subject": "Hi {{ first_name "}, "subject", 1),
        ({"text": "{% include 'other' %}"}, "text", 1),
    ]
    for overrides, field, line in cases:
        answer = client.post(
            "/v1/templates", json={**WELCOME, **overrides}, headers=acme.auth(acme.sender)
        )
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert (error["code"], error["field"]) == ("template_syntax", field)
        assert error["message"].endswith(f"(line {line})"), error
    assert client.get("/v1/templates", headers=acme.auth(acme.viewer)).json()["items"] == []


def test_bad_fields_are_422_naming_the_field(client: TestClient, acme: TenantKeys) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"html": None, "text": None}, "html"),
        ({"html": "  ", "text": ""}, "html"),
        ({"html": "x" * (512 * 1024 + 1)}, "html"),
        ({"text": "é" * (300 * 1024)}, "text"),  # under 512 K characters, over 512 KB
        ({"subject": "s" * 5000}, "subject"),
        ({"subject": "   "}, "subject"),
        ({"name": ""}, "name"),
        ({"name": "tab\there"}, "name"),
        ({"category": "c" * 65}, "category"),
        ({"surprise": 1}, "surprise"),
    ]
    for overrides, field in cases:
        answer = client.post(
            "/v1/templates", json={**WELCOME, **overrides}, headers=acme.auth(acme.sender)
        )
        assert answer.status_code == 422, (overrides.keys(), answer.text[:300])
        assert answer.json()["error"]["field"] == field, answer.json()


def test_preview_renders_for_a_contact_with_data(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    template = _create(client, acme)
    contact_id = _contact(runtime, acme, "ann@example.com", first_name="Ann")
    answer = client.post(
        f"/v1/templates/{template['id']}/preview",
        json={
            "contact_id": contact_id,
            "data": {"personal_message": "<3 Tom & Jerry", "deadline": "1 July"},
        },
        headers=acme.auth(acme.viewer),
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["subject"] == "Welcome, Ann"
    assert "<p>Hi Ann, &lt;3 Tom &amp; Jerry</p>" in body["html"]
    assert body["text"].startswith("Hi Ann, <3 Tom & Jerry\n\nDue 1 July. Unsubscribe (")
    # A preview has no message, so its link is an inert placeholder (tokens.py).
    assert body["text"].endswith("Unsubscribe (http://tidings.test/u/preview)")


def test_preview_for_an_address_that_is_not_a_contact(client: TestClient, acme: TenantKeys) -> None:
    template = _create(client, acme, subject="To {{ email }}", html=None, text="{{ first_name }}.")
    path = f"/v1/templates/{template['id']}/preview"
    answer = client.post(path, json={"email": " Bob@Example.COM "}, headers=acme.auth(acme.viewer))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"subject": "To Bob@example.com", "html": None, "text": "."}
    for body, field in (
        ({"email": "not an address"}, "email"),
        ({}, "contact_id"),
        ({"email": "a@example.com", "contact_id": 1}, "contact_id"),
        ({"contact_id": 0}, "contact_id"),
        ({"email": "a@example.com", "data": []}, "data"),
    ):
        bad = client.post(path, json=body, headers=acme.auth(acme.viewer))
        assert bad.status_code == 422, (body, bad.text)
        assert bad.json()["error"]["field"] == field


def test_a_viewers_preview_yields_no_link_that_can_resubscribe_or_suppress(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    """A viewer previewing for a contact who opted out, or for any address, gets only inert
    links: following them (GET or POST, every action) answers a page and changes nothing."""
    template = _create(
        client,
        acme,
        html='<a href="{{ unsubscribe_url }}">u</a> <a href="{{ preferences_url }}">p</a>',
    )
    ann = _contact(runtime, acme, "ann@example.com", status="unsubscribed")
    with transaction(runtime.sessions) as session:
        session.add(
            Suppression(
                tenant_id=acme.tenant_id,
                email="ann@example.com",
                reason="unsubscribe",
                created_at=datetime.now(UTC),
            )
        )
    before = _compliance_state(runtime, acme)
    links: set[str] = set()
    for recipient in ({"contact_id": ann}, {"email": "victim@example.com"}):
        answer = client.post(
            f"/v1/templates/{template['id']}/preview",
            json={**recipient, "data": {}},
            headers=acme.auth(acme.viewer),
        )
        assert answer.status_code == 200, answer.text
        links.update(re.findall(r'href="([^"]+)"', answer.json()["html"]))
    assert links == {"http://tidings.test/u/preview", "http://tidings.test/p/preview"}
    for link in links:
        path = link.removeprefix("http://tidings.test")
        page = client.get(path)
        assert (page.status_code, "This is a preview link" in page.text) == (200, True)
        for form in (
            {"List-Unsubscribe": "One-Click"},
            {"action": "resubscribe"},
            {"action": "unsubscribe_all"},
        ):
            answer = client.post(path, data=form)
            assert (answer.status_code, "Nothing was changed" in answer.text) == (200, True)
    assert _compliance_state(runtime, acme) == before


def _compliance_state(runtime: Runtime, tenant: TenantKeys) -> object:
    with runtime.sessions() as session:
        return (
            session.execute(
                select(Contact.email, Contact.status).where(Contact.tenant_id == tenant.tenant_id)
            ).all(),
            session.execute(
                select(Suppression.email, Suppression.reason).where(
                    Suppression.tenant_id == tenant.tenant_id
                )
            ).all(),
            session.scalar(select(func.count()).select_from(Event)),
        )


def test_preview_names_an_undefined_variable(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    template = _create(client, acme)
    contact_id = _contact(runtime, acme, "ann@example.com")
    answer = client.post(
        f"/v1/templates/{template['id']}/preview",
        json={"contact_id": contact_id, "data": {"personal_message": "hi"}},
        headers=acme.auth(acme.viewer),
    )
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == ("render_failed", "html")
    assert "'deadline' is undefined" in error["message"]


def test_another_tenants_template_and_contact_are_not_found(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    template = _create(client, acme)
    path = f"/v1/templates/{template['id']}"
    their_contact = _contact(runtime, globex, "g@example.com")
    missing = client.get("/v1/templates/999999", headers=globex.auth(globex.admin)).json()
    answers = [
        client.get(path, headers=globex.auth(globex.admin)),
        client.put(path, json=WELCOME, headers=globex.auth(globex.admin)),
        client.delete(path, headers=globex.auth(globex.admin)),
        client.post(
            f"{path}/preview", json={"email": "x@example.com"}, headers=globex.auth(globex.admin)
        ),
    ]
    for answer in answers:
        assert answer.status_code == 404
        assert answer.json() == missing
    assert client.get("/v1/templates", headers=globex.auth(globex.admin)).json()["items"] == []

    own_template_their_contact = client.post(
        f"{path}/preview",
        json={"contact_id": their_contact, "data": {"personal_message": "", "deadline": ""}},
        headers=acme.auth(acme.viewer),
    )
    assert own_template_their_contact.status_code == 404
    assert own_template_their_contact.json()["error"]["field"] == "contact_id"
    assert client.get(path, headers=acme.auth(acme.viewer)).json() == template  # untouched


def test_viewers_read_and_preview_but_cannot_write(client: TestClient, acme: TenantKeys) -> None:
    template = _create(client, acme)
    path = f"/v1/templates/{template['id']}"
    viewer = acme.auth(acme.viewer)
    for answer in (
        client.post("/v1/templates", json={**WELCOME, "name": "x"}, headers=viewer),
        client.put(path, json=WELCOME, headers=viewer),
        client.delete(path, headers=viewer),
    ):
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "forbidden"
    assert client.get(path, headers=viewer).status_code == 200
    assert client.get("/v1/templates", headers={}).status_code == 401


def test_a_template_in_use_cannot_be_deleted(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    by_campaign = _create(client, acme, name="campaign")
    by_message = _create(client, acme, name="transactional")
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        campaign = Campaign(
            tenant_id=acme.tenant_id, name="launch", template_id=by_campaign["id"], created_at=now
        )
        message = Message(
            tenant_id=acme.tenant_id,
            to_address="a@example.com",
            template_id=by_message["id"],
            status="queued",
            not_before=now,
            expires_at=now + timedelta(days=1),
            created_at=now,
            updated_at=now,
        )
        session.add_all([campaign, message])
    for template in (by_campaign, by_message):
        answer = client.delete(f"/v1/templates/{template['id']}", headers=acme.auth(acme.sender))
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"]["code"] == "conflict"

    with transaction(runtime.sessions) as session:
        session.get_one(Message, message.id).status = "sent"
    answer = client.delete(f"/v1/templates/{by_message['id']}", headers=acme.auth(acme.sender))
    assert answer.status_code == 204  # sent mail no longer needs its template


def test_the_list_is_paginated(client: TestClient, acme: TenantKeys) -> None:
    for i in range(3):
        _create(client, acme, name=f"t{i}")
    first = client.get("/v1/templates?limit=2", headers=acme.auth(acme.viewer)).json()
    assert [t["name"] for t in first["items"]] == ["t0", "t1"]
    rest = client.get(
        f"/v1/templates?limit=2&cursor={first['next_cursor']}", headers=acme.auth(acme.viewer)
    ).json()
    assert [t["name"] for t in rest["items"]] == ["t2"] and rest["next_cursor"] is None
