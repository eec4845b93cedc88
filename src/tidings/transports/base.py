"""The transport port and ``open_transport``, which turns ``TIDINGS_TRANSPORT_URL`` into one.

Accepted URLs (credentials are percent-decoded; unknown query parameters are refused so a typo
does not silently fall back to a default)::

    outbox:///var/lib/tidings/outbox                 a maildir of .eml files (the default)
    smtp://user:pass@host:587?tls=starttls           tls: starttls (default), tls, none
    smtps://user:pass@host                           implicit TLS, port 465
        more SMTP options: timeout=SECONDS (commands, default 30), data_timeout=SECONDS (the
        reply after the final '.', default 600), verify=false (skip certificate checks),
        cafile=/path/ca.pem, helo=NAME (the EHLO name)
    resend://KEY  or  resend://KEY@host              https://api.resend.com unless a host is given
    resend+http://KEY@127.0.0.1:8025                 plain HTTP, for tests; timeout=SECONDS
    memory://                                        in-process fake (tests)
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from tidings.domain.message import Outcome, OutgoingMessage
from tidings.errors import ConfigurationError

ENV_NAME = "TIDINGS_TRANSPORT_URL"
DEFAULT_CONCURRENCY = 10
SMTP_TIMEOUT = 30.0  # seconds for connecting and each command
#: RFC 5321 4.5.3.2.6 asks a client to wait 10 minutes for the reply to the final '.': giving up
#: sooner is what turns a slow server into a duplicate message (RFC 1047).
SMTP_DATA_TIMEOUT = 600.0  # seconds
HTTP_TIMEOUT = 30.0  # seconds
RESEND_HOST = "api.resend.com"

TlsMode = Literal["starttls", "tls", "none"]


class Transport(Protocol):
    """Sends rendered messages; the worker speaks only this."""

    @property
    def lead(self) -> float:
        """How long before its ``at`` a ``send_at`` would start writing (0: at ``at``): what
        this transport asks the claim for (``delivery/throttle.py`` spaces envelopes too)."""
        ...

    async def send(self, batch: Sequence[OutgoingMessage]) -> list[Outcome]:
        """One outcome per message, same order. Never raises for a per-message problem."""
        ...

    async def send_at(
        self,
        batch: Sequence[OutgoingMessage],
        *,
        at: float,
        by: float,
        lead: float | None = None,
    ) -> list[Outcome | Abandoned | None]:
        """Send ``batch`` starting at ``at`` and not after ``by`` (``time.monotonic()``), a write
        made ahead of the message (an SMTP envelope) ``lead`` earlier than each (default: the
        transport's own ``lead``; the caller hands the batch over that much earlier), with
        whatever a send needs first (its bytes, a connection) done before ``at``, so that the
        start is the moment asked for. None, unsent, for a message that could not start by
        ``by``: the caller gives it back to the queue, and its slot to the throttle (a
        throttle's bound allows only so much lateness); ``ABANDONED`` for one given up after the
        server saw part of it: back to the queue too, but its slot stays used."""
        ...

    async def prepare(self, count: int) -> None:
        """Get ready for ``count`` sends that must start at a given moment (throttled mail has a
        slot): open or check connections now, so that a send does not spend the moment on them.
        Never raises; a transport with nothing to open does nothing."""
        ...

    async def close(self) -> None:
        """Release connections; the transport is not used afterwards."""
        ...


class Abandoned(enum.Enum):
    """A throttled send given up after its envelope went out, before its final dot."""

    ABANDONED = "abandoned"


ABANDONED = Abandoned.ABANDONED


async def wait_until(moment: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``moment``; never wake before it (asyncio may fire
    a timer up to a clock tick early)."""
    while (wait := moment - time.monotonic()) > 0:  # noqa: ASYNC110
        await asyncio.sleep(wait)


async def send_on_time(
    transport: Transport, batch: Sequence[OutgoingMessage], *, at: float, by: float
) -> list[Outcome | Abandoned | None]:
    """``send_at`` for a transport with nothing to do ahead of a send: wait, check, send."""
    await wait_until(at)
    if time.monotonic() > by:
        return [None] * len(batch)
    return list(await transport.send(batch))


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    tls: TlsMode = "starttls"
    username: str | None = None
    password: str | None = None
    timeout: float = SMTP_TIMEOUT
    data_timeout: float = SMTP_DATA_TIMEOUT
    verify: bool = True
    cafile: str | None = None
    helo: str | None = None  # None: the local host name

    def __repr__(self) -> str:  # never show the password in a log line or a traceback
        return f"SmtpSettings(host={self.host!r}, port={self.port}, tls={self.tls!r}, user={self.username!r})"


@dataclass(frozen=True, slots=True)
class ResendSettings:
    api_key: str
    base_url: str = f"https://{RESEND_HOST}"
    timeout: float = HTTP_TIMEOUT

    def __repr__(self) -> str:
        return f"ResendSettings(base_url={self.base_url!r})"


def open_transport(url: str, *, concurrency: int = DEFAULT_CONCURRENCY) -> Transport:
    """The transport ``url`` names, with at most ``concurrency`` sends in flight.

    Nothing connects here: SMTP and HTTP connections open on the first send, so a process starts
    even while the mail server is down. Raises ``ConfigurationError`` for a URL that cannot work.
    """
    if concurrency < 1:
        raise ConfigurationError("concurrency must be at least 1", field="concurrency")
    scheme = url.partition(":")[0].lower()
    if scheme == "outbox":
        from tidings.transports.outbox import OutboxTransport

        return OutboxTransport(parse_outbox_url(url), concurrency=concurrency)
    if scheme in ("smtp", "smtps"):
        from tidings.transports.smtp import SmtpTransport

        return SmtpTransport(parse_smtp_url(url), concurrency=concurrency)
    if scheme in ("resend", "resend+http", "resend+https"):
        from tidings.transports.resend import ResendTransport

        return ResendTransport(parse_resend_url(url), concurrency=concurrency)
    if scheme == "memory":
        from tidings.transports.memory import MemoryTransport

        return MemoryTransport()
    raise _bad(
        f"unknown scheme {scheme!r}; use outbox://, smtp://, smtps://, resend:// or memory://"
    )


def parse_outbox_url(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or not parts.path or parts.query:
        raise _bad("an outbox URL is outbox:///absolute/path/to/maildir")
    return Path(unquote(parts.path))


def parse_smtp_url(url: str) -> SmtpSettings:
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # a port that is not a number
        raise _bad(f"invalid port: {exc}") from None
    if not host:
        raise _bad("an SMTP URL needs a host: smtp://user:pass@host:port")
    options = _query(parts.query, {"tls", "timeout", "data_timeout", "verify", "cafile", "helo"})
    tls = options.get("tls", "tls" if parts.scheme.lower() == "smtps" else "starttls")
    if tls not in ("starttls", "tls", "none"):
        raise _bad(f"tls must be starttls, tls or none, not {tls!r}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if (username is None) != (password is None):
        raise _bad("give both a user name and a password (smtp://user:pass@host), or neither")
    default_port = {"starttls": 587, "tls": 465, "none": 25}[tls]
    return SmtpSettings(
        host=host,
        port=port or default_port,
        tls=tls,  # type: ignore[arg-type]  # checked against the Literal just above
        username=username,
        password=password,
        timeout=_seconds(options, "timeout", SMTP_TIMEOUT),
        data_timeout=_seconds(options, "data_timeout", SMTP_DATA_TIMEOUT),
        verify=_boolean(options, "verify", default=True),
        cafile=options.get("cafile"),
        helo=options.get("helo"),
    )


def parse_resend_url(url: str) -> ResendSettings:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    netloc = parts.netloc
    if "@" in netloc:
        key, _, host = netloc.rpartition("@")
    else:
        key, host = netloc, ""
    key = unquote(key)
    if not key:
        raise _bad("a Resend URL carries the API key: resend://re_xxxxxxxx")
    options = _query(parts.query, {"timeout"})
    if parts.path not in ("", "/"):
        raise _bad("a Resend URL has no path: resend://KEY@host")
    http = "http" if scheme == "resend+http" else "https"
    return ResendSettings(
        api_key=key,
        base_url=f"{http}://{host or RESEND_HOST}",
        timeout=_seconds(options, "timeout", HTTP_TIMEOUT),
    )


def _query(query: str, allowed: set[str]) -> dict[str, str]:
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise _bad(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    return options


def _seconds(options: dict[str, str], name: str, default: float) -> float:
    if name not in options:
        return default
    try:
        value = float(options[name])
    except ValueError:
        raise _bad(f"{name} must be a number of seconds, not {options[name]!r}") from None
    if not value > 0:
        raise _bad(f"{name} must be more than 0 seconds")
    return value


def _boolean(options: dict[str, str], name: str, *, default: bool) -> bool:
    value = options.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise _bad(f"{name} must be true or false, not {value!r}")


def _bad(detail: str) -> ConfigurationError:
    # The URL itself is never quoted back: it usually holds a password or an API key.
    return ConfigurationError(f"{ENV_NAME} is not valid: {detail}", field=ENV_NAME)
