"""Signing and verifying webhooks the Standard Webhooks way (https://www.standardwebhooks.com/).

Svix, and so Resend, use the same scheme under ``svix-*`` header names: the secret is
``whsec_<base64 key>``, the signed content is ``{id}.{timestamp}.{raw body}``, and the signature
header holds one or more space-separated ``v1,<base64 HMAC-SHA256>`` (several during a key
rotation). The timestamp bounds replays: a signature older or newer than the tolerance is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from datetime import datetime

from tidings.errors import Unauthenticated

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24  # random bytes in a secret we issue (Svix issues 24 too)
TOLERANCE_SECONDS = 300  # how far a signed timestamp may be from our clock, either way
SIGNATURE_VERSION = "v1"


def new_secret() -> str:
    """A fresh signing secret, ``whsec_`` and the base64 of random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_...`` secret; a bare base64 string is accepted too."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret is whsec_ followed by base64") from exc


def sign(secret: str, *, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for ``body``."""
    digest = hmac.new(
        secret_key(secret), f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256
    ).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(
    secret: str,
    *,
    message_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: datetime,
    tolerance: int = TOLERANCE_SECONDS,
) -> None:
    """Raises ``Unauthenticated`` unless one of the signatures is ours and the timestamp is fresh.

    Every candidate is compared in constant time, and the answer never says which check failed
    beyond "missing", "stale" or "does not match".
    """
    if not message_id or not timestamp or not signature:
        raise Unauthenticated("the webhook signature headers are missing")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise Unauthenticated("the webhook timestamp is not a number") from None
    if abs(now.timestamp() - sent_at) > tolerance:
        raise Unauthenticated("the webhook timestamp is too old or too far in the future")
    expected = sign(secret, message_id=message_id, timestamp=sent_at, body=body).encode()
    matched = False
    for candidate in signature.split():
        # No early exit: every candidate costs the same, whichever one matches.
        matched |= hmac.compare_digest(candidate.encode(), expected)
    if not matched:
        raise Unauthenticated("the webhook signature does not match")
