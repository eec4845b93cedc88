"""Signed, encrypted tokens for the links in every email: ``/u/{token}`` and ``/p/{token}``.

A token must survive in mail archives for a long time, be impossible to forge or alter, and reveal
nothing to whoever reads the URL (not even the tenant, message or contact id, and never an
address). So the compact binary payload is sealed with a deterministic authenticated encryption
built only from HMAC-SHA256 (the SIV construction): ``tag = HMAC(k_mac, version || payload)[:16]``
authenticates the payload and also serves as the IV of a keystream ``HMAC(k_enc, tag || counter)``
that is XORed over it. Both keys are derived from the instance secret, so rotating
``TIDINGS_SECRET_KEY`` voids every link.

**What a token acts for.** Whoever holds a link acts for its recipient, so a link must only ever
exist for the recipient of a real message, and act on nobody else. A version 2 token therefore
names *the message it was sent in* (``messages.id``, within its tenant), never a bare contact id
or address: ``services/preferences.resolve`` accepts it only when that message of that tenant
exists and was sent (``sent_at`` set), and it acts on that message's recipient. Tokens are minted
only by the worker, while it renders a claimed message, and by the unsubscribe page for the
preference link of the same message; previews and the check at accept render inert placeholder
links (``PREVIEW_TOKEN``), because they have no message, and the dashboard's inbox shows sent
mail with its links made inert. So an API key of any role cannot obtain a working token for an
address, and a token for an address that was never sent to acts on nobody. (Whoever reads the
delivered mail holds its links, as RFC 8058 intends: the recipient, or a relay the tenant
controls.)

**Reused ids.** Message ids are never reused (AUTOINCREMENT on SQLite, identity on PostgreSQL:
migration 0009), and a token to a contact also carries the contact's creation time (whole
seconds): a contact deleted and another one created later under the same id does not match, so
an old link can never reach a new contact. A deleted contact's messages are detached from it
(``contacts.delete_contact``), so its links then act on nobody.

**Version 1 tokens** (before migration 0009) named a contact id or an address, and previews made
them too. They are still accepted, so that links in mail already delivered keep working for their
lifetime, but only as evidence of a real send: the contact must have existed when the token was
issued (its creation time is not later), and a message to that contact (or to that address, for
an ad-hoc one) must have been sent within ``V1_SEND_WINDOW`` after the token's issue time, as the
worker does (render, then send). The token then acts through that message. What remains open: a
version 1 token previewed before the upgrade within the hour before a real send to the same
recipient; no new version 1 token can be made.

Layout before base64url: ``version (1) | tag (16) | encrypted payload`` where the version 2
payload is ``kind (1) | flags (1) | varint tenant | varint issued-at (unix s) | varint message |
[varint contact created-at (unix s)] | [varint len, category]`` (version 1: ``kind | flags |
varint tenant | varint issued-at | [varint contact] | [varint len, email] | [varint len,
category]``).
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

TokenKind = Literal["unsubscribe", "preferences", "confirm"]

TOKEN_VERSION = 2
V1 = 1  # contact id or address instead of the message; read only, never made
TAG_BYTES = 16  # 128-bit authenticator: forging one is out of reach
#: RFC 8058 links must keep working as long as a mail may sit unread in an inbox.
TOKEN_MAX_AGE = timedelta(days=730)
#: Issue times this far in the future still pass: another host's clock may run ahead.
CLOCK_SKEW = timedelta(minutes=10)
#: A version 1 token counts as sent only when a message to its recipient was sent this long after
#: the token was issued at most: the worker renders, then sends at once (a slow SMTP reply can
#: take minutes, hence the margin).
V1_SEND_WINDOW = timedelta(hours=1)
MAX_TOKEN_CHARS = 2048  # longer input is refused before any decoding work
MAX_EMAIL_BYTES = 1024
MAX_CATEGORY_BYTES = 255
#: The path segment of the inert links in previews: ``/u/preview`` answers a page, changes nothing.
#: Not base64 of any sealed token (too short), so it can never be mistaken for one.
PREVIEW_TOKEN = "preview"

_KIND_CODES: dict[str, int] = {"unsubscribe": 1, "preferences": 2, "confirm": 3}
_KIND_NAMES: dict[int, TokenKind] = {1: "unsubscribe", 2: "preferences", 3: "confirm"}
#: The path of each kind's link below the public URL (``confirm``: a public sign-up's opt-in).
LINK_PATHS: dict[str, str] = {"unsubscribe": "u", "preferences": "p", "confirm": "s/confirm"}
#: A sign-up's confirmation link lives as long as the sign-up waits (``services/signups.py``).
CONFIRM_MAX_AGE = timedelta(days=7)
_HAS_CONTACT, _HAS_EMAIL, _HAS_CATEGORY = 1, 2, 4


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a valid token says. A version 2 token names ``message_id``; only a version 1 token
    names ``contact_id`` or ``email`` instead (exactly one of them)."""

    kind: TokenKind
    tenant_id: int
    message_id: int | None  # the message the link was sent in (version 2)
    #: Creation time of the message's contact, unix seconds (version 2, None: ad-hoc address).
    contact_created: int | None
    contact_id: int | None  # version 1 only
    email: str | None  # version 1 only: a recipient without a contact row
    category: str | None  # the mail's category, for a per-category unsubscribe
    issued_at: datetime  # aware UTC, whole seconds


