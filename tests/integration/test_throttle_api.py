"""/v1/throttle: limits per tenant and per recipient domain; the workers' admission state is never
touched."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, update

from tests.conftest import TenantKeys
from tests.integration.test_domain_rates import slow_domain
from tidings.db.engine import transaction
from tidings.db.models import DomainRate, DomainThrottle, Throttle
from tidings.delivery.adaptive import FORGET_SECONDS, START_RATE
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
    assert [d["domain"] for d in listed] == ["bücher.de", "outlook.com"]  # in byte order
    assert listed[1] == {
        "domain": "outlook.com",
        "per_minute": 10,
        "per_hour": 300,
        "adaptive_rate": None,
        "ceiling": pytest.approx(1 / 12),
        "state": "steady",
        "last_slowdown_at": None,
        "paused_until": None,
    }
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


# -- GET /v1/throttle/domains: configured limits and adaptive rates ------------------------------


def _domains(client: TestClient, key: str, **params: object) -> Any:
    answer = client.get("/v1/throttle/domains", params=params, headers=TenantKeys.auth(key))
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_domain_list_shows_each_domains_limits_and_adaptive_rate(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    auth = acme.auth(acme.admin)
    client.put("/v1/throttle/domains/outlook.com", json={"per_minute": 120}, headers=auth)
    client.put("/v1/throttle/domains/calm.test", json={"per_hour": 3600}, headers=auth)
    slowed_at = slow_domain(runtime, acme.tenant_id, "outlook.com")
    slow_domain(runtime, acme.tenant_id, "slow.test")
    slow_domain(runtime, acme.tenant_id, "api.test", retry_after=600.0)
    slow_domain(runtime, acme.tenant_id, "old.test")
    with transaction(runtime.sessions) as session:  # quiet for long: forgotten, not listed
        session.execute(
            update(DomainRate)
            .where(DomainRate.domain == "old.test")
            .values(last_slowdown_at=DomainRate.last_slowdown_at - FORGET_SECONDS)
        )
    items = {d["domain"]: d for d in _domains(client, acme.viewer)["items"]}
    assert list(items) == ["api.test", "calm.test", "outlook.com", "slow.test"]
    outlook = items["outlook.com"]
    assert (outlook["per_minute"], outlook["per_hour"], outlook["ceiling"]) == (120, None, 2.0)
    assert (outlook["adaptive_rate"], outlook["state"], outlook["paused_until"]) == (
        1.0,  # halved from its ceiling
        "backing_off",
        None,
    )
    assert datetime.fromisoformat(outlook["last_slowdown_at"]) == pytest.approx(
        slowed_at, abs=timedelta(milliseconds=1)
    )
    slow = items["slow.test"]
    assert (slow["per_minute"], slow["ceiling"], slow["adaptive_rate"], slow["state"]) == (
        None,
        None,
        START_RATE,
        "backing_off",
    )
    paused = datetime.fromisoformat(items["api.test"]["paused_until"])
    assert timedelta(seconds=590) < paused - slowed_at <= timedelta(seconds=610)
    calm = items["calm.test"]
    assert (calm["adaptive_rate"], calm["state"], calm["ceiling"], calm["last_slowdown_at"]) == (
        None,
        "steady",
        1.0,
        None,
    )


def test_the_domain_list_never_shows_another_tenants_domains(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    client.put(
        "/v1/throttle/domains/outlook.com", json={"per_minute": 5}, headers=acme.auth(acme.admin)
    )
    slow_domain(runtime, acme.tenant_id, "slow.test")
    slow_domain(runtime, acme.tenant_id, "outlook.com")
    slow_domain(runtime, globex.tenant_id, "globex-only.test")
    for key in (globex.viewer, globex.sender, globex.admin):
        assert [d["domain"] for d in _domains(client, key)["items"]] == ["globex-only.test"]
    assert [d["domain"] for d in _domains(client, acme.viewer)["items"]] == [
        "outlook.com",
        "slow.test",
    ]
    assert client.get("/v1/throttle/domains").status_code == 401


def test_the_domain_list_pages_through_limits_and_rates_alike(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    auth = acme.auth(acme.admin)
    for name in ("a.test", "c.test", "e.test"):
        client.put(f"/v1/throttle/domains/{name}", json={"per_minute": 60}, headers=auth)
    for name in ("b.test", "d.test", "e.test", "bücher.de"):
        slow_domain(runtime, acme.tenant_id, name)
    seen: list[str] = []
    cursor = None
    while True:
        page = _domains(client, acme.viewer, limit=2, **({"cursor": cursor} if cursor else {}))
        assert len(page["items"]) <= 2
        seen += [d["domain"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["a.test", "b.test", "bücher.de", "c.test", "d.test", "e.test"]
    for bad in ("zz", "ff", "x" * 3000):
        answer = client.get(
            "/v1/throttle/domains", params={"cursor": bad}, headers=acme.auth(acme.viewer)
        )
        assert answer.status_code == 422, bad
        assert answer.json()["error"]["field"] == "cursor"
