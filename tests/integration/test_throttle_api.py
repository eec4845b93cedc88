"""/v1/throttle: limits per tenant and per recipient domain; the workers' admission state is never
touched."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import delete, update

from tests.conftest import TenantKeys
from tidings.db.engine import transaction
from tidings.db.models import DomainThrottle, Throttle
from tidings.runtime import Runtime


def _put(client: TestClient, tenant: TenantKeys, body: dict[str, Any]) -> Any:
    return client.put("/v1/throttle", json=body, headers=tenant.auth(tenant.admin))


#: What a worker may have stored mid-flight (the engine's format does not matter here).
WORKER_STATE = {"second": {"tat": 1.5}, "minute": {"counts": [2]}, "day": {"counts": [4]}}


def _worker_state(runtime: Runtime, tenant_id: int) -> tuple[object, float]:
    with runtime.sessions() as session:
        row = session.get_one(Throttle, tenant_id)
        return row.window_state, row.blocked_until


def test_a_new_tenant_has_no_limits(client: TestClient, acme: TenantKeys) -> None:
    body = client.get("/v1/throttle", headers=acme.auth(acme.viewer)).json()
    assert {k: v for k, v in body.items() if k != "updated_at"} == {
        "enabled": False,
        "per_second": None,
        "per_minute": None,
        "per_hour": None,
        "per_day": None,
    }


def test_an_admin_sets_limits_and_only_the_given_fields_change(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    with transaction(runtime.sessions) as session:  # a worker's throttle state, mid-flight
        session.execute(
            update(Throttle)
            .where(Throttle.tenant_id == acme.tenant_id)
            .values(window_state=WORKER_STATE, blocked_until=9.5)
        )
    answer = _put(
        client,
        acme,
        {"enabled": True, "per_second": 5, "per_minute": 200, "per_hour": 5000, "per_day": 50_000},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["per_minute"] == 200 and answer.json()["enabled"] is True
    partial = _put(client, acme, {"per_minute": 100, "per_day": None}).json()
    assert (
        partial["enabled"],
        partial["per_second"],
        partial["per_minute"],
        partial["per_hour"],
        partial["per_day"],
    ) == (True, 5, 100, 5000, None)
    assert client.get("/v1/throttle", headers=acme.auth(acme.viewer)).json() == partial
    assert _worker_state(runtime, acme.tenant_id) == (WORKER_STATE, 9.5)


def test_a_tenant_without_a_throttle_row_gets_one(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    with transaction(runtime.sessions) as session:
        session.execute(delete(Throttle).where(Throttle.tenant_id == acme.tenant_id))
    assert client.get("/v1/throttle", headers=acme.auth(acme.viewer)).json()["enabled"] is False
    assert _put(client, acme, {"enabled": True, "per_hour": 10}).status_code == 200
    with runtime.sessions() as session:
        row = session.get_one(Throttle, acme.tenant_id)
        assert (row.enabled, row.per_hour, row.per_minute, row.window_state) == (True, 10, None, {})


def test_a_bad_limit_is_422_naming_the_field(client: TestClient, acme: TenantKeys) -> None:
    for body, field in (
        ({"per_second": 0}, "per_second"),
        ({"per_minute": -5}, "per_minute"),
        ({"per_hour": 10**12}, "per_hour"),
        ({"per_day": 2**70}, "per_day"),
        ({"per_day": 1.5}, "per_day"),
        ({"per_minute": "100"}, "per_minute"),
        ({"per_minute": True}, "per_minute"),
        ({"enabled": "yes"}, "enabled"),
        ({"per_week": 5}, "per_week"),
    ):
        answer = _put(client, acme, body)
        assert answer.status_code == 422, body
        assert answer.json()["error"]["field"] == field, (body, answer.json())
    assert client.get("/v1/throttle", headers=acme.auth(acme.viewer)).json()["per_minute"] is None


def test_only_an_admin_changes_limits(client: TestClient, acme: TenantKeys) -> None:
    for key in (acme.sender, acme.viewer):
        assert (
            client.put("/v1/throttle", json={"per_minute": 1}, headers=acme.auth(key)).status_code
            == 403
        )
        assert (
            client.put(
                "/v1/throttle/domains/example.com", json={"per_minute": 1}, headers=acme.auth(key)
            ).status_code
            == 403
        )
        assert (
            client.delete("/v1/throttle/domains/example.com", headers=acme.auth(key)).status_code
            == 403
        )
    assert client.get("/v1/throttle/domains", headers=acme.auth(acme.viewer)).status_code == 200


def test_each_tenant_has_its_own_limits(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    _put(client, acme, {"enabled": True, "per_minute": 7})
    client.put(
        "/v1/throttle/domains/example.com", json={"per_minute": 3}, headers=acme.auth(acme.admin)
    )
    assert (
        client.get("/v1/throttle", headers=globex.auth(globex.viewer)).json()["per_minute"] is None
    )
    assert (
        client.get("/v1/throttle/domains", headers=globex.auth(globex.viewer)).json()["items"] == []
    )
    gone = client.delete("/v1/throttle/domains/example.com", headers=globex.auth(globex.admin))
    assert gone.status_code == 404
    assert (
        len(client.get("/v1/throttle/domains", headers=acme.auth(acme.viewer)).json()["items"]) == 1
    )


def test_domain_limits_are_set_changed_listed_and_removed(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    created = client.put(
        "/v1/throttle/domains/Outlook.COM", json={"per_minute": 20}, headers=acme.auth(acme.admin)
    )
    assert created.status_code == 200
    assert created.json() == {"domain": "outlook.com", "per_minute": 20, "per_hour": None}
    with transaction(runtime.sessions) as session:
        session.execute(update(DomainThrottle).values(window_state={"minute": {"counts": [42]}}))
    changed = client.put(
        "/v1/throttle/domains/outlook.com",
        json={"per_minute": 10, "per_hour": 300},
        headers=acme.auth(acme.admin),
    ).json()
    assert changed == {"domain": "outlook.com", "per_minute": 10, "per_hour": 300}
    with runtime.sessions() as session:
        [row] = session.query(DomainThrottle).all()
        # The workers' state survives a change of limits.
        assert row.window_state == {"minute": {"counts": [42]}}
    client.put(
        "/v1/throttle/domains/xn--bcher-kva.de", json={"per_hour": 5}, headers=acme.auth(acme.admin)
    )
    listed = client.get("/v1/throttle/domains", headers=acme.auth(acme.viewer)).json()["items"]
    assert [d["domain"] for d in listed] == ["outlook.com", "bücher.de"]
    removed = client.delete("/v1/throttle/domains/OUTLOOK.com", headers=acme.auth(acme.admin))
    assert removed.status_code == 200 and removed.json()["domain"] == "outlook.com"
    assert (
        client.delete("/v1/throttle/domains/outlook.com", headers=acme.auth(acme.admin)).status_code
        == 404
    )


def test_a_bad_domain_limit_is_422_naming_the_field(client: TestClient, acme: TenantKeys) -> None:
    for domain, body, field in (
        ("example.com", {"per_minute": 0}, "per_minute"),
        ("example.com", {"per_hour": 10**10}, "per_hour"),
        ("example.com", {"per_day": 5}, "per_day"),
        ("localhost", {"per_minute": 5}, "domain"),
        ("exa mple.com", {"per_minute": 5}, "domain"),
        ("-bad-.com", {"per_minute": 5}, "domain"),
        ("a" * 70 + ".com", {"per_minute": 5}, "domain"),
    ):
        answer = client.put(
            f"/v1/throttle/domains/{domain}", json=body, headers=acme.auth(acme.admin)
        )
        assert answer.status_code == 422, (domain, body)
        assert answer.json()["error"]["field"] == field, (domain, answer.json())
