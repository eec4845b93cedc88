"""The dashboard's Sending page over plain HTTP: sender domains with their DNS records and status,
added, verified (against a real DNS server on 127.0.0.1), rotated and removed; admins only; each
tenant sees its own."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.browser.dashboard_helpers import csrf_of, field_error, sign_in
from tests.conftest import TenantKeys, make_settings
from tests.dns_server import DnsTestServer, dns_server  # noqa: F401 - a fixture
from tidings.config import Settings


@pytest.fixture
def settings(tmp_path: Path, db_url: str, dns_server: DnsTestServer) -> Settings:  # noqa: F811
    return make_settings(tmp_path, db_url, dns_resolver=dns_server.address)


def dkim_row(page: str) -> tuple[str, list[str]]:
    """The DKIM record's name and strings as the page shows them."""
    match = re.search(
        r'<tr data-purpose="dkim">.*?<code>([^<]+)</code>.*?<code class="dns-value">([^<]+)</code>',
        page,
        re.DOTALL,
    )
    assert match, page
    return match.group(1), re.findall(r'"([^"]*)"', html.unescape(match.group(2)))


def test_an_admin_adds_and_verifies_a_domain(
    client: TestClient,
    acme: TenantKeys,
    dns_server: DnsTestServer,  # noqa: F811
) -> None:
    token = sign_in(client, acme.admin)
    empty = client.get("/sending")
    assert empty.status_code == 200 and "No sender domain yet" in empty.text
    assert 'id="transports"' in empty.text  # the place the transports' section goes
    added = client.post(
        "/sending/domains",
        data={"domain": "mail.example.com", "algorithm": "ed25519-sha256", "csrf_token": token},
    )
    assert added.status_code == 200 and "publish its DNS records" in added.text
    assert 'data-status="pending"' in added.text
    name, strings = dkim_row(added.text)
    assert name.endswith("._domainkey.mail.example.com")
    assert strings[0].startswith("v=DKIM1; k=ed25519; p=")
    assert "_dmarc.mail.example.com" in added.text
    domain_id = re.search(r'id="domain-(\d+)"', added.text).group(1)  # type: ignore[union-attr]

    failed = client.post(f"/sending/domains/{domain_id}/verify", data={"csrf_token": token})
    assert 'data-status="failed"' in failed.text
    assert f"no TXT record at {name}" in failed.text

    dns_server.publish(name, strings)
    verified = client.post(f"/sending/domains/{domain_id}/verify", data={"csrf_token": token})
    assert 'data-status="verified"' in verified.text

    rotated = client.post(f"/sending/domains/{domain_id}/rotate", data={"csrf_token": token})
    assert (
        'data-status="pending"' in rotated.text and 'data-purpose="dkim-previous"' in rotated.text
    )
    assert "with the previous key until the new record verifies" in rotated.text

    removed = client.post(f"/sending/domains/{domain_id}/delete", data={"csrf_token": token})
    assert "No sender domain yet" in removed.text


def test_a_bad_domain_is_shown_with_its_error(client: TestClient, acme: TenantKeys) -> None:
    token = sign_in(client, acme.admin)
    answer = client.post("/sending/domains", data={"domain": "*.example.com", "csrf_token": token})
    assert answer.status_code == 422
    assert "wildcard" in (field_error(answer.text, "domain") or "")


def test_a_viewer_only_looks_and_another_tenant_sees_nothing(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    client.post("/v1/domains", json={"domain": "mail.example.com"}, headers=acme.auth(acme.admin))
    token = sign_in(client, acme.viewer)
    page = client.get("/sending").text
    assert "mail.example.com" in page and "needs an admin key" in page
    assert "Verify now" not in page
    refused = client.post(
        "/sending/domains", data={"domain": "x.example.com", "csrf_token": csrf_of(page)}
    )
    assert refused.status_code == 403
    assert token
    client.cookies.clear()
    sign_in(client, globex.admin)
    theirs = client.get("/sending").text
    assert "mail.example.com" not in theirs and "No sender domain yet" in theirs
    domain_id = client.get("/v1/domains", headers=acme.auth(acme.admin)).json()["items"][0]["id"]
    gone = client.post(f"/sending/domains/{domain_id}/delete", data={"csrf_token": csrf_of(theirs)})
    assert gone.status_code == 404
    assert len(client.get("/v1/domains", headers=acme.auth(acme.admin)).json()["items"]) == 1
