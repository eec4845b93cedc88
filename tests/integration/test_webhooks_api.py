"""``/v1/webhooks``: registering the tenant's endpoints, and the SSRF guard at registration."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TenantKeys, make_settings
from tidings.config import Settings
from tidings.errors import InvalidInput
from tidings.runtime import Runtime
from tidings.services import webhooks
from tidings.webhook_targets import IPAddress, Target

HOOK = "http://127.0.0.1:9/hooks"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url, webhook_allow_private=True)


def create(client: TestClient, tenant: TenantKeys, **body: object) -> Any:
    answer = client.post(
        "/v1/webhooks",
        json={"url": HOOK, "event_types": ["message.bounced"], **body},
        headers=tenant.auth(tenant.admin),
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_an_endpoint_is_created_with_its_secret_shown_once(
    client: TestClient, acme: TenantKeys
) -> None:
    created = create(
        client, acme, event_types=["message.bounced", "message.complained", "message.bounced"]
    )
    assert created["secret"].startswith("whsec_")
    assert created["event_types"] == ["message.bounced", "message.complained"]
    assert created["url"] == HOOK and created["enabled"] is True and created["last_status"] is None
    viewer = acme.auth(acme.viewer)
    listed = client.get("/v1/webhooks", headers=viewer).json()
    assert [item["id"] for item in listed["items"]] == [created["id"]]
    assert "secret" not in listed["items"][0]
    detail = client.get(f"/v1/webhooks/{created['id']}", headers=viewer).json()
    assert detail["recent_deliveries"] == [] and "secret" not in detail
    deliveries = client.get(f"/v1/webhooks/{created['id']}/deliveries", headers=viewer).json()
    assert deliveries == {"items": [], "next_cursor": None}


def test_an_endpoint_is_deleted(client: TestClient, acme: TenantKeys) -> None:
    created = create(client, acme)
    admin = acme.auth(acme.admin)
    assert client.delete(f"/v1/webhooks/{created['id']}", headers=admin).status_code == 204
    assert client.get(f"/v1/webhooks/{created['id']}", headers=admin).status_code == 404
    assert client.delete(f"/v1/webhooks/{created['id']}", headers=admin).status_code == 404


def test_only_admins_register_or_remove_endpoints(client: TestClient, acme: TenantKeys) -> None:
    created = create(client, acme)
    for key in (acme.viewer, acme.sender):
        body = {"url": HOOK, "event_types": ["message.sent"]}
        assert client.post("/v1/webhooks", json=body, headers=acme.auth(key)).status_code == 403
        assert (
            client.delete(f"/v1/webhooks/{created['id']}", headers=acme.auth(key)).status_code
            == 403
        )
    assert client.get("/v1/webhooks").status_code == 401


def test_another_tenants_endpoint_is_not_found(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    created = create(client, acme)
    theirs = globex.auth(globex.admin)
    for path in (f"/v1/webhooks/{created['id']}", f"/v1/webhooks/{created['id']}/deliveries"):
        assert client.get(path, headers=theirs).status_code == 404
    assert client.delete(f"/v1/webhooks/{created['id']}", headers=theirs).status_code == 404
    assert client.get("/v1/webhooks", headers=theirs).json()["items"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": HOOK, "event_types": ["message.glanced"]}, "event_types.0"),
        ({"url": HOOK, "event_types": []}, "event_types"),
        ({"url": "ftp://example.com/x", "event_types": ["message.sent"]}, "url"),
        ({"url": "https://user:pw@example.com/x", "event_types": ["message.sent"]}, "url"),
        ({"url": HOOK, "event_types": ["message.sent"], "secret": "mine"}, "secret"),
    ],
)
def test_bad_endpoints_are_422_naming_the_field(
    client: TestClient, acme: TenantKeys, body: dict[str, Any], field: str
) -> None:
    answer = client.post("/v1/webhooks", json=body, headers=acme.auth(acme.admin))
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hooks",
        "http://localhost/hooks",
        "http://10.1.2.3/hooks",
        "https://192.168.0.10/hooks",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://0.0.0.0/hooks",
        "http://[fe80::1]/hooks",
        "http://100.64.0.1/hooks",
    ],
)
def test_private_loopback_and_link_local_targets_are_refused_unless_allowed(
    client: TestClient, runtime: Runtime, acme: TenantKeys, url: str
) -> None:
    runtime.settings = runtime.settings.model_copy(update={"webhook_allow_private": False})
    answer = client.post(
        "/v1/webhooks",
        json={"url": url, "event_types": ["message.sent"]},
        headers=acme.auth(acme.admin),
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == "url"
    assert "public addresses" in answer.json()["error"]["message"]
    assert client.get("/v1/webhooks", headers=acme.auth(acme.admin)).json()["items"] == []


def _ip_addresses_in(text: str) -> list[str]:
    """Every IPv4 or IPv6 address written in ``text``."""
    candidates = re.findall(r"[0-9A-Fa-f]*:[0-9A-Fa-f:.]*|\d{1,3}(?:\.\d{1,3}){3}", text)
    found = []
    for candidate in candidates:
        for form in (candidate, candidate.rstrip(".:"), candidate.rsplit(":", 1)[0]):
            try:
                found.append(str(ipaddress.ip_address(form)))
                break
            except ValueError:
                continue
    return found


def test_the_ip_address_finder_finds_addresses() -> None:
    assert _ip_addresses_in("resolves to 10.1.2.3, a private address") == ["10.1.2.3"]
    assert _ip_addresses_in("resolves to ::1.") == ["::1"]
    assert _ip_addresses_in("at [fe80::1]:80 and 127.0.0.1:8080") == ["fe80::1", "127.0.0.1"]
    assert _ip_addresses_in("url names a host that is not allowed") == []


def test_a_refused_name_does_not_reveal_what_it_resolves_to(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    """The error names the field and the rule, never the internal address behind the name."""
    runtime.settings = runtime.settings.model_copy(update={"webhook_allow_private": False})
    answer = client.post(
        "/v1/webhooks",
        json={"url": "http://localhost:8080/hooks", "event_types": ["message.sent"]},
        headers=acme.auth(acme.admin),
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == "url" and "not allowed" in error["message"]
    assert _ip_addresses_in(answer.text) == [], answer.text


def test_an_intranet_name_does_not_reveal_its_address() -> None:
    """The same through the service, with a name that resolves to an office network address."""

    def intranet(_target: Target) -> list[IPAddress]:
        return [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.20.30.40")]

    with pytest.raises(InvalidInput) as refused:
        webhooks.check_url(
            "https://wiki.intranet.example/hooks", allow_private=False, resolve=intranet
        )
    assert refused.value.field == "url" and "not allowed" in refused.value.message
    assert _ip_addresses_in(refused.value.message) == [], refused.value.message


def test_a_host_that_does_not_resolve_is_refused(client: TestClient, acme: TenantKeys) -> None:
    answer = client.post(
        "/v1/webhooks",
        json={"url": "https://no-such-host.invalid/hooks", "event_types": ["message.sent"]},
        headers=acme.auth(acme.admin),
    )
    assert answer.status_code == 422
    assert "cannot be resolved" in answer.json()["error"]["message"]


def test_a_tenant_has_a_bounded_number_of_endpoints(client: TestClient, acme: TenantKeys) -> None:
    from tidings.services.webhooks import MAX_ENDPOINTS_PER_TENANT

    for _ in range(MAX_ENDPOINTS_PER_TENANT):
        create(client, acme)
    answer = client.post(
        "/v1/webhooks",
        json={"url": HOOK, "event_types": ["message.sent"]},
        headers=acme.auth(acme.admin),
    )
    assert answer.status_code == 409


def test_the_event_types_offered_are_the_ones_delivered() -> None:
    from typing import get_args

    from tidings.api.routes.webhooks import WebhookEventType
    from tidings.queue.webhook_outbox import PUBLIC_EVENT_TYPES

    assert set(get_args(WebhookEventType)) == set(PUBLIC_EVENT_TYPES)
