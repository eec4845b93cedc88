"""The Sending page's transports: the tenant's own sending accounts in the order they are tried,
with their health, and a test an admin runs from the page (as ``POST /v1/transports/{id}/test``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.browser.dashboard_helpers import sign_in
from tests.conftest import TenantKeys, make_settings
from tests.smtp_server import SmtpTestServer
from tidings.config import Settings


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    # The relay of these tests is on 127.0.0.1, which tenants may not name unless allowed.
    return make_settings(tmp_path, db_url, transport_allow_private=True)


def _test(client: TestClient, transport_id: int, token: str) -> str:
    """The page the test's answer sends the browser back to."""
    answer = client.post(
        f"/sending/transports/{transport_id}/test",
        data={"csrf_token": token},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return client.get(answer.headers["location"]).text


def _row(page: str, transport_id: int) -> str:
    found = re.search(rf'<tr data-transport="{transport_id}">.*?</tr>', page, re.S)
    assert found, page
    return found.group(0)


def test_the_transports_show_with_their_health_and_an_admin_tests_them(
    client: TestClient, acme: TenantKeys
) -> None:
    token = sign_in(client, acme.admin)
    assert "sends through the server" in client.get("/sending").text
    with SmtpTestServer() as relay:
        added = client.post(
            "/v1/transports",
            json={"name": "school relay", "url": f"smtp://127.0.0.1:{relay.port}?tls=none"},
            headers=acme.auth(acme.admin),
        )
        assert added.status_code == 201, added.text
        transport_id = added.json()["id"]
        row = _row(client.get("/sending").text, transport_id)
        assert "school relay" in row and "healthy" in row and "unhealthy" not in row
        tested = client.post(f"/sending/transports/{transport_id}/test", data={"csrf_token": token})
        assert "The transport answered: it can send." in tested.text
    # The relay is gone: the test fails, and its answer is the row's last error.
    failed = _test(client, transport_id, token)
    assert "did not answer as it should" in failed
    row = _row(failed, transport_id)
    assert "—" not in row.split('class="reason">')[1].split("</td>")[0]


def test_another_tenants_transport_cannot_be_tested_from_the_page(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    added = client.post(
        "/v1/transports",
        json={"name": "theirs", "url": "smtp://127.0.0.1:9?tls=none"},
        headers=globex.auth(globex.admin),
    )
    assert added.status_code == 201, added.text
    token = sign_in(client, acme.admin)
    theirs = client.post(
        f"/sending/transports/{added.json()['id']}/test", data={"csrf_token": token}
    )
    assert theirs.status_code == 404
    assert "theirs" not in client.get("/sending").text
