"""The outbox transport: each message lands whole, once, as an .eml file in a real maildir."""

from __future__ import annotations

import email
import os
import stat
import threading
from dataclasses import replace
from email import policy
from pathlib import Path

import pytest

from tidings.domain.message import OutgoingMessage, Permanent, Sent, Transient
from tidings.errors import ConfigurationError
from tidings.transports.factory import open_transport
from tidings.transports.outbox import OutboxTransport


def message(i: int, **changes: object) -> OutgoingMessage:
    base = OutgoingMessage(
        message_id=i,
        tenant_id=1,
        from_address="Acme <news@acme.test>",
        to_address=f"user{i}@example.com",
        subject=f"Hello {i} — café",
        html=f"<p>Hello {i}</p>",
        text=f"Hello {i}\n",
        message_id_header=f"<{i}@acme.test>",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


async def test_messages_become_eml_files_in_new_named_by_their_provider_id(tmp_path: Path) -> None:
    transport = open_transport(f"outbox://{tmp_path / 'outbox'}")
    outcomes = await transport.send([message(i) for i in range(25)])
    await transport.close()

    maildir = tmp_path / "outbox"
    assert sorted(p.name for p in maildir.iterdir()) == ["cur", "new", "tmp"]
    assert list((maildir / "tmp").iterdir()) == []  # nothing half-written left behind
    files = {p.name: p for p in (maildir / "new").iterdir()}
    assert len(files) == 25
    assert all(isinstance(o, Sent) for o in outcomes)
    names = [o.provider_id for o in outcomes if isinstance(o, Sent)]
    assert set(names) == set(files)  # unique, and each outcome names its file
    assert all(name and name.endswith(".eml") and ":" not in name for name in names)

    for i, name in enumerate(names):
        path = files[name]  # type: ignore[index]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # personal data
        parsed = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        assert parsed["Message-ID"] == f"<{i}@acme.test>"
        assert parsed["Subject"] == f"Hello {i} — café"


async def test_an_unserialisable_message_fails_and_the_others_are_written(tmp_path: Path) -> None:
    transport = OutboxTransport(tmp_path)
    outcomes = await transport.send([message(1), message(2, subject="a\r\nBcc: x@y.z"), message(3)])
    assert [type(o) for o in outcomes] == [Sent, Permanent, Sent]
    assert len(list((tmp_path / "new").iterdir())) == 2


async def test_a_failing_disk_is_transient_and_leaves_no_partial_file(tmp_path: Path) -> None:
    transport = OutboxTransport(tmp_path)
    (tmp_path / "new").rmdir()
    (tmp_path / "new").write_text("not a directory")  # every rename into new/ now fails
    outcomes = await transport.send([message(1), message(2)])
    assert all(isinstance(o, Transient) and "outbox write failed" in o.reason for o in outcomes)
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_writes_run_off_the_event_loop_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = OutboxTransport(tmp_path, concurrency=4)
    writers: set[int] = set()
    real_write = transport._write

    def spy(name: str, raw: bytes) -> None:
        writers.add(threading.get_ident())
        real_write(name, raw)

    monkeypatch.setattr(transport, "_write", spy)
    outcomes = await transport.send([message(i) for i in range(12)])
    assert all(isinstance(o, Sent) for o in outcomes)
    assert writers and threading.get_ident() not in writers


async def test_order_of_outcomes_matches_the_batch_across_chunks(tmp_path: Path) -> None:
    transport = OutboxTransport(tmp_path, concurrency=3)
    batch = [message(i, subject="bad\n" if i % 4 == 0 else f"ok {i}") for i in range(10)]
    outcomes = await transport.send(batch)
    assert [isinstance(o, Permanent) for o in outcomes] == [i % 4 == 0 for i in range(10)]


def test_an_unusable_outbox_path_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigurationError) as caught:
        open_transport(f"outbox://{blocker}/maildir")
    assert caught.value.field == "TIDINGS_TRANSPORT_URL"


def test_two_transports_on_one_maildir_never_pick_the_same_name(tmp_path: Path) -> None:
    first, second = OutboxTransport(tmp_path), OutboxTransport(tmp_path)
    names = {first._unique_name() for _ in range(200)} | {second._unique_name() for _ in range(200)}
    assert len(names) == 400
    assert str(os.getpid()) in next(iter(names))
