"""What travels from the worker to a transport, and what comes back.

``OutgoingMessage`` is fully rendered: a transport only serialises it (MIME bytes for SMTP and the
outbox, JSON for HTTP APIs). ``Outcome`` is the whole vocabulary a transport may answer with, so
nothing above ``transports/`` ever sees an aiosmtplib or httpx type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

#: A DKIM private key, parsed once per worker (``delivery/signing_keys.py``).
SigningKey = RSAPrivateKey | Ed25519PrivateKey


@dataclass(frozen=True, slots=True, eq=False)
class DkimKey:
    """What signs a tenant's mail from one verified sender domain (``transports/dkim_sign.py``)."""

    domain: str  # d=, ASCII (IDNA); the From domain or a parent of it
    selector: str  # s=: the record is at <selector>._domainkey.<domain>
    algorithm: str  # a=: rsa-sha256 | ed25519-sha256
    private_key: SigningKey


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file that goes with a message. Its content travels already encoded, once per worker and
    file (``delivery/features.py``), never once per message."""

    filename: str  # the last path component only, no control characters; may be non-ASCII
    content_type: str  # from services.message_features.ALLOWED_CONTENT_TYPES
    content_base64: str  # the whole content in one base64 line, as HTTP APIs take it
    mime_body: bytes  # the same base64 in 76-character CRLF lines: the MIME part's body


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
    #: A mailbox like ``from_address``, checked the same way before queueing; None: no Reply-To.
    reply_to: str | None = None
    #: Empty for almost every message, whose MIME is then exactly what it was without them.
    attachments: tuple[Attachment, ...] = ()
    #: The sender domain's key when the From domain (or a parent) is verified for the tenant:
    #: ``build_message_bytes`` signs with it. None: sent unsigned.
    dkim: DkimKey | None = None
    #: The SMTP envelope sender (MAIL FROM) when it is not the From address: a VERP return path
    #: that routes this message's bounces back to it (set by ``transports/routing.py``).
    return_path: str | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    """The server accepted the message."""

    provider_id: str | None = None  # SMTP queue id from the reply, or the HTTP API's message id
    #: The provider reports delivery later (Resend's ``email.delivered`` webhook): accepted is not
    #: yet delivered. False (SMTP): the receiving server's 250 is the only confirmation there is,
    #: so the message counts as delivered at once.
    delivery_reported_later: bool = False


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
    #: The receiving server refused this message for now (a 4xx reply to RCPT or DATA, not a
    #: slow-down): the message counts as soft-bounced until a later attempt is accepted.
    bounce: bool = False


@dataclass(frozen=True, slots=True)
class Permanent:
    """Never worth another try: SMTP 5xx, HTTP 4xx other than 429."""

    reason: str
    #: The address does not exist (SMTP 5.1.x): suppress it so it is never tried again.
    hard_bounce: bool = False
    #: The receiving server refused this message for good (a 5xx reply to RCPT or DATA): a hard
    #: bounce in the campaign's figures. Only ``hard_bounce`` (about the address) suppresses: a
    #: 5.7.x policy refusal says nothing about whether the mailbox exists.
    bounce: bool = False


Outcome = Sent | Transient | Permanent
