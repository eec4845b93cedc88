"""``/v1/transports``: a tenant's own sending accounts through the API, on both databases: masked
reads, sealed storage, URL checks (422 naming ``url``), tenant isolation, the test route against a
live and a dead server, and the ``bounce_domain`` setting."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.conftest import TenantKeys, create_tenant, make_settings
from tests.smtp_server import SmtpTestServer
from tidings.app import create_app
from tidings.config import Settings
from tidings.runtime import Runtime, build_runtime
from tidings.transports.tenant_urls import tenant_outbox

PASSWORD = "s3cr3t-Pa55"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    # Tests' relays live on 127.0.0.1: the operator allows private hosts here.
    return make_settings(tmp_path, db_url, transport_allow_private=True)


@pytest.fixture
def relay() -> Iterator[SmtpTestServer]:
    with SmtpTestServer(auth=("school", PASSWORD)) as server:
        yield server


def relay_url(server: SmtpTestServer) -> str:
    return f"smtp://school:{PASSWORD}@127.0.0.1:{server.port}?tls=none"


def add(client: TestClient, tenant: TenantKeys, **body: object) -> dict[str, object]:
    answer = client.post("/v1/transports", json=body, headers=tenant.auth(tenant.admin))
    assert answer.status_code == 201, answer.text
    created: dict[str, object] = answer.json()
    return created


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_transport_reads_back_masked_and_is_sealed_at_rest(
    client: TestClient, runtime: Runtime, acme: TenantKeys, relay: SmtpTestServer
) -> None:
    created = add(client, acme, name="school relay", url=relay_url(relay), priority=1, weight=2)
    masked = f"smtp://school:****@127.0.0.1:{relay.port}?tls=none"
    assert created["url"] == masked
    assert (created["name"], created["priority"], created["weight"]) == ("school relay", 1, 2)
    assert created["healthy"] is True
    listed = client.get("/v1/transports", headers=acme.auth(acme.viewer)).json()["items"]
    one = client.get(f"/v1/transports/{created['id']}", headers=acme.auth(acme.viewer)).json()
    assert [t["url"] for t in listed] == [masked]
    assert one["url"] == masked
    for answer in (created, listed, one):
        assert PASSWORD not in str(answer)
    with runtime.engine.connect() as connection:
        row = connection.execute(text("SELECT * FROM tenant_transports")).one()
    assert PASSWORD not in " ".join(str(v) for v in row)
    assert str(row.url_sealed).startswith("v1.")


BAD_URLS = [
    "ftp://relay.example.com",
    "memory://",
    "smtp://",
    "smtp://user@relay.example.com",  # a user without a password
    "smtp://127.0.0.1:25?tls=maybe",
    "smtp://127.0.0.1:25?tls=none&cafile=/etc/shadow",
    "smtp://127.0.0.1:25?tls=none&data_timeout=99999",
    "outbox:///etc",
    "outbox:///tmp/elsewhere",
    "resend://",
]


def test_a_url_that_cannot_work_or_is_not_allowed_is_a_422_naming_url(
    client: TestClient, acme: TenantKeys
) -> None:
    for url in BAD_URLS:
        answer = client.post(
            "/v1/transports", json={"name": "x", "url": url}, headers=acme.auth(acme.admin)
        )
        assert answer.status_code == 422, (url, answer.text)
        assert answer.json()["error"]["field"] == "url"
        if url.startswith(("ftp:", "memory:")):  # refused for its scheme, whatever follows
            assert "use one of smtp://" in answer.json()["error"]["message"]
    assert client.get("/v1/transports", headers=acme.auth(acme.admin)).json()["items"] == []


def test_an_outbox_inside_the_tenants_own_directory_is_allowed(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    home = tenant_outbox(runtime.settings.data_dir, acme.tenant_id)
    created = add(client, acme, name="files", url=f"outbox://{home}/mail")
    assert created["url"] == f"outbox://{home}/mail"
    other = client.post(
        "/v1/transports",
        json={"name": "theirs", "url": f"outbox://{home.parent}/999/mail"},
        headers=acme.auth(acme.admin),
    )
    assert other.status_code == 422


def test_private_hosts_are_refused_unless_the_operator_allows_them(
    tmp_path: Path, db_url: str
) -> None:
    runtime = build_runtime(make_settings(tmp_path, db_url), migrate=True)
    try:
        tenant = create_tenant(runtime, "acme")
        with TestClient(create_app(runtime)) as client:
            for url in (
                "smtp://u:p@127.0.0.1:25?tls=none",
                "smtp://u:p@localhost:587",
                "smtp://169.254.169.254:25",
                "smtps://[::1]",
                "resend://re_key@10.0.0.8",
                "resend+http://re_key@example.com",
            ):
                answer = client.post(
                    "/v1/transports",
                    json={"name": "x", "url": url},
                    headers=tenant.auth(tenant.admin),
                )
                assert answer.status_code == 422, (url, answer.text)
                assert answer.json()["error"]["field"] == "url"
                assert "u:p" not in answer.text
                if url.startswith("resend+http"):  # an API key in clear text: not for tenants
                    assert "use one of" in answer.json()["error"]["message"]
                    assert "resend+http" not in answer.json()["error"]["message"]
    finally:
        runtime.close()


def test_another_tenants_transport_is_a_404_everywhere(
    client: TestClient, acme: TenantKeys, globex: TenantKeys, relay: SmtpTestServer
) -> None:
    created = add(client, acme, name="relay", url=relay_url(relay))
    path = f"/v1/transports/{created['id']}"
    assert client.get(path, headers=globex.auth(globex.admin)).status_code == 404
    assert client.post(f"{path}/test", headers=globex.auth(globex.admin)).status_code == 404
    assert client.delete(path, headers=globex.auth(globex.admin)).status_code == 404
    assert client.get("/v1/transports", headers=globex.auth(globex.admin)).json()["items"] == []
    assert client.get(path, headers=acme.auth(acme.viewer)).status_code == 200
    assert client.delete(path, headers=acme.auth(acme.admin)).status_code == 204
    assert client.get(path, headers=acme.auth(acme.admin)).status_code == 404


def test_only_an_admin_adds_and_names_are_unique(
    client: TestClient, acme: TenantKeys, relay: SmtpTestServer
) -> None:
    body = {"name": "relay", "url": relay_url(relay)}
    assert (
        client.post("/v1/transports", json=body, headers=acme.auth(acme.sender)).status_code == 403
    )
    add(client, acme, **body)
    again = client.post("/v1/transports", json=body, headers=acme.auth(acme.admin))
    assert again.status_code == 409
    assert again.json()["error"]["field"] == "name"


def test_the_test_route_reports_a_live_servers_answer_and_a_dead_ones_error(
    client: TestClient, acme: TenantKeys, relay: SmtpTestServer
) -> None:
    live = add(client, acme, name="live", url=relay_url(relay))
    dead = add(client, acme, name="dead", url=f"smtp://127.0.0.1:{dead_port()}?tls=none")
    answer = client.post(f"/v1/transports/{live['id']}/test", headers=acme.auth(acme.admin))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ok"] is True
    assert body["answer"].startswith("220")
    assert "EHLO: 250" in body["answer"]
    assert "AUTH" in body["checked"]
    assert body["latency_ms"] > 0
    assert relay.messages == []  # nothing was sent
    failed = client.post(f"/v1/transports/{dead['id']}/test", headers=acme.auth(acme.admin))
    assert failed.status_code == 200
    assert failed.json()["ok"] is False
    assert "cannot connect" in failed.json()["answer"]
    assert failed.json()["transport"]["failures"] == 1
    assert failed.json()["transport"]["last_error"]


def test_a_wrong_password_fails_the_test_without_echoing_it(
    client: TestClient, acme: TenantKeys, relay: SmtpTestServer
) -> None:
    url = f"smtp://school:wrong-one@127.0.0.1:{relay.port}?tls=none"
    created = add(client, acme, name="typo", url=url)
    answer = client.post(f"/v1/transports/{created['id']}/test", headers=acme.auth(acme.admin))
    assert answer.json()["ok"] is False
    assert "535" in answer.json()["answer"]
    assert "wrong-one" not in answer.text


def test_repeated_failed_tests_mark_it_unhealthy_and_a_good_one_heals_it(
    client: TestClient, acme: TenantKeys
) -> None:
    port = dead_port()
    created = add(client, acme, name="flaky", url=f"smtp://127.0.0.1:{port}?tls=none")
    path = f"/v1/transports/{created['id']}"
    for _ in range(3):
        client.post(f"{path}/test", headers=acme.auth(acme.admin))
    shown = client.get(path, headers=acme.auth(acme.viewer)).json()
    assert shown["healthy"] is False
    assert shown["next_probe_at"] is not None
    assert shown["last_error"]
    server = Controller(Sink(), hostname="127.0.0.1", port=port)
    server.start()
    try:
        healed = client.post(f"{path}/test", headers=acme.auth(acme.admin)).json()
    finally:
        server.stop()
    assert healed["ok"] is True
    assert healed["transport"]["healthy"] is True
    assert healed["transport"]["failures"] == 0
    assert healed["transport"]["last_error"] is None


def test_the_bounce_domain_is_a_setting(client: TestClient, acme: TenantKeys) -> None:
    auth = acme.auth(acme.admin)
    assert client.get("/v1/settings", headers=auth).json()["bounce_domain"] is None
    put = client.put("/v1/settings", json={"bounce_domain": "Bounces.Acme.Test."}, headers=auth)
    assert put.status_code == 200, put.text
    assert put.json()["bounce_domain"] == "bounces.acme.test"
    bad = client.put("/v1/settings", json={"bounce_domain": "not a domain"}, headers=auth)
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "bounce_domain"
    cleared = client.put("/v1/settings", json={"bounce_domain": None}, headers=auth)
    assert cleared.json()["bounce_domain"] is None
