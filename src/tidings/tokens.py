"""Signed, encrypted tokens for the links in every email: ``/u/{token}`` and ``/p/{token}``.

A token must survive in mail archives for a long time, be impossible to forge or alter, and reveal
nothing to whoever reads the URL (not even the tenant or contact id, and never an address). So the
compact binary payload is sealed with a deterministic authenticated encryption built only from
HMAC-SHA256 (the SIV construction): ``tag = HMAC(k_mac, payload)[:16]`` authenticates the payload
and also serves as the IV of a keystream ``HMAC(k_enc, tag || counter)`` that is XORed over it.
Both keys are derived from the instance secret, so rotating ``TIDINGS_SECRET_KEY`` voids every
link. A recipient without a contact row (an ad-hoc transactional address) is named by the address
itself, which the encryption hides; everyone else by contact id, which keeps the URL short.

Layout before base64url: ``version (1) | tag (16) | encrypted payload`` where the payload is
``kind (1) | flags (1) | varint tenant | varint issued-at (unix s) | [varint contact] |
[varint len, email] | [varint len, category]``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal

from tidings.errors import InvalidToken

TokenKind = Literal["unsubscribe", "preferences"]

TOKEN_VERSION = 1
TAG_BYTES = 16  # 128-bit authenticator: forging one is out of reach
#: RFC 8058 links must keep working as long as a mail may sit unread in an inbox.
TOKEN_MAX_AGE = timedelta(days=730)
#: Issue times this far in the future still pass: another host's clock may run ahead.
CLOCK_SKEW = timedelta(minutes=10)
MAX_TOKEN_CHARS = 2048  # longer input is refused before any decoding work
MAX_EMAIL_BYTES = 1024
MAX_CATEGORY_BYTES = 255

_KIND_CODES: dict[str, int] = {"unsubscribe": 1, "preferences": 2}
_KIND_NAMES: dict[int, TokenKind] = {1: "unsubscribe", 2: "preferences"}
_HAS_CONTACT, _HAS_EMAIL, _HAS_CATEGORY = 1, 2, 4
_VERSION_PREFIX = bytes([TOKEN_VERSION])


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a valid token says; exactly one of ``contact_id`` and ``email`` is set."""

    kind: TokenKind
    tenant_id: int
    contact_id: int | None
    email: str | None  # only for recipients without a contact row
    category: str | None  # the mail's category, for a per-category unsubscribe
    issued_at: datetime  # aware UTC, whole seconds


@lru_cache(maxsize=8)
def _keys(secret: str) -> tuple[hmac.HMAC, hmac.HMAC]:
    """Separate MAC and encryption keys, so one key never serves two purposes.

    Returned as keyed HMAC objects to ``copy()``: that skips the key schedule on every token.
    """
    root = secret.encode()
    return (
        hmac.new(hmac.digest(root, b"tidings/token/mac/v1", "sha256"), digestmod=hashlib.sha256),
        hmac.new(hmac.digest(root, b"tidings/token/enc/v1", "sha256"), digestmod=hashlib.sha256),
    )


def _mac(keyed: hmac.HMAC, message: bytes) -> bytes:
    mac = keyed.copy()
    mac.update(message)
    return mac.digest()


