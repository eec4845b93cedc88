"""The transport port (``Transport`` and what ``send_at`` may answer) and the small types the
concrete transports share: their settings, defaults and timing helpers.

Nothing here imports a concrete transport: ``factory.py``, above them all, turns a URL into one,
so the port has no cycle with its implementations (``tests/unit/test_layering.py``).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from tidings.domain.message import Outcome, OutgoingMessage

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
