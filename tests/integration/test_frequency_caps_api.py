"""``/v1/frequency-caps``: admins set, replace and remove a category's cap; others only read."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import TenantKeys


def test_set_replace_list_and_delete_a_cap(client: TestClient, acme: TenantKeys) -> None:
    auth = acme.auth(acme.admin)
    created = client.put("/v1/frequency-caps/reminders", json={"max_per_day": 3}, headers=auth)
    assert created.status_code == 201
    assert created.json()["mode"] == "delay"
    replaced = client.put(
        "/v1/frequency-caps/reminders", json={"max_per_day": 2, "mode": "suppress"}, headers=auth
    )
    assert replaced.status_code == 200
    assert replaced.json() | {"created_at": None} == {
        "category": "reminders",
        "max_per_day": 2,
        "mode": "suppress",
        "created_at": None,
    }
    listed = client.get("/v1/frequency-caps", headers=acme.auth(acme.viewer)).json()["items"]
    assert [(c["category"], c["max_per_day"], c["mode"]) for c in listed] == [
        ("reminders", 2, "suppress")
    ]
    assert client.delete("/v1/frequency-caps/reminders", headers=auth).status_code == 204
    assert client.delete("/v1/frequency-caps/reminders", headers=auth).status_code == 404


def test_invalid_caps_are_refused(client: TestClient, acme: TenantKeys) -> None:
    auth = acme.auth(acme.admin)
    for body in (
        {"max_per_day": 0},
        {"max_per_day": 1001},
        {"max_per_day": "3"},
        {"max_per_day": 1, "mode": "later"},
        {},
    ):
        assert client.put("/v1/frequency-caps/x", json=body, headers=auth).status_code == 422, body
    assert (
        client.put(
            "/v1/frequency-caps/" + "x" * 65, json={"max_per_day": 1}, headers=auth
        ).status_code
        == 422
    )


def test_only_admins_write_and_tenants_are_isolated(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    body = {"max_per_day": 3}
    for key in (acme.viewer, acme.sender):
        assert (
            client.put("/v1/frequency-caps/news", json=body, headers=acme.auth(key)).status_code
            == 403
        )
    assert (
        client.put("/v1/frequency-caps/news", json=body, headers=acme.auth(acme.admin)).status_code
        == 201
    )
    assert (
        client.get("/v1/frequency-caps", headers=globex.auth(globex.viewer)).json()["items"] == []
    )
    assert (
        client.delete("/v1/frequency-caps/news", headers=globex.auth(globex.admin)).status_code
        == 404
    )
    assert (
        client.delete("/v1/frequency-caps/news", headers=acme.auth(acme.sender)).status_code == 403
    )
