"""Lists: names unique per tenant, member counts, set-based membership, tenant isolation."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TenantKeys


def _list(client: TestClient, tenant: TenantKeys, name: str = "news") -> dict[str, Any]:
    answer = client.post("/v1/lists", json={"name": name}, headers=tenant.auth(tenant.sender))
    assert answer.status_code == 201, answer.text
    return answer.json()


def _contact(client: TestClient, tenant: TenantKeys, email: str) -> int:
    answer = client.post("/v1/contacts", json={"email": email}, headers=tenant.auth(tenant.sender))
    assert answer.status_code == 201, answer.text
    contact_id: int = answer.json()["id"]
    return contact_id


def _members(client: TestClient, tenant: TenantKeys, list_id: int) -> list[str]:
    answer = client.get(
        "/v1/contacts", params={"list_id": list_id}, headers=tenant.auth(tenant.viewer)
    )
    return [c["email"] for c in answer.json()["items"]]


def test_create_read_rename_and_delete_a_list(client: TestClient, acme: TenantKeys) -> None:
    created = client.post(
        "/v1/lists",
        json={"name": " Weekly ", "description": "digest"},
        headers=acme.auth(acme.sender),
    )
    assert created.status_code == 201
    body = created.json()
    assert (
        body["name"] == "Weekly" and body["description"] == "digest" and body["member_count"] == 0
    )
    url = f"/v1/lists/{body['id']}"
    assert client.get(url, headers=acme.auth(acme.viewer)).json() == body

    renamed = client.patch(url, json={"name": "Monthly"}, headers=acme.auth(acme.sender))
    assert renamed.status_code == 200 and renamed.json()["name"] == "Monthly"
    assert renamed.json()["description"] == "digest"
    assert [
        item["name"]
        for item in client.get("/v1/lists", headers=acme.auth(acme.viewer)).json()["items"]
    ] == ["Monthly"]

    contact = _contact(client, acme, "a@example.com")
    client.post(f"{url}/members", json={"contact_ids": [contact]}, headers=acme.auth(acme.sender))
    assert client.delete(url, headers=acme.auth(acme.sender)).status_code == 204
    assert client.get(url, headers=acme.auth(acme.viewer)).status_code == 404
    kept = client.get(f"/v1/contacts/{contact}", headers=acme.auth(acme.viewer)).json()
    assert kept["list_ids"] == []  # the contact stays, its membership went with the list


def test_list_names_are_unique_per_tenant(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    _list(client, acme, "news")
    other = _list(client, acme, "other")
    duplicate = client.post("/v1/lists", json={"name": "news"}, headers=acme.auth(acme.sender))
    assert duplicate.status_code == 409 and duplicate.json()["error"]["field"] == "name"
    renamed = client.patch(
        f"/v1/lists/{other['id']}", json={"name": "news"}, headers=acme.auth(acme.sender)
    )
    assert renamed.status_code == 409 and renamed.json()["error"]["field"] == "name"
    assert (
        client.patch(
            f"/v1/lists/{other['id']}", json={"name": "other"}, headers=acme.auth(acme.sender)
        ).status_code
        == 200
    )  # its own name is fine
    _list(client, globex, "news")  # another tenant may use the same name


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "a\nb"}, "name"),
        ({"name": "x" * 201}, "name"),
        ({}, "name"),
        ({"name": "ok", "colour": "red"}, "colour"),
        ({"name": "ok", "description": 5}, "description"),
    ],
)
def test_bad_list_fields_are_422_naming_them(
    client: TestClient, acme: TenantKeys, body: dict[str, Any], field: str
) -> None:
    answer = client.post("/v1/lists", json=body, headers=acme.auth(acme.sender))
    assert answer.status_code == 422 and answer.json()["error"]["field"] == field
    assert client.get("/v1/lists", headers=acme.auth(acme.viewer)).json()["items"] == []


def test_members_are_added_once_counted_and_removed(client: TestClient, acme: TenantKeys) -> None:
    news = _list(client, acme)
    ids = [_contact(client, acme, f"m{i}@example.com") for i in range(3)]
    url = f"/v1/lists/{news['id']}/members"
    added = client.post(url, json={"contact_ids": ids[:2]}, headers=acme.auth(acme.sender))
    assert added.status_code == 200 and added.json() == {
        "list_id": news["id"],
        "added": 2,
        "member_count": 2,
    }
    again = client.post(url, json={"contact_ids": ids}, headers=acme.auth(acme.sender)).json()
    assert again["added"] == 1 and again["member_count"] == 3
    assert (
        client.get(f"/v1/lists/{news['id']}", headers=acme.auth(acme.viewer)).json()["member_count"]
        == 3
    )

    assert client.delete(f"{url}/{ids[0]}", headers=acme.auth(acme.sender)).status_code == 204
    gone = client.delete(f"{url}/{ids[0]}", headers=acme.auth(acme.sender))
    assert gone.status_code == 404 and gone.json()["error"]["field"] == "contact_id"
    assert _members(client, acme, news["id"]) == ["m1@example.com", "m2@example.com"]
    for body, field in (
        ({"contact_ids": []}, "contact_ids"),
        ({"contact_ids": [0]}, "contact_ids.0"),
        ({}, "contact_ids"),
        ({"contact_ids": "1"}, "contact_ids"),
    ):
        answer = client.post(url, json=body, headers=acme.auth(acme.sender))
        assert answer.status_code == 422 and answer.json()["error"]["field"] == field


def test_another_tenants_contact_ids_add_nobody(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    news = _list(client, acme)
    mine = _contact(client, acme, "mine@example.com")
    theirs = _contact(client, globex, "theirs@example.com")
    answer = client.post(
        f"/v1/lists/{news['id']}/members",
        json={"contact_ids": [mine, theirs]},
        headers=acme.auth(acme.sender),
    )
    assert answer.status_code == 404 and answer.json()["error"]["field"] == "contact_ids"
    assert _members(client, acme, news["id"]) == []


def test_another_tenants_list_is_not_found_on_every_endpoint_and_unchanged(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    news = _list(client, acme)
    member = _contact(client, acme, "a@example.com")
    client.post(
        f"/v1/lists/{news['id']}/members",
        json={"contact_ids": [member]},
        headers=acme.auth(acme.sender),
    )
    own = _contact(client, globex, "g@example.com")
    g = globex.auth(globex.admin)
    url = f"/v1/lists/{news['id']}"
    answers = [
        client.get(url, headers=g),
        client.patch(url, json={"name": "mine now"}, headers=g),
        client.delete(url, headers=g),
        client.post(f"{url}/members", json={"contact_ids": [own]}, headers=g),
        client.delete(f"{url}/members/{member}", headers=g),
        client.post(
            f"{url}/import",
            content=b"email\nx@example.com\n",
            headers={**g, "content-type": "text/csv"},
        ),
    ]
    for answer in answers:
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "not_found"
    assert client.get("/v1/lists", headers=g).json()["items"] == []
    after = client.get(url, headers=acme.auth(acme.viewer)).json()
    assert after == {**news, "member_count": 1}
    assert _members(client, acme, news["id"]) == ["a@example.com"]
    assert [c["email"] for c in client.get("/v1/contacts", headers=g).json()["items"]] == [
        "g@example.com"
    ]


def test_viewer_cannot_change_lists(client: TestClient, acme: TenantKeys) -> None:
    news = _list(client, acme)
    contact = _contact(client, acme, "a@example.com")
    v = acme.auth(acme.viewer)
    url = f"/v1/lists/{news['id']}"
    answers = [
        client.post("/v1/lists", json={"name": "x"}, headers=v),
        client.patch(url, json={"name": "y"}, headers=v),
        client.delete(url, headers=v),
        client.post(f"{url}/members", json={"contact_ids": [contact]}, headers=v),
        client.delete(f"{url}/members/{contact}", headers=v),
        client.post(
            f"{url}/import",
            content=b"email\nx@example.com\n",
            headers={**v, "content-type": "text/csv"},
        ),
    ]
    assert [a.status_code for a in answers] == [403] * len(answers)
    assert client.get(url, headers=v).json() == news
