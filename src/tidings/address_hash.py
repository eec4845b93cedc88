"""The keyed hash that stands in for an erased address (GDPR erasure).

An erased person's address must leave the database, yet a later import of, or send to, the same
address must still be refused. So the address is replaced by ``HMAC-SHA256(k, tenant || address)``
under a key derived from ``TIDINGS_SECRET_KEY`` with a label of its own (independent of the link
token and sealing keys): without the secret, a dump does not let anyone test a guessed address,
and the tenant id in the message makes the same person's hash differ between tenants, so two
tenants' erasures cannot be linked. The address is case-folded first: an erasure holds whatever
capitalisation the address comes back in.

The stored form, ``erased:<64 hex>``, is never a valid address (no ``@``), so it can sit in the
columns that hold addresses (``suppressions.email``, ``messages.to_address``) without ever matching
a real one by accident. Rotating the secret makes old hashes unmatchable: erased addresses are then
no longer recognised when they come back.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

HASHED_PREFIX = "erased:"
_LABEL = b"tidings/erased-address/v1"


@lru_cache(maxsize=8)
def address_key(secret_key: str) -> bytes:
    """The erasure key of an instance secret (cached: derived once per process)."""
    return hmac.digest(secret_key.encode(), _LABEL, "sha256")


def hashed_address(key: bytes, tenant_id: int, address: str) -> str:
    """What stands for ``address`` of ``tenant_id`` once erased (the send-time screen computes
    one per claimed message: a copy of the keyed state skips the key schedule each time)."""
    mac = _keyed(key).copy()
    mac.update(f"{tenant_id}\x00{address.casefold()}".encode())
    return HASHED_PREFIX + mac.hexdigest()


@lru_cache(maxsize=8)
def _keyed(key: bytes) -> hmac.HMAC:
    return hmac.new(key, digestmod=hashlib.sha256)


def is_hashed(value: str) -> bool:
    return value.startswith(HASHED_PREFIX)
