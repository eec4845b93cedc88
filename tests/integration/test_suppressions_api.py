"""``/v1/suppressions``: list with filters and pages, upsert, delete; scoped to the tenant."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import TenantKeys


def add(client: TestClient, tenant: TenantKeys, email: str, **fields: object) -> dict:  # type: ignore[type-arg]
    answer = client.post(
        "/v1/suppressions", json={"email": email, **fields}, headers=tenant.auth(tenant.sender)
    )
    assert answer.status_code in (200, 201), answer.text
    return answer.json()  # type: ignore[no-any-return]


def emails(client: TestClient, tenant: TenantKeys, query: str = "") -> list[str]:
    answer = client.get(f"/v1/suppressions{query}", headers=tenant.auth(tenant.viewer))
    assert answer.status_code == 200, answer.text
    return [item["email"] for item in answer.json()["items"]]


def test_adding_an_address_defaults_to_manual_and_normalises_it(
    client: TestClient, acme: TenantKeys
) -> None:
    answer = client.post(
        "/v1/suppressions",
        json={"email": "Ann@Example.COM", "detail": "asked by phone"},
        headers=acme.auth(acme.sender),
    )
    assert answer.status_code == 201
    body = answer.json()
    assert body["email"] == "Ann@example.com"
    assert body["reason"] == "manual"
    assert body["detail"] == "asked by phone"


def test_adding_an_address_again_updates_its_entry(client: TestClient, acme: TenantKeys) -> None:
    first = add(client, acme, "ann@example.com", reason="manual")
    again = client.post(
        "/v1/suppressions",
        json={"email": "ann@example.com", "reason": "complaint", "detail": "ARF"},
        headers=acme.auth(acme.sender),
    )
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert again.json()["reason"] == "complaint"
    assert emails(client, acme) == ["ann@example.com"]


def test_invalid_input_is_refused_with_the_field(client: TestClient, acme: TenantKeys) -> None:
    for body, field in (
        ({"email": "not an address"}, "email"),
        ({"email": "a@example.com", "reason": "because"}, "reason"),
        ({"email": "a@example.com", "colour": "red"}, "colour"),
    ):
        answer = client.post("/v1/suppressions", json=body, headers=acme.auth(acme.sender))
        assert answer.status_code == 422, body
        assert answer.json()["error"]["field"] == field


def test_the_list_filters_by_reason_and_address_and_pages(
    client: TestClient, acme: TenantKeys
) -> None:
    add(client, acme, "ann@example.com", reason="unsubscribe")
    add(client, acme, "bob@example.com", reason="hard_bounce")
    add(client, acme, "cy@other.example", reason="hard_bounce")
    add(client, acme, "dee_x@example.com", reason="complaint")
    assert emails(client, acme, "?reason=hard_bounce") == ["bob@example.com", "cy@other.example"]
    assert emails(client, acme, "?q=EXAMPLE.COM") == [
        "ann@example.com",
        "bob@example.com",
        "dee_x@example.com",
    ]
    assert emails(client, acme, "?q=_") == ["dee_x@example.com"]  # a literal underscore
    first = client.get("/v1/suppressions?limit=3", headers=acme.auth(acme.viewer)).json()
    assert len(first["items"]) == 3
    rest = client.get(
        f"/v1/suppressions?limit=3&cursor={first['next_cursor']}", headers=acme.auth(acme.viewer)
    ).json()
    assert [i["email"] for i in rest["items"]] == ["dee_x@example.com"]
    assert rest["next_cursor"] is None
    assert (
        client.get("/v1/suppressions?reason=nope", headers=acme.auth(acme.viewer)).status_code
        == 422
    )


def test_deleting_an_entry_and_a_missing_one(client: TestClient, acme: TenantKeys) -> None:
    add(client, acme, "ann@example.com")
    auth = acme.auth(acme.admin)
    assert client.delete("/v1/suppressions/Ann@EXAMPLE.com", headers=auth).status_code == 404
    assert client.delete("/v1/suppressions/ann@EXAMPLE.com", headers=auth).status_code == 204
    assert client.delete("/v1/suppressions/ann@example.com", headers=auth).status_code == 404
    assert client.delete("/v1/suppressions/not-an-address", headers=auth).status_code == 404
    assert emails(client, acme) == []


def test_tenants_never_see_or_touch_each_others_entries(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    add(client, acme, "ann@example.com", reason="complaint")
    assert emails(client, globex) == []
    assert (
        client.delete(
            "/v1/suppressions/ann@example.com", headers=globex.auth(globex.admin)
        ).status_code
        == 404
    )
    created = client.post(
        "/v1/suppressions", json={"email": "ann@example.com"}, headers=globex.auth(globex.sender)
    )
    assert created.status_code == 201  # globex's own entry, not acme's
    assert [
        i["reason"]
        for i in client.get("/v1/suppressions", headers=acme.auth(acme.viewer)).json()["items"]
    ] == ["complaint"]


def test_roles_viewers_read_senders_add_admins_remove(client: TestClient, acme: TenantKeys) -> None:
    body = {"email": "ann@example.com"}
    assert (
        client.post("/v1/suppressions", json=body, headers=acme.auth(acme.viewer)).status_code
        == 403
    )
    assert client.get("/v1/suppressions").status_code == 401
    add(client, acme, "ann@example.com")
    for key in (acme.viewer, acme.sender):
        answer = client.delete("/v1/suppressions/ann@example.com", headers=acme.auth(key))
        assert answer.status_code == 403
    assert emails(client, acme) == ["ann@example.com"]
