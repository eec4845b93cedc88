"""API keys: shown once, stored as a hash, roles enforced, scoped to their tenant."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import TenantKeys
from tidings.db.models import ApiKey
from tidings.runtime import Runtime
from tidings.services import tenants
from tidings.services.tenants import PrincipalCache


def test_admin_creates_lists_and_revokes_a_key(client: TestClient, acme: TenantKeys) -> None:
    created = client.post(
        "/v1/keys", json={"name": "ci", "role": "viewer"}, headers=acme.auth(acme.admin)
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["key"].startswith(f"td_{body['prefix']}_")
    assert (
        client.get("/v1/keys", headers=acme.auth(body["key"])).status_code == 403
    )  # viewer cannot manage keys

    listed = client.get("/v1/keys", headers=acme.auth(acme.admin)).json()
    assert "key" not in listed["items"][0]
    assert body["prefix"] in {k["prefix"] for k in listed["items"]}

    revoked = client.delete(f"/v1/keys/{body['id']}", headers=acme.auth(acme.admin))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert client.get("/healthz", headers=acme.auth(body["key"])).status_code == 200
    answer = client.get("/v1/keys", headers=acme.auth(body["key"]))
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthenticated"


def test_only_a_hash_of_the_key_is_stored(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    with runtime.sessions() as session:
        stored = [(k.key_hash, k.prefix) for k in session.scalars(select(ApiKey))]
    assert all(acme.admin not in h for h, _ in stored)
    assert all(len(p) == 12 for _, p in stored)


def test_sender_and_viewer_cannot_manage_keys(client: TestClient, acme: TenantKeys) -> None:
    for key in (acme.sender, acme.viewer):
        answer = client.post("/v1/keys", json={"name": "x"}, headers=acme.auth(key))
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "forbidden"


def test_another_tenants_key_is_not_found_and_unchanged(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    own = client.get("/v1/keys", headers=acme.auth(acme.admin)).json()["items"][0]
    answer = client.delete(f"/v1/keys/{own['id']}", headers=globex.auth(globex.admin))
    assert answer.status_code == 404
    assert (
        answer.json() == client.delete("/v1/keys/999999", headers=globex.auth(globex.admin)).json()
    )
    assert client.get("/v1/keys", headers=acme.auth(acme.admin)).status_code == 200


def test_missing_malformed_and_unknown_keys_are_401(client: TestClient, acme: TenantKeys) -> None:
    for header in (
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Bearer td_000000000000_wrong"},
        {"Authorization": acme.admin},
    ):
        answer = client.get("/v1/keys", headers=header)
        assert answer.status_code == 401, header
        assert answer.headers["www-authenticate"] == "Bearer"


def test_bad_key_input_names_the_field(client: TestClient, acme: TenantKeys) -> None:
    for body, field in (
        ({"name": ""}, "name"),
        ({"name": "x", "role": "god"}, "role"),
        ({"nam": "x"}, "name"),
    ):
        answer = client.post("/v1/keys", json=body, headers=acme.auth(acme.admin))
        assert answer.status_code == 422
        assert answer.json()["error"]["field"] == field, answer.json()
    too_big = client.delete(f"/v1/keys/{2**70}", headers=acme.auth(acme.admin))
    assert too_big.status_code == 422 and too_big.json()["error"]["field"] == "key_id"


def test_oversized_body_is_413(client: TestClient, acme: TenantKeys) -> None:
    answer = client.post(
        "/v1/keys",
        content=b"{" + b" " * 2_000_000 + b"}",
        headers={**acme.auth(acme.admin), "content-type": "application/json"},
    )
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "payload_too_large"


def test_a_key_revoked_elsewhere_is_refused_once_its_cache_time_is_over(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    """Another process (the CLI) revokes the key: this one stops accepting it within ``ttl``."""
    runtime.principals = PrincipalCache(ttl=0.3)
    assert client.get("/v1/keys", headers=acme.auth(acme.admin)).status_code == 200  # cached
    with runtime.sessions() as session, session.begin():
        key_id = session.scalars(select(ApiKey.id).where(ApiKey.role == "admin")).first()
        assert key_id is not None
        tenants.revoke_key(
            session=session, tenant_id=acme.tenant_id, key_id=key_id, now=datetime.now(UTC)
        )
    assert client.get("/v1/keys", headers=acme.auth(acme.admin)).status_code == 200
    time.sleep(0.35)
    assert client.get("/v1/keys", headers=acme.auth(acme.admin)).status_code == 401


def test_a_refused_key_is_never_cached(client: TestClient, runtime: Runtime) -> None:
    bogus = "td_000000000000_" + "0" * 64
    for _ in range(2):
        assert (
            client.get("/v1/keys", headers={"Authorization": f"Bearer {bogus}"}).status_code == 401
        )
    assert runtime.principals.get(bogus) is None
