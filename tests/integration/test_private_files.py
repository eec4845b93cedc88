"""What lives in the data directory (the SQLite database with its -wal and -shm, the generated
secret, the outbox) holds contact data and secrets: it is created for its owner alone whatever
the umask, and start-up warns about existing files that others can read."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tidings.config import Settings
from tidings.domain.message import OutgoingMessage, Sent
from tidings.runtime import Runtime, build_runtime
from tidings.transports.factory import open_transport


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o022, 0o277], ids=lambda mask: f"umask-{mask:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The widest umask, the usual one, and one that takes the owner's write bit away."""
    previous = os.umask(request.param)
    yield int(request.param)
    os.umask(previous)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Runtime]:
    """A runtime on defaults alone: database, secret and outbox all in a new data directory."""
    runtime = build_runtime(Settings(data_dir=tmp_path / "new" / "data"))
    yield runtime
    runtime.close()


def _outgoing() -> OutgoingMessage:
    return OutgoingMessage(
        message_id=1,
        tenant_id=1,
        from_address="Tidings <noreply@tidings.test>",
        to_address="ada@example.com",
        subject="Hello",
        text="Hello Ada",
        html=None,
        message_id_header="<1.0123456789abcdef0123@tidings.test>",
    )


@pytest.mark.usefixtures("umask")
def test_a_fresh_data_directory_is_created_for_its_owner_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tidings.files")
    data = tmp_path / "new" / "data"
    runtime = build_runtime(Settings(data_dir=data))
    try:
        with runtime.engine.begin() as connection:  # a write: the -wal and -shm are in use
            connection.execute(text("CREATE TABLE probe (x INTEGER)"))
            connection.execute(text("INSERT INTO probe VALUES (1)"))
        outbox = open_transport(runtime.settings.resolved_transport_url())
        (outcome,) = asyncio.run(outbox.send([_outgoing()]))
        assert isinstance(outcome, Sent)
        modes = {
            str(path.relative_to(tmp_path)): f"{_mode(path):04o}"
            for path in [data.parent, data, *sorted(data.rglob("*"))]
        }
    finally:
        runtime.close()
    sent = f"new/data/outbox/new/{outcome.provider_id}"
    assert modes == {
        "new": "0700",
        "new/data": "0700",
        "new/data/tidings.db": "0600",
        "new/data/tidings.db-wal": "0600",
        "new/data/tidings.db-shm": "0600",
        "new/data/secret_key": "0600",
        "new/data/outbox": "0700",
        "new/data/outbox/tmp": "0700",
        "new/data/outbox/new": "0700",
        "new/data/outbox/cur": "0700",
        sent: "0600",
    }
    assert caplog.records == []


def test_start_up_warns_about_a_data_directory_and_database_others_can_read(
    fresh: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    data = fresh.settings.data_dir
    database = data / "tidings.db"
    os.chmod(data, 0o755)
    os.chmod(database, 0o644)
    caplog.set_level(logging.WARNING, logger="tidings.files")
    build_runtime(fresh.settings).close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{data} has mode 0755: it holds contact data or secrets and should be 0700" in (
        " ".join(warnings)
    )
    assert any(
        w.startswith(f"{database} has mode 0644") and "should be 0600" in w for w in warnings
    )
    assert _mode(data) == 0o755 and _mode(database) == 0o644  # said, not changed behind one's back


def test_start_up_warns_about_a_readable_secret_and_outbox(
    fresh: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    data = fresh.settings.data_dir
    open_transport(fresh.settings.resolved_transport_url())
    os.chmod(data / "secret_key", 0o640)
    os.chmod(data / "outbox", 0o750)
    caplog.set_level(logging.WARNING, logger="tidings.files")
    build_runtime(fresh.settings).close()
    warned = sorted(r.getMessage().split(" has mode ")[0] for r in caplog.records)
    assert warned == sorted([str(data / "secret_key"), str(data / "outbox")])


def test_start_up_says_nothing_when_everything_is_private(
    fresh: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tidings.files")
    build_runtime(fresh.settings).close()
    assert caplog.records == []
