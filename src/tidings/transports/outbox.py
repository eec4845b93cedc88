"""The zero-set-up transport: each message becomes an ``.eml`` file in a maildir.

Delivery follows the maildir protocol so a reader never sees half a message: write into ``tmp/``,
fsync, rename into ``new/``, then fsync ``new/`` so the rename itself survives a power cut. Any
maildir client (mutt -f, Thunderbird's maildir mode, a script) can read the result.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import secrets
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from tidings.domain.message import Outcome, OutgoingMessage, Permanent, Sent, Transient
from tidings.errors import ConfigurationError
from tidings.private_files import create_private_file, make_private_dir
from tidings.transports.base import DEFAULT_CONCURRENCY, ENV_NAME, Abandoned, send_on_time
from tidings.transports.mime import build_message_bytes


class OutboxTransport:
    """Writes messages into the maildir at ``path`` (created with tmp/, new/, cur/ if missing)."""

    lead = 0.0  # nothing is written before the moment of a send_at

    def __init__(self, path: Path, *, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.path = path
        self._tmp, self._new = path / "tmp", path / "new"
        self._concurrency = concurrency
        try:
            for sub in ("tmp", "new", "cur"):
                make_private_dir(path / sub)
        except OSError as exc:
            raise ConfigurationError(
                f"{ENV_NAME}: cannot create the outbox maildir {path}: {exc.strerror}",
                field=ENV_NAME,
            ) from exc
        # Maildir unique names: time, then what makes this delivery unique on this host; the
        # random part keeps two containers with the same host name and pid apart.
        host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
        self._name_suffix = f"P{os.getpid()}R{secrets.token_hex(4)}"
        self._host = host
        self._counter = itertools.count(1)

    async def send(self, batch: Sequence[OutgoingMessage]) -> list[Outcome]:
        if not batch:
            return []
        # Building and fsyncing run in threads: the event loop keeps serving the API meanwhile,
        # and fsyncs of several chunks in parallel let the file system merge its journal commits.
        size = -(-len(batch) // self._concurrency)  # ceiling division
        chunks = [batch[i : i + size] for i in range(0, len(batch), size)]
        results = await asyncio.gather(*(asyncio.to_thread(self._deliver, c) for c in chunks))
        return [outcome for chunk in results for outcome in chunk]

    async def send_at(
        self,
        batch: Sequence[OutgoingMessage],
        *,
        at: float,
        by: float,
        lead: float | None = None,  # noqa: ARG002 (nothing is written ahead)
    ) -> list[Outcome | Abandoned | None]:
        """One write, at ``at``: there is no envelope to send ahead (``lead`` is not used)."""
        return await send_on_time(self, batch, at=at, by=by)

    async def prepare(self, count: int) -> None:
        """Nothing to open: a file is written when its message is sent."""

    async def close(self) -> None:
        """Nothing to release: every write is complete when ``send`` returns."""

    def _deliver(self, chunk: Sequence[OutgoingMessage]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        delivered = []
        for message in chunk:
            try:
                raw = build_message_bytes(message)
            except ValueError as exc:
                outcomes.append(Permanent(f"message cannot be serialised: {exc}"))
                continue
            name = self._unique_name()
            try:
                self._write(name, raw)
            except OSError as exc:
                outcomes.append(Transient(f"outbox write failed: {exc.strerror or exc}"))
                continue
            delivered.append(len(outcomes))
            outcomes.append(Sent(provider_id=name))
        if delivered:
            try:
                _fsync_directory(self._new)
            except OSError as exc:
                failed = Transient(f"outbox directory sync failed: {exc.strerror or exc}")
                for index in delivered:
                    outcomes[index] = failed
        return outcomes

    def _unique_name(self) -> str:
        now = time.time()
        seconds = int(now)
        micros = int((now - seconds) * 1_000_000)
        return f"{seconds}.M{micros}{self._name_suffix}Q{next(self._counter)}.{self._host}.eml"

    def _write(self, name: str, raw: bytes) -> None:
        tmp = self._tmp / name
        fd = create_private_file(tmp)  # 0600: messages hold personal data
        if fd is None:
            raise FileExistsError(errno.EEXIST, "a maildir name is in use", str(tmp))
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(raw)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, self._new / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
