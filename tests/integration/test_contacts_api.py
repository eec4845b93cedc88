"""Contacts: upsert by normalised address, field rules, pagination and filters, tenant isolation."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TenantKeys


def _create(client: TestClient, tenant: TenantKeys, **body: Any) -> dict[str, Any]:
    answer = client.post("/v1/contacts", json=body, headers=tenant.auth(tenant.sender))
    assert answer.status_code == 201, answer.text
    return answer.json()


def _all(client: TestClient, tenant: TenantKeys, **params: Any) -> list[dict[str, Any]]:
    answer = client.get(
        "/v1/contacts", params={"limit": 500, **params}, headers=tenant.auth(tenant.viewer)
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["items"]


def test_upsert_creates_then_updates_the_same_contact_by_normalised_address(
    client: TestClient, acme: TenantKeys
) -> None:
    first = _create(
        client,
        acme,
        email=" Ann.Lee@Example.COM ",
        name="Ann",
        timezone="Europe/Paris",
        attributes={"plan": "gold", "seats": 3},
    )
    assert first["email"] == "Ann.Lee@example.com"
    assert first["status"] == "active" and first["list_ids"] == []

    again = client.post(
        "/v1/contacts",
        json={
            "email": "Ann.Lee@EXAMPLE.com",
            "first_name": "Ann",
            "attributes": {"seats": 5, "vip": True},
        },
        headers=acme.auth(acme.sender),
    )
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["id"] == first["id"]
    assert body["name"] == "Ann" and body["timezone"] == "Europe/Paris"  # not given: kept
    assert body["first_name"] == "Ann"
    assert body["attributes"] == {"plan": "gold", "seats": 5, "vip": True}  # merged key by key
    assert len(_all(client, acme)) == 1


def test_upsert_adds_memberships_and_refuses_unknown_lists_without_storing(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    mine = client.post("/v1/lists", json={"name": "news"}, headers=acme.auth(acme.sender)).json()
    theirs = client.post("/v1/lists", json={"name": "x"}, headers=globex.auth(globex.sender)).json()
    created = _create(client, acme, email="a@example.com", list_ids=[mine["id"]])
    assert created["list_ids"] == [mine["id"]]

    refused = client.post(
        "/v1/contacts",
        json={"email": "b@example.com", "list_ids": [theirs["id"]]},
        headers=acme.auth(acme.sender),
    )
    assert refused.status_code == 404
    assert refused.json()["error"]["field"] == "list_ids"
    assert [c["email"] for c in _all(client, acme)] == ["a@example.com"]


def test_get_patch_and_delete_a_contact(client: TestClient, acme: TenantKeys) -> None:
    news = client.post("/v1/lists", json={"name": "news"}, headers=acme.auth(acme.sender)).json()
    contact = _create(
        client,
        acme,
        email="a@example.com",
        name="A",
        attributes={"k": 1, "old": 2},
        list_ids=[news["id"]],
    )
    url = f"/v1/contacts/{contact['id']}"
    assert client.get(url, headers=acme.auth(acme.viewer)).json()["name"] == "A"

    patched = client.patch(
        url,
        json={
            "name": None,
            "attributes": {"k": 9},
            "status": "unsubscribed",
            "email": "A2@Example.com",
        },
        headers=acme.auth(acme.sender),
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["name"] is None and body["email"] == "A2@example.com"
    assert body["attributes"] == {"k": 9}  # PATCH replaces the object
    assert body["status"] == "unsubscribed"
    assert body["updated_at"] >= contact["updated_at"]

    assert client.delete(url, headers=acme.auth(acme.sender)).status_code == 204
    assert client.get(url, headers=acme.auth(acme.viewer)).status_code == 404
    after = client.get(f"/v1/lists/{news['id']}", headers=acme.auth(acme.viewer)).json()
    assert after["member_count"] == 0  # the membership went with the contact
    assert client.delete(url, headers=acme.auth(acme.sender)).status_code == 404


def test_deleting_a_contact_keeps_its_messages_detached_from_it(
    client: TestClient, acme: TenantKeys
) -> None:
    contact = _create(client, acme, email="gone@example.com")
    sent = client.post(
        "/v1/messages",
        json={"contact_id": contact["id"], "subject": "Hi", "text": "x"},
        headers=acme.auth(acme.sender),
    )
    assert sent.status_code == 201, sent.text
    assert sent.json()["contact_id"] == contact["id"]
    url = f"/v1/contacts/{contact['id']}"
    assert client.delete(url, headers=acme.auth(acme.sender)).status_code == 204
    after = client.get(f"/v1/messages/{sent.json()['id']}", headers=acme.auth(acme.viewer))
    assert after.status_code == 200
    # The record stays, addressed as it was, and points at no contact (ON DELETE SET NULL's effect).
    assert after.json()["contact_id"] is None and after.json()["to"] == "gone@example.com"


def test_changing_the_address_to_one_already_taken_is_a_conflict(
    client: TestClient, acme: TenantKeys
) -> None:
    _create(client, acme, email="taken@example.com")
    other = _create(client, acme, email="other@example.com")
    answer = client.patch(
        f"/v1/contacts/{other['id']}",
        json={"email": "TAKEN@example.com".lower()},
        headers=acme.auth(acme.sender),
    )
    assert answer.status_code == 409 and answer.json()["error"]["field"] == "email"
    assert (
        client.get(f"/v1/contacts/{other['id']}", headers=acme.auth(acme.viewer)).json()["email"]
        == "other@example.com"
    )


BAD_FIELDS = [
    ({"email": "not-an-address"}, "email"),
    ({"email": "a@localhost"}, "email"),
    ({"email": "a@example.com\r\nBcc: x@example.com"}, "email"),
    ({"name": "x"}, "email"),
    ({"email": 5}, "email"),
    ({"email": "a@example.com", "name": "Ann\r\nBcc: evil@example.com"}, "name"),
    ({"email": "a@example.com", "first_name": "A\x00"}, "first_name"),
    ({"email": "a@example.com", "last_name": "L" * 201}, "last_name"),
    ({"email": "a@example.com", "name": "x\u2028y"}, "name"),
    ({"email": "a@example.com", "timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"email": "a@example.com", "timezone": "../../etc/passwd"}, "timezone"),
    ({"email": "a@example.com", "locale": "english please"}, "locale"),
    ({"email": "a@example.com", "attributes": ["not", "an", "object"]}, "attributes"),
    ({"email": "a@example.com", "attributes": {"big": "x" * 20_000}}, "attributes"),
    ({"email": "a@example.com", "attributes": {"nul": "a\u0000b"}}, "attributes"),
    ({"email": "a@example.com", "status": "gone"}, "status"),
    ({"email": "a@example.com", "status": None}, "status"),
    ({"email": "a@example.com", "list_ids": [0]}, "list_ids.0"),
    ({"email": "a@example.com", "nmae": "typo"}, "nmae"),
]


@pytest.mark.parametrize(("body", "field"), BAD_FIELDS)
def test_each_bad_field_is_422_naming_it_and_nothing_is_stored(
    client: TestClient, acme: TenantKeys, body: dict[str, Any], field: str
) -> None:
    answer = client.post("/v1/contacts", json=body, headers=acme.auth(acme.sender))
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field
    assert _all(client, acme) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": None}, "email"),
        ({"email": "nope"}, "email"),
        ({"name": "a\nb"}, "name"),
        ({"timezone": "Nowhere/City"}, "timezone"),
        ({"attributes": None}, "attributes"),
        ({"status": "deleted"}, "status"),
        ({"locale": "x" * 40}, "locale"),
    ],
)
def test_a_bad_patch_changes_nothing(
    client: TestClient, acme: TenantKeys, body: dict[str, Any], field: str
) -> None:
    contact = _create(client, acme, email="a@example.com", name="A", attributes={"k": 1})
    answer = client.patch(
        f"/v1/contacts/{contact['id']}",
        json={"first_name": "Changed", **body},
        headers=acme.auth(acme.sender),
    )
    assert answer.status_code == 422 and answer.json()["error"]["field"] == field
    assert (
        client.get(f"/v1/contacts/{contact['id']}", headers=acme.auth(acme.viewer)).json()
        == contact
    )


def test_pagination_walks_every_contact_once_in_id_order(
    client: TestClient, acme: TenantKeys
) -> None:
    ids = [_create(client, acme, email=f"p{i}@example.com")["id"] for i in range(7)]
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/contacts", params=params, headers=acme.auth(acme.viewer)).json()
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    for params, field in (
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"cursor": "abc"}, "cursor"),
        ({"status": "nope"}, "status"),
        ({"list_id": "x"}, "list_id"),
    ):
        answer = client.get("/v1/contacts", params=params, headers=acme.auth(acme.viewer))
        assert answer.status_code == 422 and answer.json()["error"]["field"] == field


def test_filters_by_status_list_and_address_substring(client: TestClient, acme: TenantKeys) -> None:
    news = client.post("/v1/lists", json={"name": "news"}, headers=acme.auth(acme.sender)).json()[
        "id"
    ]
    _create(client, acme, email="ann@alpha.org", list_ids=[news])
    _create(client, acme, email="bob@beta.org", status="unsubscribed", list_ids=[news])
    _create(client, acme, email="cy_x@alpha.org", status="bounced")
    _create(client, acme, email="cyqx@gamma.org")

    def emails(**params: Any) -> list[str]:
        return [c["email"] for c in _all(client, acme, **params)]

    assert emails(status="unsubscribed") == ["bob@beta.org"]
    assert emails(list_id=news) == ["ann@alpha.org", "bob@beta.org"]
    assert emails(list_id=news, status="active") == ["ann@alpha.org"]
    assert emails(q="ALPHA") == ["ann@alpha.org", "cy_x@alpha.org"]
    assert emails(q="cy_x") == ["cy_x@alpha.org"]  # "_" is a character here, not a wildcard
    assert emails(q="%") == []
    missing = client.get(
        "/v1/contacts", params={"list_id": 999_999}, headers=acme.auth(acme.viewer)
    )
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "list_id"


def test_another_tenants_contacts_are_invisible_and_untouchable(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    contact = _create(client, acme, email="a@example.com", name="A")
    acme_list = client.post("/v1/lists", json={"name": "l"}, headers=acme.auth(acme.sender)).json()
    url = f"/v1/contacts/{contact['id']}"
    g = globex.auth(globex.admin)
    missing = client.get("/v1/contacts/999999", headers=g).json()
    for answer in (
        client.get(url, headers=g),
        client.patch(url, json={"name": "B"}, headers=g),
        client.delete(url, headers=g),
    ):
        assert answer.status_code == 404
        assert answer.json() == missing
    assert (
        client.get("/v1/contacts", params={"list_id": acme_list["id"]}, headers=g).status_code
        == 404
    )
    assert client.get("/v1/contacts", headers=g).json()["items"] == []
    # The same address is a different contact in another tenant, and upserting it leaves acme's alone.
    assert (
        client.post(
            "/v1/contacts", json={"email": "a@example.com", "name": "G"}, headers=g
        ).status_code
        == 201
    )
    assert client.get(url, headers=acme.auth(acme.viewer)).json() == contact


def test_viewer_reads_but_cannot_write(client: TestClient, acme: TenantKeys) -> None:
    contact = _create(client, acme, email="a@example.com")
    url = f"/v1/contacts/{contact['id']}"
    v = acme.auth(acme.viewer)
    for answer in (
        client.post("/v1/contacts", json={"email": "b@example.com"}, headers=v),
        client.patch(url, json={"name": "x"}, headers=v),
        client.delete(url, headers=v),
    ):
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "forbidden"
    assert client.get(url, headers=v).json() == contact
    assert client.get("/v1/contacts", headers={}).status_code == 401
