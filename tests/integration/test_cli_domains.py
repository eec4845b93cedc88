"""``tidings domains add|verify|list|records|rotate|delete`` against a real database (both
dialects) and a real DNS server on 127.0.0.1."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import TenantKeys, make_settings
from tests.dns_server import DnsTestServer, dns_server  # noqa: F401 - a fixture
from tests.integration.test_cli import Invoke, _env, _runner
from tidings.config import Settings
from tidings.runtime import Runtime


@pytest.fixture
def settings(tmp_path: Path, db_url: str, dns_server: DnsTestServer) -> Settings:  # noqa: F811
    return make_settings(tmp_path, db_url, dns_resolver=dns_server.address)


@pytest.fixture
def cli(settings: Settings, runtime: Runtime) -> Invoke:
    return _runner({**_env(settings), "TIDINGS_DNS_RESOLVER": settings.dns_resolver})


def published_dkim(output: str) -> tuple[str, list[str]]:
    """The DKIM record's name and strings, as ``add`` printed them."""
    match = re.search(r"^dkim \(publish\) TXT (\S+)\n  (.+)$", output, re.MULTILINE)
    assert match, output
    return match.group(1), re.findall(r'"([^"]*)"', match.group(2))


def test_add_publish_verify_list_rotate_delete(
    cli: Invoke,
    acme: TenantKeys,
    dns_server: DnsTestServer,  # noqa: F811
) -> None:
    added = cli("domains", "add", "mail.example.com", "--tenant", "acme")
    assert added.exit_code == 0, added.output
    assert "mail.example.com: pending" in added.output
    name, strings = published_dkim(added.output)
    assert name.endswith("._domainkey.mail.example.com")
    assert "".join(strings).startswith("v=DKIM1; k=rsa; p=")
    assert "_dmarc.mail.example.com" in added.output

    failed = cli("domains", "verify", "mail.example.com", "--tenant", "acme")
    assert failed.exit_code == 1
    assert f"no TXT record at {name}" in failed.output

    dns_server.publish(name, strings)
    verified = cli("domains", "verify", "mail.example.com", "--tenant", "acme")
    assert verified.exit_code == 0, verified.output
    assert "verified" in verified.output and "no SPF record" in verified.output

    listed = cli("domains", "list", "--tenant", "acme")
    assert re.search(r"mail\.example\.com\W+verified\W+yes\W+rsa-sha256", listed.output)

    rotated = cli(
        "domains", "rotate", "mail.example.com", "--tenant", "acme", "--algorithm", "ed25519-sha256"
    )
    assert rotated.exit_code == 0, rotated.output
    assert "pending" in rotated.output and "mail is DKIM-signed" in rotated.output
    assert "dkim-previous (publish)" in rotated.output
    new_name, new_strings = published_dkim(rotated.output)
    assert new_name != name and new_strings[0].startswith("v=DKIM1; k=ed25519;")
    records = cli("domains", "records", "mail.example.com", "--tenant", "acme")
    assert published_dkim(records.output) == (new_name, new_strings)

    deleted = cli("domains", "delete", "mail.example.com", "--tenant", "acme")
    assert deleted.exit_code == 0 and "deleted mail.example.com" in deleted.output
    assert "mail.example.com" not in cli("domains", "list", "--tenant", "acme").output


def test_mistakes_end_with_a_message(cli: Invoke, acme: TenantKeys) -> None:
    bad = cli("domains", "add", "*.example.com", "--tenant", "acme")
    assert bad.exit_code == 1 and "domain must be a domain name" in bad.output
    unknown = cli("domains", "verify", "nowhere.example.com", "--tenant", "acme")
    assert unknown.exit_code == 1 and "no sender domain nowhere.example.com" in unknown.output
    algorithm = cli("domains", "add", "mail.example.com", "--tenant", "acme", "--algorithm", "dsa")
    assert algorithm.exit_code == 2
    assert cli("domains", "add", "mail.example.com", "--tenant", "acme").exit_code == 0
    twice = cli("domains", "add", "mail.example.com", "--tenant", "acme")
    assert twice.exit_code == 1 and "already a sender domain" in twice.output
    other = cli("domains", "list", "--tenant", "globex")
    assert other.exit_code == 1
