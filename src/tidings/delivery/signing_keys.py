"""Each tenant's DKIM signing keys, as a worker needs them: read, unsealed and parsed rarely.

A batch asks for the keys of its tenants while it reads its context (``compose.load_context``);
a tenant's keys are read again once they are ``KEY_TTL_SECONDS`` old, so a domain verified,
rotated or deleted through the API signs (or stops signing) within that time, in every worker,
with no message between processes. Parsing a 2048-bit RSA key costs ~40 ms (``cryptography``
checks it), so a parsed key is kept for as long as its sealed text is unchanged.

A key that cannot be opened (sealed under another ``TIDINGS_SECRET_KEY``, damaged) is logged and
left out: that domain's mail goes unsigned, with the warning event, and is never held back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidings import sealing
from tidings.db.models import SenderDomain
from tidings.domain.addresses import covering_domains
from tidings.domain.message import DkimKey, SigningKey
from tidings.transports.dkim_sign import load_private_pem, seal_purpose

log = logging.getLogger("tidings.dkim")

KEY_TTL_SECONDS = 60.0  # a tenant's keys are read again after this long
MAX_PARSED_KEYS = 1000  # parsed keys kept; past it the cache starts over


@dataclass(frozen=True, slots=True)
class TenantKeys:
    """One tenant's signing keys by domain (ASCII, lower-case)."""

    by_domain: Mapping[str, DkimKey]
    #: Whether the tenant has any sender domain at all, verified or not. One that has none chose
    #: to send without DKIM: its mail is not flagged, and costs no warning event per message.
    has_domains: bool = False

    def for_sender(self, from_address: str) -> DkimKey | None:
        """The key of the From's domain, else of its closest parent domain that has one."""
        if not self.by_domain:  # most tenants: no address to parse for every message
            return None
        for name in covering_domains(from_address):
            key = self.by_domain.get(name)
            if key is not None:
                return key
        return None


NO_KEYS = TenantKeys({})


class SigningKeys:
    """The per-process cache; thread-safe (batches read their context in threads)."""

    def __init__(
        self,
        secret_key: str,
        *,
        ttl: float = KEY_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secret = secret_key
        self._ttl = ttl
        self._clock = clock
        self._tenants: dict[int, tuple[float, TenantKeys]] = {}  # tenant -> (read at, keys)
        self._parsed: dict[str, SigningKey] = {}  # sealed text -> key
        self._lock = threading.Lock()

    def for_tenants(self, session: Session, tenant_ids: Iterable[int]) -> dict[int, TenantKeys]:
        now = self._clock()
        wanted = set(tenant_ids)
        with self._lock:
            stale = sorted(
                t
                for t in wanted
                if t not in self._tenants or now - self._tenants[t][0] >= self._ttl
            )
        if stale:
            fresh = self._read(session, stale)
            with self._lock:
                for tenant_id in stale:
                    self._tenants[tenant_id] = (now, fresh.get(tenant_id, NO_KEYS))
        with self._lock:
            return {t: self._tenants[t][1] for t in wanted}

    def _read(self, session: Session, tenant_ids: list[int]) -> dict[int, TenantKeys]:
        rows = session.connection().execute(
            select(
                SenderDomain.tenant_id,
                SenderDomain.domain,
                SenderDomain.status,
                SenderDomain.selector,
                SenderDomain.algorithm,
                SenderDomain.private_key,
                SenderDomain.previous_verified,
                SenderDomain.previous_selector,
                SenderDomain.previous_algorithm,
                SenderDomain.previous_private_key,
            ).where(SenderDomain.tenant_id.in_(tenant_ids))
        )
        found: dict[int, dict[str, DkimKey]] = {}
        for row in rows:
            found.setdefault(row.tenant_id, {})
            # The current key once verified; while a rotation waits for its record, the previous
            # key if it was verified (services/domains.py, "Rotation").
            if row.status == "verified":
                selector, algorithm, sealed = row.selector, row.algorithm, row.private_key
            elif row.previous_verified and row.previous_private_key:
                selector = row.previous_selector
                algorithm = row.previous_algorithm
                sealed = row.previous_private_key
            else:
                continue
            private = self._open(row.tenant_id, row.domain, sealed)
            if private is not None:
                found.setdefault(row.tenant_id, {})[row.domain] = DkimKey(
                    domain=row.domain, selector=selector, algorithm=algorithm, private_key=private
                )
        return {tenant_id: TenantKeys(keys, has_domains=True) for tenant_id, keys in found.items()}

    def _open(self, tenant_id: int, domain: str, sealed: str) -> SigningKey | None:
        with self._lock:
            cached = self._parsed.get(sealed)
        if cached is not None:
            return cached
        try:
            pem = sealing.unseal(self._secret, sealed, purpose=seal_purpose(tenant_id, domain))
            key = load_private_pem(pem)
        except Exception as exc:
            log.warning(
                "the DKIM key of %s (tenant %d) cannot be opened, its mail goes unsigned: %s",
                domain,
                tenant_id,
                exc,
            )
            return None
        with self._lock:
            if len(self._parsed) >= MAX_PARSED_KEYS:
                self._parsed.clear()
            self._parsed[sealed] = key
        return key
