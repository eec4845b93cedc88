"""The sealed tokens of ``/o/{token}`` (open pixel) and ``/c/{token}`` (tracked link).

A tracked link must keep redirecting for as long as its mail may be read, even after the message
was purged, and must never redirect anywhere its mail did not point to (no open redirect). So
the token is self-contained: it carries the tenant, the message, the link's index and the
original URL, all authenticated under keys derived from the instance secret with labels of their
own (never the unsubscribe links' keys). Reading one is pure computation, so a forged or altered
token is refused before anything touches the database.

* The *message part* (kind, tenant, message) is sealed like the unsubscribe links
  (``tokens.seal``, the HMAC-SHA256 SIV construction, purpose "tracking"): it is encrypted, so a
  link tells nothing about which tenant or message it belongs to. A pixel or honeypot token is
  just that.
* A click token is ``{message part}.{link part}``: the link part is base64url of ``varint index |
  URL | tag`` where the 16-byte tag is HMAC-SHA256, under its own key, of the message part and
  everything before the tag. So changing the URL, the index, or moving a link part onto another
  message's part breaks the tag. The URL is authenticated but readable: it is where the link
  goes, no secret from whoever holds it. One sealed message part serves every link of a mail,
  so a tracked link costs one HMAC to make (``bench/bench_tracking.py --rewrite``).

Links whose URL is over ``MAX_URL_BYTES`` stay untracked rather than become URLs that some
clients cut (the token is about 4/3 of the URL plus 60 characters).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from tidings import tokens
from tidings.errors import InvalidToken

HitKind = Literal["open", "click", "honeypot"]

VERSION = 1
PURPOSE = "tracking"
#: A longer URL stays untracked: 1,500 bytes make a link of about 2,100 characters, near the
#: 2,048 some mail clients and proxies still cut links at.
MAX_URL_BYTES = 1500
MAX_TOKEN_CHARS = 2200  # longer input is refused before any decoding work
TAG_BYTES = 16
SEPARATOR = "."  # between the message part and the link part; never in base64url

_KIND_CODES: dict[str, int] = {"open": 1, "click": 2, "honeypot": 3}
_KIND_NAMES: dict[int, HitKind] = {1: "open", 2: "click", 3: "honeypot"}


@dataclass(frozen=True, slots=True)
class TrackedHit:
    """What a valid tracking token says."""

    kind: HitKind
    tenant_id: int
    message_id: int
    link_index: int | None  # clicks: the link's place in the mail (1 = first tracked link)
    url: str | None  # clicks: where the link goes, exactly as written in the mail


@lru_cache(maxsize=8)
def _link_key(secret: str) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC-SHA256's inner and outer states for the link parts' key, ready to ``copy()``: a C
    level copy, where ``hmac.HMAC.copy`` costs twice the whole MAC of a short message."""
    key = hmac.digest(secret.encode(), b"tidings/tracking/link/v1", "sha256").ljust(64, b"\0")
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in key)),
        hashlib.sha256(bytes(b ^ 0x5C for b in key)),
    )


def _link_tag(secret: str, data: bytes) -> bytes:
    inner_state, outer_state = _link_key(secret)
    inner = inner_state.copy()
    inner.update(data)
    outer = outer_state.copy()
    outer.update(inner.digest())
    return outer.digest()[:TAG_BYTES]


def message_part(secret: str, *, kind: HitKind, tenant_id: int, message_id: int) -> str:
    """The sealed (kind, tenant, message): a whole pixel or honeypot token, or the first half of
    every click token of one mail."""
    if tenant_id < 1 or message_id < 1:
        raise ValueError("ids are positive")
    # The 0: flags, none yet (and it keeps the payload over the sealed minimum of four bytes).
    body = bytearray((_KIND_CODES[kind], 0))
    body += tokens._varint(tenant_id)
    body += tokens._varint(message_id)
    return tokens.seal(secret, VERSION, bytes(body), purpose=PURPOSE)


def open_token(secret: str, *, tenant_id: int, message_id: int) -> str:
    return message_part(secret, kind="open", tenant_id=tenant_id, message_id=message_id)


def honeypot_token(secret: str, *, tenant_id: int, message_id: int) -> str:
    return message_part(secret, kind="honeypot", tenant_id=tenant_id, message_id=message_id)


def link_token(secret: str, part: str, *, link_index: int, url: str) -> str:
    """The click token of link ``link_index`` to ``url`` in the mail whose click ``message_part``
    is ``part``; ``ValueError`` for a URL too long to carry."""
    raw = url.encode()
    if len(raw) > MAX_URL_BYTES:
        raise ValueError("URL too long to track")
    if link_index < 1:
        raise ValueError("links count from 1")
    body = tokens._varint(link_index) + raw
    tag = _link_tag(secret, part.encode() + SEPARATOR.encode() + body)
    return part + SEPARATOR + base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode()


def click_token(secret: str, *, tenant_id: int, message_id: int, link_index: int, url: str) -> str:
    part = message_part(secret, kind="click", tenant_id=tenant_id, message_id=message_id)
    return link_token(secret, part, link_index=link_index, url=url)


def _read_message_part(secret: str, part: str) -> tuple[HitKind, int, int]:
    _, payload = tokens.unseal(
        secret, part, versions=(VERSION,), purpose=PURPOSE, max_chars=MAX_TOKEN_CHARS
    )
    try:
        kind = _KIND_NAMES[payload[0]]
        if payload[1] != 0:
            raise ValueError("unknown flags")
        tenant_id, pos = tokens._read_varint(payload, 2)
        message_id, pos = tokens._read_varint(payload, pos)
        if pos != len(payload):
            raise ValueError("malformed payload")
    except (KeyError, ValueError, IndexError):
        raise InvalidToken() from None  # authentic but unparsable: a bug or a future format
    return kind, tenant_id, message_id


def _read_link_part(secret: str, part: str, link: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(link + "=" * (-len(link) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken() from None
    if len(raw) < 1 + TAG_BYTES or not link.isascii():
        raise InvalidToken()
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != link:
        raise InvalidToken()  # one token, one spelling
    body, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
    expected = _link_tag(secret, part.encode() + SEPARATOR.encode() + body)
    if not hmac.compare_digest(tag, expected):
        raise InvalidToken()
    try:
        index, pos = tokens._read_varint(body, 0)
        return index, body[pos:].decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidToken() from None


def read(secret: str, token: str) -> TrackedHit:
    """The claims of a tracking token this server issued; anything else raises ``InvalidToken``.

    No I/O: the routes call it before anything else, so a forged token costs a few HMACs.
    """
    if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise InvalidToken()
    part, separator, link = token.partition(SEPARATOR)
    if separator:
        # The link part first: it is the cheaper check, and it binds the message part too.
        index, url = _read_link_part(secret, part, link)
        kind, tenant_id, message_id = _read_message_part(secret, part)
        if kind != "click":
            raise InvalidToken()
        return TrackedHit(kind, tenant_id, message_id, index, url)
    kind, tenant_id, message_id = _read_message_part(secret, part)
    if kind == "click":
        raise InvalidToken()  # a click's message part alone is no token
    return TrackedHit(kind, tenant_id, message_id, None, None)
