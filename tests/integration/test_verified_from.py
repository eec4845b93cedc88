"""TIDINGS_REQUIRE_VERIFIED_FROM refuses a From on a domain that is not verified (422 naming
``from_address``), and the workers' key cache sees a domain change within its time to live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TenantKeys, make_settings
from tests.dns_server import DnsTestServer, dns_server  # noqa: F401 - a fixture
from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.delivery.signing_keys import SigningKeys
from tidings.runtime import Runtime


@pytest.fixture
def settings(tmp_path: Path, db_url: str, dns_server: DnsTestServer) -> Settings:  # noqa: F811
    return make_settings(
        tmp_path,
        db_url,
        dns_resolver=dns_server.address,
        require_verified_from=True,
        from_address="Tidings <noreply@default.example.net>",
    )


def verified(
    client: TestClient,
    tenant: TenantKeys,
    dns: DnsTestServer,
    domain: str = "mail.example.com",
) -> dict[str, Any]:
    admin = tenant.auth(tenant.admin)
    created = client.post("/v1/domains", json={"domain": domain}, headers=admin).json()
    (record,) = [r for r in created["dns_records"] if r["purpose"] == "dkim"]
    dns.publish(record["name"], record["strings"])
    answer = client.post(f"/v1/domains/{created['id']}/verify", headers=admin).json()
    assert answer["status"] == "verified", answer
    return dict(answer)


def message(client: TestClient, tenant: TenantKeys, **fields: Any) -> Any:
    body = {"to": "ann@example.org", "subject": "Hi", "text": "Hello", **fields}
    return client.post("/v1/messages", json=body, headers=tenant.auth(tenant.sender))


def test_a_message_from_an_unverified_domain_is_refused(
    client: TestClient,
    acme: TenantKeys,
    dns_server: DnsTestServer,  # noqa: F811
) -> None:
    client.post(
        "/v1/domains", json={"domain": "pending.example.com"}, headers=acme.auth(acme.admin)
    )
    for sender in ("news@pending.example.com", "news@nowhere.example.com", None):
        answer = message(client, acme, from_address=sender)
        assert answer.status_code == 422, (sender, answer.text)
        assert answer.json()["error"]["field"] == "from_address"
    verified(client, acme, dns_server)
    assert message(client, acme, from_address="news@mail.example.com").status_code == 201
    # A subdomain of a verified domain is covered by it.
    assert message(client, acme, from_address="A <a@news.mail.example.com>").status_code == 201


def test_another_tenants_verified_domain_does_not_count(
    client: TestClient,
    acme: TenantKeys,
    globex: TenantKeys,
    dns_server: DnsTestServer,  # noqa: F811
) -> None:
    verified(client, acme, dns_server)
    answer = message(client, globex, from_address="news@mail.example.com")
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "from_address"


def test_a_campaign_is_refused_at_creation_and_at_start(
    client: TestClient,
    acme: TenantKeys,
    dns_server: DnsTestServer,  # noqa: F811
) -> None:
    admin = acme.auth(acme.admin)
    template = client.post(
        "/v1/templates", json={"name": "t", "subject": "s", "html": "<p>x</p>"}, headers=admin
    ).json()
    contact = client.post("/v1/contacts", json={"email": "ann@example.org"}, headers=admin).json()
    body = {
        "name": "c",
        "template_id": template["id"],
        "contact_ids": [contact["id"]],
        "from_address": "news@mail.example.com",
    }
    refused = client.post("/v1/campaigns", json=body, headers=admin)
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "from_address"
    domain = verified(client, acme, dns_server)
    campaign = client.post("/v1/campaigns", json=body, headers=admin)
    assert campaign.status_code == 201, campaign.text
    # The domain goes away before the start: the start is refused, nothing is queued.
    assert client.delete(f"/v1/domains/{domain['id']}", headers=admin).status_code == 204
    started = client.post(f"/v1/campaigns/{campaign.json()['id']}/start", headers=admin)
    assert started.status_code == 422 and started.json()["error"]["field"] == "from_address"
    shown = client.get(f"/v1/campaigns/{campaign.json()['id']}", headers=admin).json()
    assert shown["status"] == "draft"


def test_the_workers_key_cache_follows_the_domains_within_its_ttl(
    client: TestClient,
    acme: TenantKeys,
    runtime: Runtime,
    dns_server: DnsTestServer,  # noqa: F811
) -> None:
    now = [0.0]
    keys = SigningKeys(runtime.secret_key, ttl=60.0, clock=lambda: now[0])

    def key_for(sender: str) -> Any:
        with transaction(runtime.sessions) as session:
            return keys.for_tenants(session, [acme.tenant_id])[acme.tenant_id].for_sender(sender)

    assert key_for("news@mail.example.com") is None
    domain = verified(client, acme, dns_server)
    assert key_for("news@mail.example.com") is None  # still the cached answer
    now[0] = 60.0
    key = key_for("news@mail.example.com")
    assert key is not None and key.domain == "mail.example.com"
    assert key.selector == domain["selector"]
    assert key_for("news@other.example.com") is None
    client.delete(f"/v1/domains/{domain['id']}", headers=acme.auth(acme.admin))
    now[0] = 119.0
    assert key_for("news@mail.example.com") is key
    now[0] = 120.0
    assert key_for("news@mail.example.com") is None


def test_a_rotation_signs_with_the_previous_verified_key_until_the_new_one_verifies(
    client: TestClient,
    acme: TenantKeys,
    runtime: Runtime,
    dns_server: DnsTestServer,  # noqa: F811
) -> None:
    keys = SigningKeys(runtime.secret_key, ttl=0.0)

    def selector() -> str | None:
        with transaction(runtime.sessions) as session:
            found = keys.for_tenants(session, [acme.tenant_id])[acme.tenant_id]
        key = found.for_sender("news@mail.example.com")
        return None if key is None else key.selector

    first = verified(client, acme, dns_server)
    admin = acme.auth(acme.admin)
    rotated = client.post(f"/v1/domains/{first['id']}/rotate", headers=admin).json()
    assert rotated["status"] == "pending"
    assert selector() == first["selector"]  # the previous, verified key signs meanwhile
    (record,) = [r for r in rotated["dns_records"] if r["purpose"] == "dkim"]
    dns_server.publish(record["name"], record["strings"])
    assert client.post(f"/v1/domains/{first['id']}/verify", headers=admin).json()["status"] == (
        "verified"
    )
    assert selector() == rotated["selector"]
