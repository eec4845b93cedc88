"""Tenants and their API keys. A key is shown once; only its SHA-256 and a short prefix are stored.

Keys look like ``td_<prefix>_<secret>``: the prefix finds the row with one indexed look-up, the
hash of the whole key is compared in constant time. SHA-256 (not a slow password hash) is right
here because the secret has 256 bits of entropy: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidings.db.models import ApiKey, Tenant, Throttle
from tidings.domain import Role
from tidings.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from tidings.services.pagination import Page, paginate

KEY_SCHEME = "td"
PREFIX_BYTES = 6  # 12 hex characters: shown in lists, unique
SECRET_BYTES = 32
MAX_NAME_LENGTH = 200


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant every query is scoped to, and what the key may do."""

    tenant_id: int
    key_id: int
    role: Role


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    secret: str  # the whole key; shown to the caller once, never stored


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class PrincipalCache:
    """Keys that authenticated in the last few seconds, so that a client's every request does not
    look its key up again (one statement of the handful a ``POST /v1/messages`` makes).

    The trade-off, and its bound: a key revoked by another process (the CLI, another API process)
    is still accepted here for up to ``ttl`` seconds; the process that revokes it forgets it at
    once (``forget``). Failures are never cached. Entries are keyed by the key's hash, never by
    the key itself.
    """

    def __init__(self, *, ttl: float = 5.0, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Principal, float]] = {}  # hash -> (principal, expiry)

    def get(self, secret: str) -> Principal | None:
        entry = self._entries.get(_hash(secret))
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, secret: str, principal: Principal) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # crude, and rare: a cache miss costs one look-up
        self._entries[_hash(secret)] = (principal, time.monotonic() + self.ttl)

    def forget(self, key_id: int) -> None:
        for digest, (principal, _) in list(self._entries.items()):
            if principal.key_id == key_id:
                self._entries.pop(digest, None)


def _clean_name(name: str, field: str = "name") -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH or any(ord(c) < 32 for c in name):
        raise InvalidInput(
            f"{field} must be 1 to {MAX_NAME_LENGTH} printable characters", field=field
        )
    return name


def create_tenant(*, session: Session, name: str, now: datetime) -> tuple[Tenant, IssuedKey]:
    """A tenant with its first admin key (the only way in)."""
    name = _clean_name(name)
    if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise Conflict(f"a tenant named {name!r} already exists", field="name")
    tenant = Tenant(name=name, created_at=now)
    session.add(tenant)
    session.flush()
    session.add(Throttle(tenant_id=tenant.id, enabled=False, updated_at=now))
    issued = create_key(
        session=session, tenant_id=tenant.id, name="admin", role=Role.admin, now=now
    )
    return tenant, issued


def list_tenants(*, session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.id)))


def get_tenant_by_name(*, session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise NotFound(f"no tenant named {name!r}", field="tenant")
    return tenant


def create_key(
    *, session: Session, tenant_id: int, name: str, role: Role, now: datetime
) -> IssuedKey:
    name = _clean_name(name)
    prefix = secrets.token_hex(PREFIX_BYTES)
    secret = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    key = ApiKey(
        tenant_id=tenant_id,
        name=name,
        role=role.value,
        prefix=prefix,
        key_hash=_hash(secret),
        created_at=now,
    )
    session.add(key)
    session.flush()
    return IssuedKey(key=key, secret=secret)


def list_keys(*, session: Session, tenant_id: int, limit: int, cursor: str | None) -> Page[ApiKey]:
    query = select(ApiKey).where(ApiKey.tenant_id == tenant_id)
    return paginate(session, query, ApiKey.id, limit=limit, cursor=cursor)


def revoke_key(*, session: Session, tenant_id: int, key_id: int, now: datetime) -> ApiKey:
    key = session.scalar(select(ApiKey).where(ApiKey.tenant_id == tenant_id, ApiKey.id == key_id))
    if key is None:
        raise NotFound("no such API key")
    if key.revoked_at is None:
        key.revoked_at = now
    return key


def authenticate(*, session: Session, secret: str) -> Principal:
    """The principal for a presented key; unknown, malformed and revoked keys look the same."""
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME:
        raise Unauthenticated()
    # Columns, not the entity: this runs on every request, and loading an ORM object costs more.
    key = session.execute(
        select(ApiKey.id, ApiKey.tenant_id, ApiKey.role, ApiKey.revoked_at, ApiKey.key_hash).where(
            ApiKey.prefix == parts[1]
        )
    ).first()
    if (
        key is None
        or key.revoked_at is not None
        or not hmac.compare_digest(key.key_hash, _hash(secret))
    ):
        raise Unauthenticated()
    return Principal(tenant_id=key.tenant_id, key_id=key.id, role=Role(key.role))
