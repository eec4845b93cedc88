"""Turns a transport URL (``TIDINGS_TRANSPORT_URL``, or a tenant's own) into a ``Transport``.

It sits above the concrete transports and imports them; ``base.py`` below them imports none, so
the port has no cycle with its implementations. Per-tenant selection, which picks among a tenant's
own transports, builds on this module (``routing.py``).

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

import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from tidings.errors import ConfigurationError
from tidings.transports import resend, smtp
from tidings.transports.base import (
    DEFAULT_CONCURRENCY,
    ENV_NAME,
    HTTP_TIMEOUT,
    RESEND_HOST,
    SMTP_DATA_TIMEOUT,
    SMTP_TIMEOUT,
    ResendSettings,
    SmtpSettings,
    Transport,
)
from tidings.transports.memory import MemoryTransport
from tidings.transports.outbox import OutboxTransport
from tidings.transports.resend import ResendTransport
from tidings.transports.smtp import SmtpTransport


def open_transport(url: str, *, concurrency: int = DEFAULT_CONCURRENCY) -> Transport:
    """The transport ``url`` names, with at most ``concurrency`` sends in flight.

    Nothing connects here: SMTP and HTTP connections open on the first send, so a process starts
    even while the mail server is down. Raises ``ConfigurationError`` for a URL that cannot work.
    """
    if concurrency < 1:
        raise ConfigurationError("concurrency must be at least 1", field="concurrency")
    scheme = url.partition(":")[0].lower()
    if scheme == "outbox":
        return OutboxTransport(parse_outbox_url(url), concurrency=concurrency)
    if scheme in ("smtp", "smtps"):
        return SmtpTransport(parse_smtp_url(url), concurrency=concurrency)
    if scheme in ("resend", "resend+http", "resend+https"):
        return ResendTransport(parse_resend_url(url), concurrency=concurrency)
    if scheme == "memory":
        return MemoryTransport()
    raise _bad(
        f"unknown scheme {scheme!r}; use outbox://, smtp://, smtps://, resend:// or memory://"
    )


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What testing a transport found."""

    ok: bool
    answer: str  # the server's answer (SMTP greeting and EHLO), or what went wrong
    latency_ms: float  # from the first connect to the answer
    checked: str  # what was tried, in words


async def probe_url(url: str) -> ProbeResult:
    """Open a connection to the transport ``url`` names and say hello, sending nothing: SMTP
    connects, upgrades to TLS and authenticates as a send would; Resend makes an authenticated
    read; an outbox must be a directory we can write."""
    scheme = url.partition(":")[0].lower()
    started = time.perf_counter()
    if scheme in ("smtp", "smtps"):
        settings = parse_smtp_url(url)
        ok, answer = await smtp.probe(settings)
        steps = ["connect", "EHLO"]
        steps += (
            ["STARTTLS"] if settings.tls == "starttls" else ["TLS"] if settings.tls == "tls" else []
        )
        steps += ["AUTH"] if settings.username else []
        checked = ", ".join(steps)
    elif scheme.startswith("resend"):
        ok, answer = await resend.probe(parse_resend_url(url))
        checked = "an authenticated GET /domains (nothing is sent)"
    elif scheme == "outbox":
        path = parse_outbox_url(url)
        if path.exists():
            ok = path.is_dir() and os.access(path, os.W_OK)
            answer = "a writable directory" if ok else "not a writable directory"
        else:
            ok, answer = True, "it does not exist yet: the first send creates it"
        checked = "the directory"
    else:
        ok, answer, checked = scheme == "memory", "in-process", "nothing"
    return ProbeResult(ok, answer, (time.perf_counter() - started) * 1000, checked)


def mask_url(url: str) -> str:
    """``url`` with its secret replaced by ``****``: the password of an SMTP URL (its user name
    stays, to tell accounts apart), the API key of a Resend URL. What reads and logs may show."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if "@" not in parts.netloc and not scheme.startswith("resend"):
        return url
    credentials, at, host = parts.netloc.rpartition("@")
    if not at:  # resend://KEY: the whole netloc is the key
        host = ""
    if scheme.startswith("resend"):
        masked = f"****@{host}" if host else "****"
    elif ":" in credentials:
        masked = f"{credentials.partition(':')[0]}:****@{host}"
    else:
        masked = f"{credentials}@{host}"
    return urlunsplit((parts.scheme, masked, parts.path, parts.query, parts.fragment))


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
