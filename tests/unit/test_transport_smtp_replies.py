"""SMTP replies: what each one means for the message, and reading them however the bytes arrive."""

from __future__ import annotations

import asyncio
from typing import Any

import aiosmtplib
import pytest

from tidings.domain.message import Permanent, Sent, Transient
from tidings.transports.base import SmtpSettings
from tidings.transports.smtp import _connect_failure, classify_reply, parse_queue_id
from tidings.transports.smtp_session import ProtocolViolation, Reply, SessionClosed, SmtpSession


@pytest.mark.parametrize(
    ("code", "text", "stage", "expected"),
    [
        (250, "2.0.0 Ok: queued as 4Bc9xyZ1", "DATA", Sent("4Bc9xyZ1")),
        (250, "OK id=1rZ2aB-000Kx9-3Q", "DATA", Sent("1rZ2aB-000Kx9-3Q")),
        (250, "OK", "DATA", Sent(None)),
        (
            421,
            "4.7.0 try again later, closing",
            "MAIL",
            Transient("421 4.7.0 try again later, closing (at MAIL)", throttled=True),
        ),
        (
            451,
            "4.7.1 greylisted",
            "RCPT",
            Transient("451 4.7.1 greylisted (at RCPT)", throttled=True),
        ),
        (
            452,
            "Too many messages in this connection",
            "MAIL",
            Transient("452 Too many messages in this connection (at MAIL)", throttled=True),
        ),
        (
            451,
            "4.3.0 local error",
            "DATA",
            Transient("451 4.3.0 local error (at DATA)", bounce=True),
        ),
        (450, "mailbox busy", "RCPT", Transient("450 mailbox busy (at RCPT)", bounce=True)),
        (
            550,
            "5.1.1 <bob@example.com>: no such user",
            "RCPT",
            Permanent(
                "550 5.1.1 <bob@example.com>: no such user (at RCPT)", hard_bounce=True, bounce=True
            ),
        ),
        (
            553,
            "5.1.3 bad address syntax",
            "RCPT",
            Permanent("553 5.1.3 bad address syntax (at RCPT)", hard_bounce=True, bounce=True),
        ),
        (
            550,
            "5.1.8 sender domain unknown",
            "MAIL",
            Permanent("550 5.1.8 sender domain unknown (at MAIL)"),
        ),
        (550, "5.1.1 user unknown", "MAIL", Permanent("550 5.1.1 user unknown (at MAIL)")),
        (
            550,
            "no such user here",
            "RCPT",
            Permanent("550 no such user here (at RCPT)", bounce=True),
        ),
        (554, "5.7.1 spam", "DATA", Permanent("554 5.7.1 spam (at DATA)", bounce=True)),
        (
            552,
            "5.2.2 mailbox full",
            "DATA",
            Permanent("552 5.2.2 mailbox full (at DATA)", bounce=True),
        ),
        (354, "go ahead", "MAIL", Transient("unexpected reply 354 go ahead (at MAIL)")),
    ],
)
def test_reply_codes_map_to_outcomes(code: int, text: str, stage: str, expected: object) -> None:
    assert classify_reply(code, text, stage=stage) == expected


def test_multi_line_reply_text_is_joined() -> None:
    outcome = classify_reply(
        550, "5.1.1 The email account\nthat you tried to reach\ndoes not exist", stage="RCPT"
    )
    assert outcome == Permanent(
        "550 5.1.1 The email account that you tried to reach does not exist (at RCPT)",
        hard_bounce=True,
        bounce=True,
    )


def test_queue_id_is_only_taken_from_known_forms() -> None:
    assert parse_queue_id("2.0.0 Ok: queued as 9F2C1A.") == "9F2C1A"
    assert parse_queue_id("2.0.0 OK 1712345678 a1si123.45 - gsmtp") is None


SETTINGS = SmtpSettings(host="mx.example.com", port=587)


@pytest.mark.parametrize(
    ("error", "throttled", "words"),
    [
        (aiosmtplib.SMTPConnectResponseError(421, "4.7.0 too many connections"), True, "421"),
        (aiosmtplib.SMTPAuthenticationError(535, "5.7.8 bad credentials"), False, "535"),
        (aiosmtplib.SMTPConnectError("refused"), False, "cannot connect"),
        (ConnectionRefusedError(111, "refused"), False, "cannot connect"),
        (
            aiosmtplib.SMTPException("STARTTLS extension not supported by server."),
            False,
            "tls=none",
        ),
    ],
)
def test_a_connection_that_cannot_open_is_always_transient(
    error: BaseException, throttled: bool, words: str
) -> None:
    outcome = _connect_failure(error, SETTINGS)
    assert isinstance(outcome, Transient)
    assert outcome.throttled is throttled
    assert words in outcome.reason and "mx.example.com:587" in outcome.reason


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def session() -> SmtpSession:
    return SmtpSession(FakeTransport(), {"pipelining": "", "size": "1000"})


async def test_replies_are_read_in_order_however_the_bytes_are_split() -> None:
    s = session()
    stream = b"250 2.1.0 Ok\r\n250-first\r\n250-second\r\n250 2.1.5 last\r\n354 go on\r\n"
    for i in range(0, len(stream), 7):  # arbitrary fragments, replies across fragments
        s.data_received(stream[i : i + 7])
    assert await s.read_reply() == Reply(250, "2.1.0 Ok")
    assert await s.read_reply() == Reply(250, "first second 2.1.5 last")
    assert await s.read_reply() == Reply(354, "go on")


async def test_a_reply_waited_for_arrives_later() -> None:
    s = session()
    waiting = asyncio.create_task(s.read_reply())
    await asyncio.sleep(0)
    s.data_received(b"221 bye\n")  # a bare LF is tolerated
    assert await waiting == Reply(221, "bye")


async def test_a_lost_connection_fails_the_reader_after_the_replies_already_in() -> None:
    s = session()
    s.data_received(b"421 4.7.0 closing\r\n")
    s.connection_lost(None)
    assert await s.read_reply() == Reply(421, "4.7.0 closing")
    with pytest.raises(SessionClosed):
        await s.read_reply()
    assert not s.is_open
    with pytest.raises(SessionClosed):
        s.write(b"NOOP\r\n")


async def test_garbage_from_the_server_is_a_protocol_violation() -> None:
    s = session()
    s.data_received(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(ProtocolViolation):
        await s.read_reply()
    assert s.transport.is_closing()


def test_extensions_are_looked_up_case_insensitively() -> None:
    s = session()
    assert s.pipelining and s.supports("SIZE") and not s.supports("smtputf8")
