"""TIDINGS_TRANSPORT_URL: every documented form opens the right transport; a bad one says what is
wrong, names the variable, and never echoes a password or API key back."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.errors import ConfigurationError
from tidings.transports.base import SMTP_DATA_TIMEOUT
from tidings.transports.factory import (
    open_transport,
    parse_outbox_url,
    parse_resend_url,
    parse_smtp_url,
)
from tidings.transports.memory import MemoryTransport
from tidings.transports.outbox import OutboxTransport
from tidings.transports.resend import ResendTransport
from tidings.transports.smtp import SmtpTransport


def test_outbox_url_is_an_absolute_maildir_path(tmp_path: Path) -> None:
    assert parse_outbox_url(f"outbox://{tmp_path}/out%20box") == tmp_path / "out box"
    assert isinstance(open_transport(f"outbox://{tmp_path}"), OutboxTransport)


def test_smtp_url_with_credentials_and_options() -> None:
    s = parse_smtp_url(
        "smtp://us%40er:p%3Ass@mail.example.com:2525?tls=none&timeout=5&data_timeout=90"
        "&verify=false&cafile=/etc/ca.pem&helo=sender.example.com"
    )
    assert (s.host, s.port, s.tls) == ("mail.example.com", 2525, "none")
    assert (s.username, s.password) == ("us@er", "p:ss")
    assert (s.timeout, s.data_timeout, s.verify) == (5.0, 90.0, False)
    assert (s.cafile, s.helo) == ("/etc/ca.pem", "sender.example.com")
    assert "p:ss" not in repr(s)


@pytest.mark.parametrize(
    ("url", "tls", "port"),
    [
        ("smtp://mail.example.com", "starttls", 587),  # secure unless told otherwise
        ("smtp://mail.example.com?tls=tls", "tls", 465),
        ("smtps://mail.example.com", "tls", 465),
        ("smtp://127.0.0.1:25?tls=none", "none", 25),
        ("SMTP://mail.example.com:26", "starttls", 26),
    ],
)
def test_smtp_defaults(url: str, tls: str, port: int) -> None:
    settings = parse_smtp_url(url)
    assert (settings.tls, settings.port) == (tls, port)
    assert settings.data_timeout == SMTP_DATA_TIMEOUT


def test_resend_urls() -> None:
    assert parse_resend_url("resend://re_abc").base_url == "https://api.resend.com"
    assert parse_resend_url("resend://re_abc@").base_url == "https://api.resend.com"
    custom = parse_resend_url("resend://re_abc@eu.resend.example?timeout=3")
    assert (custom.api_key, custom.base_url, custom.timeout) == (
        "re_abc",
        "https://eu.resend.example",
        3.0,
    )
    local = parse_resend_url("resend+http://re_abc@127.0.0.1:8025")
    assert local.base_url == "http://127.0.0.1:8025"
    assert "re_abc" not in repr(local)


async def test_each_scheme_opens_its_transport(tmp_path: Path) -> None:
    transports = [
        open_transport("smtp://127.0.0.1:2525?tls=none"),
        open_transport("resend://re_abc"),
        open_transport("memory://"),
        open_transport(f"outbox://{tmp_path}"),
    ]
    kinds = [SmtpTransport, ResendTransport, MemoryTransport, OutboxTransport]
    assert [type(t) for t in transports] == kinds
    for transport in transports:
        await transport.close()


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("ftp://host", "unknown scheme"),
        ("nonsense", "unknown scheme"),
        ("outbox://relative/path", "outbox:///absolute"),
        ("outbox://", "outbox:///absolute"),
        ("smtp://", "needs a host"),
        ("smtp://user:secretpw@host:notaport", "invalid port"),
        ("smtp://user:secretpw@host?tls=maybe", "tls must be"),
        ("smtp://user:secretpw@host?timeout=-1", "more than 0"),
        ("smtp://user:secretpw@host?timeout=soon", "number of seconds"),
        ("smtp://user:secretpw@host?verify=perhaps", "true or false"),
        ("smtp://user:secretpw@host?tsl=none", "unknown option(s) tsl"),
        ("smtp://user@host", "both a user name and a password"),
        ("resend://", "carries the API key"),
        ("resend://secretpw@host/emails", "no path"),
    ],
)
def test_a_bad_url_is_a_configuration_error_naming_the_variable(url: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_transport(url)
    assert caught.value.field == "TIDINGS_TRANSPORT_URL"
    assert "TIDINGS_TRANSPORT_URL" in caught.value.message
    assert complaint in caught.value.message
    assert "secretpw" not in caught.value.message


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ConfigurationError):
        open_transport("memory://", concurrency=0)
