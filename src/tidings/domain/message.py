"""What travels from the worker to a transport, and what comes back.

``OutgoingMessage`` is fully rendered: a transport only serialises it (MIME bytes for SMTP and the
outbox, JSON for HTTP APIs). ``Outcome`` is the whole vocabulary a transport may answer with, so
nothing above ``transports/`` ever sees an aiosmtplib or httpx type.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    message_id: int  # the queue row's id
    tenant_id: int
    from_address: (
        str  # RFC 5322 mailbox, e.g. 'Acme <news@acme.test>'; checked for CR/LF before queueing
    )
    to_address: str  # a bare address, already validated and normalised
    subject: str
    html: str | None
    text: str  # always present: derived from the HTML when the template has none
    message_id_header: str  # '<…@…>'; the same on every retry, so a duplicate can be recognised
    #: Extra headers in order, e.g. List-Unsubscribe, List-Unsubscribe-Post, X-Tidings-Campaign.
    headers: tuple[tuple[str, str], ...] = ()
    to_name: str | None = None
    #: Sent as the provider's idempotency key by HTTP transports (a retry cannot send twice).
    idempotency_key: str = field(default="")
    #: The SMTP envelope sender (MAIL FROM) when it is not the From address: a VERP return path
    #: that routes this message's bounces back to it (set by ``transports/routing.py``).
    return_path: str | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    """The server accepted the message."""

    provider_id: str | None = None  # SMTP queue id from the reply, or the HTTP API's message id


@dataclass(frozen=True, slots=True)
class Transient:
    """Worth another try later: SMTP 4xx, a dropped connection, a timeout, HTTP 429 / 5xx."""

    reason: str
    retry_after: float | None = None  # seconds, when the server said (Retry-After)
    #: The server asked us to slow down (SMTP 421 / 4.7.x, HTTP 429): lower the recipient domain's
    #: adaptive rate, and do not count the attempt against the message.
    throttled: bool = False
    #: The message itself was written and the answer lost (RFC 1047): the server may have accepted
    #: it, so it must not be handed to another transport in the same attempt (a duplicate).
    may_have_arrived: bool = False


@dataclass(frozen=True, slots=True)
class Permanent:
    """Never worth another try: SMTP 5xx, HTTP 4xx other than 429."""

    reason: str
    #: The address does not exist (SMTP 5.1.x): suppress it so it is never tried again.
    hard_bounce: bool = False


Outcome = Sent | Transient | Permanent
