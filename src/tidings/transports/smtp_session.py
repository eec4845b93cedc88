"""The mail-transaction half of an SMTP connection: pipelined commands and reply parsing.

aiosmtplib opens the session (TCP or TLS, STARTTLS, EHLO, AUTH: the parts where a mature library
earns its keep); then ``SmtpSession.take_over`` swaps this protocol onto the same transport for
the per-message work. The reason is measured (``bench/bench_smtp_clients.py``): aiosmtplib
answers one command per round trip and its ``sendmail`` spends ~150 us of CPU a message in
address re-parsing and regular expressions. Here, with PIPELINING (RFC 2920), MAIL, RCPT and
DATA leave in one write and the message in a second: two round trips and two system calls a
message instead of four, which roughly doubles what one connection carries.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import NamedTuple

import aiosmtplib

#: A server that sends this much without completing a reply is broken or hostile.
MAX_REPLY_BYTES = 64 * 1024


class Reply(NamedTuple):
    code: int
    text: str  # the lines of a multi-line reply joined with a space


class SessionClosed(ConnectionError):
    """The connection is gone (closed by the server, reset, or closed by us)."""


class ProtocolViolation(Exception):
    """The server sent something that is not an SMTP reply."""


class SmtpSession(asyncio.Protocol):
    """Reads every reply the server sends, in order, however the bytes arrive."""

    def __init__(self, transport: asyncio.Transport, extensions: dict[str, str]) -> None:
        self.transport = transport
        #: EHLO keywords (lower case) and their parameters, as the server offered them.
        self.extensions = extensions
        self._buffer = bytearray()
        self._lines: list[str] = []  # lines of a multi-line reply seen so far
        self._replies: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    @classmethod
    def take_over(cls, smtp: aiosmtplib.SMTP) -> SmtpSession:
        """Move an open, greeted (and authenticated) aiosmtplib connection onto a session."""
        transport = smtp.transport
        if transport is None or transport.is_closing():
            raise SessionClosed("connection lost before the session started")
        extensions = {k.lower(): v for k, v in smtp.esmtp_extensions.items()}
        session = cls(transport, extensions)  # type: ignore[arg-type]
        transport.set_protocol(session)
        return session

    # --- commands ------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._error is None and not self.transport.is_closing()

    @property
    def pipelining(self) -> bool:
        return "pipelining" in self.extensions

    def supports(self, extension: str) -> bool:
        return extension.lower() in self.extensions

    def write(self, data: bytes) -> None:
        if not self.is_open:
            raise SessionClosed("connection lost") from self._error
        self.transport.write(data)

    async def command(self, line: bytes) -> Reply:
        self.write(line + b"\r\n")
        return await self.read_reply()

    async def read_reply(self) -> Reply:
        while not self._replies:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._replies.popleft()

    def close(self) -> None:
        if self._error is None:
            self._error = SessionClosed("connection closed")
        self.transport.close()

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._buffer.extend(data)
        try:
            self._parse()
        except ProtocolViolation as exc:
            self._fail(exc)
            self.transport.close()
            return
        if self._replies:
            self._wake()

    def eof_received(self) -> bool:
        self._fail(SessionClosed("the server closed the connection"))
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        lost = SessionClosed(f"connection lost: {exc}" if exc else "connection closed")
        self._fail(lost)

    # --- internals -------------------------------------------------------------------------------

    def _parse(self) -> None:
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_BYTES:
                    raise ProtocolViolation("reply line too long")
                return
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            code = line[:3]
            if len(code) < 3 or not code.isdigit() or line[3:4] not in (b"", b" ", b"-"):
                raise ProtocolViolation(f"not an SMTP reply: {line[:80]!r}")
            self._lines.append(line[4:].decode("utf-8", "replace").strip())
            if len(self._lines) > MAX_REPLY_BYTES // 4:
                raise ProtocolViolation("reply has too many lines")
            if line[3:4] != b"-":
                self._replies.append(Reply(int(code), " ".join(t for t in self._lines if t)))
                self._lines = []

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
