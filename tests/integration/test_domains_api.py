"""``/v1/domains``: sender domains, their DKIM keys (sealed at rest), the records to publish, and
verification against a real DNS server on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.conftest import TEST_SECRET, TenantKeys, make_settings
from tests.dns_server import DnsTestServer, dns_server  # noqa: F401 - a fixture
from tidings import sealing
from tidings.config import Settings
from tidings.runtime import Runtime
from tidings.transports import dkim_sign


@pytest.fixture
def settings(tmp_path: Path, db_url: str, dns_server: DnsTestServer) -> Settings:  # noqa: F811
    return make_settings(tmp_path, db_url, dns_resolver=dns_server.address)


def add(
    client: TestClient, tenant: TenantKeys, domain: str = "mail.example.com", **body: Any
) -> Any:
    answer = client.post(
        "/v1/domains", json={"domain": domain, **body}, headers=tenant.auth(tenant.admin)
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


def dkim_record(domain: dict[str, Any]) -> dict[str, Any]:
    (record,) = [r for r in domain["dns_records"] if r["purpose"] == "dkim"]
    return record


def publish(dns: DnsTestServer, record: dict[str, Any]) -> None:
    dns.publish(record["name"], record["strings"])


def verify(client: TestClient, tenant: TenantKeys, domain_id: int) -> Any:
    answer = client.post(f"/v1/domains/{domain_id}/verify", headers=tenant.auth(tenant.admin))
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_domain_answers_with_the_records_to_publish(client: TestClient, acme: TenantKeys) -> None:
    created = add(client, acme, "Mail.Example.COM.")
    assert created["domain"] == "mail.example.com"
    assert created["status"] == "pending" and created["reason"] is None
    assert created["algorithm"] == "rsa-sha256" and created["signing"] is False
    assert created["selector"].startswith("td") and created["verified_at"] is None
    record = dkim_record(created)
    assert record["type"] == "TXT"
    assert record["name"] == f"{created['selector']}._domainkey.mail.example.com"
    assert record["value"].startswith("v=DKIM1; k=rsa; p=MIIB")
    # A 2048-bit key does not fit one TXT string: <= 255 octets each, joined they are the value.
    assert len(record["strings"]) > 1 and all(len(s.encode()) <= 255 for s in record["strings"])
    assert "".join(record["strings"]) == record["value"]
    purposes = {r["purpose"]: r for r in created["dns_records"]}
    assert purposes["spf"]["name"] == "mail.example.com"
    assert purposes["spf"]["value"].startswith("v=spf1 ")
    assert purposes["dmarc"]["name"] == "_dmarc.mail.example.com"
    assert purposes["dmarc"]["value"].startswith("v=DMARC1; p=none")
    viewer = acme.auth(acme.viewer)
    assert client.get(f"/v1/domains/{created['id']}", headers=viewer).json() == created
    listed = client.get("/v1/domains", headers=viewer).json()
    assert [d["id"] for d in listed["items"]] == [created["id"]]


def test_ed25519_keys_fit_one_string(client: TestClient, acme: TenantKeys) -> None:
    created = add(client, acme, algorithm="ed25519-sha256")
    record = dkim_record(created)
    assert created["algorithm"] == "ed25519-sha256"
    assert record["value"].startswith("v=DKIM1; k=ed25519; p=") and len(record["strings"]) == 1


def test_the_private_key_is_sealed_in_the_database(
    client: TestClient, acme: TenantKeys, runtime: Runtime
) -> None:
    created = add(client, acme)
    with runtime.engine.connect() as connection:
        stored = connection.execute(
            text("SELECT private_key, public_key FROM sender_domains WHERE id = :id"),
            {"id": created["id"]},
        ).one()
    assert stored.private_key.startswith("v1.") and "PRIVATE KEY" not in stored.private_key
    pem = sealing.unseal(
        TEST_SECRET,
        stored.private_key,
        purpose=f"dkim:tenant={acme.tenant_id}:domain=mail.example.com",
    )
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert dkim_sign.public_key_value(dkim_sign.load_private_pem(pem)) == stored.public_key
    assert f"p={stored.public_key}" in dkim_record(created)["value"]
    with pytest.raises(Exception, match="cannot be opened"):  # bound to its tenant and domain
        sealing.unseal(
            TEST_SECRET, stored.private_key, purpose="dkim:tenant=999:domain=mail.example.com"
        )


@pytest.mark.parametrize(
    "domain",
    [
        "*.example.com",
        "example",
        "mail..example.com",
        "-mail.example.com",
        "mail-.example.com",
        "a" * 64 + ".example.com",
        ".".join(["abcdefghi"] * 26) + ".com",  # 263 characters
        "192.168.0.1",
        "ann@example.com",
        "mail.example.com..",
        "mail example.com",
        "mail_x.example.com",
    ],
)
def test_a_bad_domain_is_refused_naming_the_field(
    client: TestClient, acme: TenantKeys, domain: str
) -> None:
    answer = client.post("/v1/domains", json={"domain": domain}, headers=acme.auth(acme.admin))
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == "domain"


def test_an_international_domain_is_stored_as_idna(client: TestClient, acme: TenantKeys) -> None:
    assert add(client, acme, "post.bücher.example")["domain"] == "post.xn--bcher-kva.example"


def test_an_unknown_algorithm_is_refused(client: TestClient, acme: TenantKeys) -> None:
    answer = client.post(
        "/v1/domains",
        json={"domain": "mail.example.com", "algorithm": "rsa-sha1"},
        headers=acme.auth(acme.admin),
    )
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "algorithm"


def test_a_domain_twice_is_a_conflict(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    add(client, acme)
    answer = client.post(
        "/v1/domains", json={"domain": "MAIL.example.com"}, headers=acme.auth(acme.admin)
    )
    assert answer.status_code == 409 and answer.json()["error"]["field"] == "domain"
    add(client, globex)  # another tenant may claim it too: each proves it with its own record


def test_only_admins_add_verify_rotate_or_delete(client: TestClient, acme: TenantKeys) -> None:
    created = add(client, acme)
    for key in (acme.sender, acme.viewer):
        headers = acme.auth(key)
        assert (
            client.post(
                "/v1/domains", json={"domain": "x.example.com"}, headers=headers
            ).status_code
            == 403
        )
        for action in ("verify", "rotate"):
            assert (
                client.post(f"/v1/domains/{created['id']}/{action}", headers=headers).status_code
                == 403
            )
        assert client.delete(f"/v1/domains/{created['id']}", headers=headers).status_code == 403
    assert client.get("/v1/domains").status_code == 401


def test_verification_finds_the_published_record(
    client: TestClient,
    acme: TenantKeys,
    dns_server: DnsTestServer,  # noqa: F811
) -> None:
    created = add(client, acme)
    publish(dns_server, dkim_record(created))
    dns_server.publish("mail.example.com", "v=spf1 mx ~all")
    verified = verify(client, acme, created["id"])
    assert verified["status"] == "verified" and verified["reason"] is None
    assert verified["signing"] is True and verified["verified_at"] is not None
    assert "SPF record found: v=spf1 mx ~all" in verified["advice"]
    assert any(a.startswith("no DMARC policy") for a in verified["advice"])
    assert dkim_record(created)["name"] in dns_server.queries
    shown = client.get(f"/v1/domains/{created['id']}", headers=acme.auth(acme.viewer)).json()
    assert shown["status"] == "verified"


def test_a_missing_record_fails_with_the_reason(
    client: TestClient,
    acme: TenantKeys,
    dns_server: DnsTestServer,  # noqa: F811
) -> None:
    created = add(client, acme)
    failed = verify(client, acme, created["id"])
    name = dkim_record(created)["name"]
    assert failed["status"] == "failed" and failed["signing"] is False
    assert failed["reason"] == f"no TXT record at {name}"
    assert (
        client.get(f"/v1/domains/{created['id']}", headers=acme.auth(acme.viewer)).json()["reason"]
        == f"no TXT record at {name}"
    )


def test_a_record_with_another_key_fails(
    client: TestClient,
    acme: TenantKeys,
    dns_server: DnsTestServer,  # noqa: F811
) -> None:
    created = add(client, acme)
    other = dkim_sign.public_key_value(dkim_sign.generate_key(dkim_sign.RSA))
    value = dkim_sign.txt_record_value(dkim_sign.RSA, other)
    dns_server.publish(dkim_record(created)["name"], dkim_sign.txt_strings(value))
    failed = verify(client, acme, created["id"])
    assert failed["status"] == "failed"
    assert "does not match" in failed["reason"]


def test_a_record_of_the_wrong_key_type_fails(
    client: TestClient,
    acme: TenantKeys,
    dns_server: DnsTestServer,  # noqa: F811
) -> None:
    created = add(client, acme)
    record = dkim_record(created)
    wrong = record["value"].replace("k=rsa", "k=ed25519")
    dns_server.publish(record["name"], dkim_sign.txt_strings(wrong))
    failed = verify(client, acme, created["id"])
    assert failed["status"] == "failed" and "k=ed25519" in failed["reason"]


def test_a_verified_domain_whose_record_disappears_fails_again(
    client: TestClient,
    acme: TenantKeys,
    dns_server: DnsTestServer,  # noqa: F811
) -> None:
    created = add(client, acme, algorithm="ed25519-sha256")
    publish(dns_server, dkim_record(created))
    assert verify(client, acme, created["id"])["status"] == "verified"
    dns_server.remove(dkim_record(created)["name"])
    again = verify(client, acme, created["id"])
    assert again["status"] == "failed" and again["signing"] is False


def test_rotation_keeps_signing_with_the_verified_key_until_the_new_one_verifies(
    client: TestClient,
    acme: TenantKeys,
    dns_server: DnsTestServer,  # noqa: F811
) -> None:
    created = add(client, acme)
    publish(dns_server, dkim_record(created))
    verify(client, acme, created["id"])
    admin = acme.auth(acme.admin)
    rotated = client.post(
        f"/v1/domains/{created['id']}/rotate", json={"algorithm": "ed25519-sha256"}, headers=admin
    ).json()
    assert rotated["selector"] != created["selector"] and rotated["status"] == "pending"
    assert rotated["algorithm"] == "ed25519-sha256"
    assert rotated["signing"] is True  # with the previous, verified key meanwhile
    purposes = {r["purpose"]: r for r in rotated["dns_records"]}
    assert purposes["dkim-previous"]["value"] == dkim_record(created)["value"]
    assert purposes["dkim"]["value"].startswith("v=DKIM1; k=ed25519;")
    publish(dns_server, purposes["dkim"])
    assert verify(client, acme, created["id"])["status"] == "verified"
    # Rotating twice before the new record is published never drops the verified key.
    twice = client.post(f"/v1/domains/{created['id']}/rotate", headers=admin).json()
    thrice = client.post(f"/v1/domains/{created['id']}/rotate", headers=admin).json()
    assert thrice["signing"] is True
    previous = {r["purpose"]: r for r in thrice["dns_records"]}["dkim-previous"]
    assert previous["value"] == purposes["dkim"]["value"]
    assert twice["selector"] != thrice["selector"]


def test_a_domain_is_deleted(client: TestClient, acme: TenantKeys) -> None:
    created = add(client, acme)
    admin = acme.auth(acme.admin)
    assert client.delete(f"/v1/domains/{created['id']}", headers=admin).status_code == 204
    assert client.get(f"/v1/domains/{created['id']}", headers=admin).status_code == 404
    assert client.delete(f"/v1/domains/{created['id']}", headers=admin).status_code == 404


def test_another_tenants_domain_is_not_found(
    client: TestClient,
    acme: TenantKeys,
    globex: TenantKeys,
    dns_server: DnsTestServer,  # noqa: F811
) -> None:
    created = add(client, acme)
    publish(dns_server, dkim_record(created))
    theirs = globex.auth(globex.admin)
    missing = client.get("/v1/domains/999999", headers=theirs).json()
    for method, path in (
        ("GET", ""),
        ("POST", "/verify"),
        ("POST", "/rotate"),
        ("DELETE", ""),
    ):
        answer = client.request(method, f"/v1/domains/{created['id']}{path}", headers=theirs)
        assert answer.status_code == 404 and answer.json() == missing, (method, path)
    assert client.get("/v1/domains", headers=theirs).json()["items"] == []
    shown = client.get(f"/v1/domains/{created['id']}", headers=acme.auth(acme.viewer)).json()
    assert shown == created  # untouched: still pending, same key


def test_a_resolver_that_does_not_answer_fails_with_a_timeout_reason(
    tmp_path: Path, db_url: str, acme: TenantKeys, client: TestClient
) -> None:
    created = add(client, acme)
    # Swap the resolver for a port nobody answers on (UDP: the query just goes unanswered).
    client.app.state.runtime.settings.dns_resolver = "127.0.0.1:9"  # type: ignore[attr-defined]
    failed = verify(client, acme, created["id"])
    assert failed["status"] == "failed" and "DNS lookup" in failed["reason"]
