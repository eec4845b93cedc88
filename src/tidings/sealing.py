"""Secrets kept at rest (DKIM private keys, relay passwords), sealed with AES-256-GCM.

A database dump or backup must not hand out a tenant's signing key or relay password, so those
columns hold ``v1.<base64url(nonce || ciphertext+tag)>`` instead of the secret. The key is derived
from ``TIDINGS_SECRET_KEY`` with HKDF-SHA256 under a label of its own, so it is independent of the
link-token keys derived from the same secret (``tokens.py``). Each sealed value is bound to its
*purpose* (for example ``"dkim:tenant=3:domain=mail.example.com"``) as associated data: a
ciphertext copied into another row or another tenant does not open there.

Rotating ``TIDINGS_SECRET_KEY`` makes every sealed value unreadable; ``unseal`` then says so
instead of returning garbage, because GCM authenticates.
"""

from __future__ import annotations

import base64
import binascii
import os
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tidings.errors import ConfigurationError

VERSION = "v1"
NONCE_BYTES = 12  # GCM's native nonce; random, so at most ~2^32 seals per key stay safe
_LABEL = b"tidings/sealing/v1"


@lru_cache(maxsize=8)
def _cipher(secret_key: str) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL).derive(
        secret_key.encode()
    )
    return AESGCM(key)


def seal(secret_key: str, plaintext: bytes, *, purpose: str) -> str:
    """``plaintext`` encrypted and authenticated, bound to ``purpose``; text safe for a column."""
    nonce = os.urandom(NONCE_BYTES)
    sealed = _cipher(secret_key).encrypt(nonce, plaintext, purpose.encode())
    return f"{VERSION}.{base64.urlsafe_b64encode(nonce + sealed).decode().rstrip('=')}"


def unseal(secret_key: str, sealed: str, *, purpose: str) -> bytes:
    """The plaintext of ``seal``; ``ConfigurationError`` when it was sealed under another secret
    key or purpose, or altered."""
    version, _, body = sealed.partition(".")
    if version != VERSION:
        raise ConfigurationError(f"unknown sealed-secret format {version!r}")
    try:
        raw = base64.urlsafe_b64decode((body + "=" * (-len(body) % 4)).encode())
    except (binascii.Error, ValueError) as exc:
        raise ConfigurationError("a sealed secret is damaged") from exc
    if len(raw) < NONCE_BYTES + 16:  # a nonce and a GCM tag at the least
        raise ConfigurationError("a sealed secret is damaged")
    nonce, ciphertext = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
    try:
        return _cipher(secret_key).decrypt(nonce, ciphertext, purpose.encode())
    except InvalidTag as exc:
        raise ConfigurationError(
            "a stored secret cannot be opened: it was sealed under another TIDINGS_SECRET_KEY "
            "(or altered); re-enter it"
        ) from exc
