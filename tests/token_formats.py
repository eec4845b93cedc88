"""Tokens as older versions of Tidings made them, to test that links in mail already sent work."""

from __future__ import annotations

from datetime import datetime

from tidings import tokens


def make_v1_token(
    secret: str,
    *,
    kind: tokens.TokenKind,
    tenant_id: int,
    contact_id: int | None,
    email: str | None,
    category: str | None,
    now: datetime,
) -> str:
    """A token as version 1 made them (before migration 0009), for the compatibility tests."""
    flags = 0
    body = bytearray((1 if kind == "unsubscribe" else 2, 0))
    body += tokens._varint(tenant_id) + tokens._varint(int(now.timestamp()))
    if contact_id is not None:
        flags |= 1
        body += tokens._varint(contact_id)
    if email is not None:
        flags |= 2
        body += tokens._varint(len(email.encode())) + email.encode()
    if category is not None:
        flags |= 4
        body += tokens._varint(len(category.encode())) + category.encode()
    body[1] = flags
    return tokens.seal(secret, tokens.V1, bytes(body))