def _keystream_xor(keyed: hmac.HMAC, tag: bytes, data: bytes) -> bytes:
    stream = b"".join(
        _mac(keyed, tag + block.to_bytes(4, "big")) for block in range((len(data) + 31) // 32)
    )
    size = len(data)
    mixed = int.from_bytes(data, "big") ^ int.from_bytes(stream[:size], "big")
    return mixed.to_bytes(size, "big")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _read_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    size, pos = _read_varint(data, pos)
    if pos + size > len(data):
        raise ValueError("truncated field")
    return data[pos : pos + size], pos + size


def make_token(
    secret: str,
    *,
    kind: TokenKind,
    tenant_id: int,
    contact_id: int | None,
    email: str | None,
    category: str | None,
    now: datetime,
) -> str:
    """A URL-safe token for ``kind`` naming the contact, or the address when there is no contact.

    Exactly one of ``contact_id`` and ``email`` must be given (a programming error otherwise).
    """
    if (contact_id is None) == (email is None):
        raise ValueError("give exactly one of contact_id and email")
    if tenant_id < 1 or (contact_id is not None and contact_id < 1):
        raise ValueError("ids are positive")
    flags = 0
    body = bytearray((_KIND_CODES[kind], 0))
    body += _varint(tenant_id)
    body += _varint(int(now.timestamp()))
    if contact_id is not None:
        flags |= _HAS_CONTACT
        body += _varint(contact_id)
    if email is not None:
        raw = email.encode()
        if len(raw) > MAX_EMAIL_BYTES:
            raise ValueError("email too long for a token")
        flags |= _HAS_EMAIL
        body += _varint(len(raw)) + raw
    if category is not None:
        raw = category.encode()
        if len(raw) > MAX_CATEGORY_BYTES:
            raise ValueError("category too long for a token")
        flags |= _HAS_CATEGORY
        body += _varint(len(raw)) + raw
    body[1] = flags
    payload = bytes(body)
    mac_key, enc_key = _keys(secret)
    tag = _mac(mac_key, payload)[:TAG_BYTES]
    sealed = _VERSION_PREFIX + tag + _keystream_xor(enc_key, tag, payload)
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def _open(secret: str, token: str) -> bytes:
    """The authenticated payload, or ``InvalidToken`` for anything this server did not issue."""
    if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise InvalidToken()
    try:
        sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken() from None
    if len(sealed) < 1 + TAG_BYTES + 4 or sealed[0] != TOKEN_VERSION:
        raise InvalidToken()
    if base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii") != token:
        # The last character's unused bits: one token, one spelling.
        raise InvalidToken()
    tag, ciphertext = sealed[1 : 1 + TAG_BYTES], sealed[1 + TAG_BYTES :]
    mac_key, enc_key = _keys(secret)
    payload = _keystream_xor(enc_key, tag, ciphertext)
    expected = _mac(mac_key, payload)[:TAG_BYTES]
    if not hmac.compare_digest(tag, expected):
        raise InvalidToken()
    return payload


def _parse(payload: bytes) -> TokenClaims:
    kind = _KIND_NAMES[payload[0]]
    flags = payload[1]
    tenant_id, pos = _read_varint(payload, 2)
    issued, pos = _read_varint(payload, pos)
    contact_id = email = category = None
    if flags & _HAS_CONTACT:
        contact_id, pos = _read_varint(payload, pos)
    if flags & _HAS_EMAIL:
        raw, pos = _read_bytes(payload, pos)
        email = raw.decode()
    if flags & _HAS_CATEGORY:
        raw, pos = _read_bytes(payload, pos)
        category = raw.decode()
    if pos != len(payload) or (contact_id is None) == (email is None):
        raise ValueError("malformed payload")
    return TokenClaims(
        kind=kind,
        tenant_id=tenant_id,
        contact_id=contact_id,
        email=email,
        category=category,
        issued_at=datetime.fromtimestamp(issued, UTC),
    )


def read_token(secret: str, token: str, *, kind: TokenKind, now: datetime) -> TokenClaims:
    """The claims of a token this server issued for ``kind``, still within its lifetime.

    Forged, altered, truncated, expired and wrong-kind tokens all raise ``InvalidToken``.
    """
    payload = _open(secret, token)
    try:
        claims = _parse(payload)
    except (KeyError, ValueError, IndexError):
        # Authentic but unparsable: only a bug or a future format could produce it.
        raise InvalidToken() from None
    if claims.kind != kind:
        raise InvalidToken()
    if claims.issued_at + TOKEN_MAX_AGE < now or claims.issued_at > now + CLOCK_SKEW:
        raise InvalidToken("This link has expired.")
    return claims


def unsubscribe_url(public_url: str, token: str) -> str:
    """The one-click unsubscribe link (RFC 8058: POST here unsubscribes, GET confirms first)."""
    return f"{public_url.rstrip('/')}/u/{token}"


def preferences_url(public_url: str, token: str) -> str:
    """The page where a recipient chooses which categories of mail to receive."""
    return f"{public_url.rstrip('/')}/p/{token}"
