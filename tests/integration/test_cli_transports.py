"""``tidings transports add|list|test|delete`` against a real database (both dialects) and real
SMTP servers; a password never appears in the output."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import TenantKeys, make_settings
from tests.integration.test_cli import Invoke, _env, _runner
from tests.smtp_server import SmtpTestServer
from tidings.config import Settings
from tidings.runtime import Runtime

PASSWORD = "pa55-w0rd-xyz"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url, transport_allow_private=True)


@pytest.fixture
def cli(settings: Settings, runtime: Runtime) -> Invoke:
    return _runner({**_env(settings), "TIDINGS_TRANSPORT_ALLOW_PRIVATE": "true"})


def test_add_list_test_and_delete(cli: Invoke, acme: TenantKeys) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    with SmtpTestServer(auth=("school", PASSWORD)) as server:
        url = f"smtp://school:{PASSWORD}@127.0.0.1:{server.port}?tls=none"
        added = cli("transports", "add", "school relay", url, "--tenant", "acme")
        assert added.exit_code == 0, added.output
        assert "school:****@" in added.output
        first = added.output.split()[2].rstrip(":")
        backup = cli("transports", "add", "backup", f"smtp://127.0.0.1:{dead}?tls=none",
                     "--tenant", "acme", "--priority", "2")  # fmt: skip
        assert backup.exit_code == 0, backup.output
        second = backup.output.split()[2].rstrip(":")
        listed = cli("transports", "list", "--tenant", "acme")
        assert listed.exit_code == 0
        assert "school relay" in listed.output and "backup" in listed.output
        assert listed.output.index("school relay") < listed.output.index("backup")
        ok = cli("transports", "test", first, "--tenant", "acme")
        assert ok.exit_code == 0, ok.output
        assert "ok" in ok.output and "220" in ok.output
        failed = cli("transports", "test", second, "--tenant", "acme")
        assert failed.exit_code == 1
        assert "cannot connect" in failed.output
        for result in (added, backup, listed, ok, failed):
            assert PASSWORD not in result.output
    bad = cli("transports", "add", "x", "memory://", "--tenant", "acme")
    assert bad.exit_code == 1 and "url is not valid" in bad.output
    other = cli("transports", "delete", first, "--tenant", "nobody")
    assert other.exit_code == 1
    assert cli("transports", "delete", first, "--tenant", "acme").exit_code == 0
    assert cli("transports", "delete", first, "--tenant", "acme").exit_code == 1