def contact_stamp(created_at: datetime) -> int:
    """A contact's creation time as tokens carry it (unix seconds)."""
    return int(created_at.timestamp())


def preview_url(public_url: str, kind: TokenKind) -> str:
    """The inert link a preview shows instead of a working one."""
    return f"{public_url.rstrip('/')}/{LINK_PATHS[kind]}/{PREVIEW_TOKEN}"


@lru_cache(maxsize=8)
def _keys(secret: str, purpose: str = "token") -> tuple[hmac.HMAC, hmac.HMAC]:
    """Separate MAC and encryption keys, so one key never serves two purposes; ``purpose``
    separates the keys of other sealed links (``tracking/links.py`` seals under "tracking"), so
    a token of one kind can never be opened as another.

    Returned as keyed HMAC objects to ``copy()``: that skips the key schedule on every token.
    """
    root = secret.encode()
    label = purpose.encode()
    return (
        hmac.new(
            hmac.digest(root, b"tidings/" + label + b"/mac/v1", "sha256"), digestmod=hashlib.sha256
        ),
        hmac.new(
            hmac.digest(root, b"tidings/" + label + b"/enc/v1", "sha256"), digestmod=hashlib.sha256
        ),
    )


def _mac(keyed: hmac.HMAC, message: bytes) -> bytes:
    mac = keyed.copy()
    mac.update(message)
    return mac.digest()


def _tag(keyed: hmac.HMAC, version: int, payload: bytes) -> bytes:
    """Version 1 authenticated the payload alone; later versions also their version byte, so a
    token can never be re-read under another version's layout."""
    return _mac(keyed, payload if version == V1 else bytes([version]) + payload)[:TAG_BYTES]


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


def seal(secret: str, version: int, payload: bytes, *, purpose: str = "token") -> str:
    """``payload`` sealed under ``version`` (see the module docstring), as URL-safe text."""
    mac_key, enc_key = _keys(secret, purpose)
    tag = _tag(mac_key, version, payload)
    sealed = bytes([version]) + tag + _keystream_xor(enc_key, tag, payload)
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def make_token(
    secret: str,
    *,
    kind: TokenKind,
    tenant_id: int,
    message_id: int,
    contact_created: int | None,
    category: str | None,
    now: datetime,
) -> str:
    """A URL-safe token for ``kind`` that acts for the recipient of message ``message_id``.

    ``contact_created`` is ``contact_stamp`` of the message's contact, None for an ad-hoc address.
    """
    if tenant_id < 1 or message_id < 1 or (contact_created is not None and contact_created < 0):
        raise ValueError("ids are positive")
    flags = 0
    body = bytearray((_KIND_CODES[kind], 0))
    body += _varint(tenant_id)
    body += _varint(int(now.timestamp()))
    body += _varint(message_id)
    if contact_created is not None:
        flags |= _HAS_CONTACT
        body += _varint(contact_created)
    if category is not None:
        raw = category.encode()
        if len(raw) > MAX_CATEGORY_BYTES:
            raise ValueError("category too long for a token")
        flags |= _HAS_CATEGORY
        body += _varint(len(raw)) + raw
    body[1] = flags
    return seal(secret, TOKEN_VERSION, bytes(body))


def _open(secret: str, token: str) -> tuple[int, bytes]:
    """The version and authenticated payload, or ``InvalidToken`` for anything this server did
    not issue."""
    return unseal(secret, token, versions=(V1, TOKEN_VERSION))


def unseal(
    secret: str,
    token: str,
    *,
    versions: tuple[int, ...],
    purpose: str = "token",
    max_chars: int = MAX_TOKEN_CHARS,
) -> tuple[int, bytes]:
    """The version and authenticated payload of a token ``seal`` made under ``purpose``, or
    ``InvalidToken`` for anything this server did not issue. Pure computation: no I/O."""
    if not token or len(token) > max_chars or not token.isascii():
        raise InvalidToken()
    try:
        sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken() from None
    if len(sealed) < 1 + TAG_BYTES + 4 or sealed[0] not in versions:
        raise InvalidToken()
    if base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii") != token:
        # The last character's unused bits: one token, one spelling.
        raise InvalidToken()
    version, tag, ciphertext = sealed[0], sealed[1 : 1 + TAG_BYTES], sealed[1 + TAG_BYTES :]
    mac_key, enc_key = _keys(secret, purpose)
    payload = _keystream_xor(enc_key, tag, ciphertext)
    if not hmac.compare_digest(tag, _tag(mac_key, version, payload)):
        raise InvalidToken()
    return version, payload


def _parse(version: int, payload: bytes) -> TokenClaims:
    kind = _KIND_NAMES[payload[0]]
    flags = payload[1]
    tenant_id, pos = _read_varint(payload, 2)
    issued, pos = _read_varint(payload, pos)
    message_id = contact_created = contact_id = None
    email = category = None
    if version == V1:
        if flags & _HAS_CONTACT:
            contact_id, pos = _read_varint(payload, pos)
        if flags & _HAS_EMAIL:
            raw, pos = _read_bytes(payload, pos)
            email = raw.decode()
        if (contact_id is None) == (email is None):
            raise ValueError("malformed payload")
    else:
        message_id, pos = _read_varint(payload, pos)
        if flags & _HAS_CONTACT:
            contact_created, pos = _read_varint(payload, pos)
    if flags & _HAS_CATEGORY:
        raw, pos = _read_bytes(payload, pos)
        category = raw.decode()
    if pos != len(payload):
        raise ValueError("malformed payload")
    return TokenClaims(
        kind=kind,
        tenant_id=tenant_id,
        message_id=message_id,
        contact_created=contact_created,
        contact_id=contact_id,
        email=email,
        category=category,
        issued_at=datetime.fromtimestamp(issued, UTC),
    )


def read_token(secret: str, token: str, *, kind: TokenKind, now: datetime) -> TokenClaims:
    """The claims of a token this server issued for ``kind``, still within its lifetime.

    Forged, altered, truncated, expired and wrong-kind tokens all raise ``InvalidToken``. Whether
    the message (or, for version 1, the contact) it names still answers is the caller's check:
    ``services/preferences.resolve``.
    """
    version, payload = _open(secret, token)
    try:
        claims = _parse(version, payload)
    except (KeyError, ValueError, IndexError):
        # Authentic but unparsable: only a bug or a future format could produce it.
        raise InvalidToken() from None
    if claims.kind != kind:
        raise InvalidToken()
    max_age = CONFIRM_MAX_AGE if kind == "confirm" else TOKEN_MAX_AGE
    if claims.issued_at + max_age < now or claims.issued_at > now + CLOCK_SKEW:
        raise InvalidToken("This link has expired.")
    return claims


def unsubscribe_url(public_url: str, token: str) -> str:
    """The one-click unsubscribe link (RFC 8058: POST here unsubscribes, GET confirms first)."""
    return f"{public_url.rstrip('/')}/u/{token}"


def preferences_url(public_url: str, token: str) -> str:
    """The page where a recipient chooses which categories of mail to receive."""
    return f"{public_url.rstrip('/')}/p/{token}"
