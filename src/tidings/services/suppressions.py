"""The tenant's suppression list: addresses that must not be mailed, each with why.

A suppression names an *address*, not a contact: it outlives a deleted contact, covers ad-hoc
transactional recipients, and is what the fan-out and the send-time screen
(``queue/compliance.py``) look up. Unsubscribes, hard bounces and complaints write here on their
own; tenants add and remove entries through the API (``manual`` by default).

Every automatic path goes through ``queue/suppress.py``, which also gives the contacts with the
address the status the reason stands for; an entry the tenant adds here does the same.

An erased person's entry (``services/erasure.py``) holds the keyed hash of the address instead of
the address (``address_hash.py``). The send-time screen matches hashes itself; where an address
comes back into the database (an import, a contact upsert), ``restore_erased`` turns its hashed
entry back into a plain one, so that the fan-out's join and every other plain look-up see it.

Removing an entry does not re-activate the contact: a contact marked ``unsubscribed``, ``bounced``
or ``complained`` stays so until the tenant changes its status, because those statuses carry the
same information and either one alone keeps bulk mail away.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tidings.address_hash import HASHED_PREFIX, hashed_address
from tidings.db.models import Suppression
from tidings.domain import SuppressionReason
from tidings.domain.addresses import InvalidAddress, normalize_address
from tidings.errors import InvalidInput, NotFound
from tidings.queue.suppress import MAX_DETAIL_LENGTH as MAX_DETAIL_LENGTH
from tidings.queue.suppress import follow
from tidings.services.pagination import Page, paginate

MAX_QUERY_LENGTH = 320  # characters: no address is longer


def clean_address(value: str, *, field: str = "email") -> str:
    """The address in its one stored form (as contacts and messages hold it)."""
    try:
        return normalize_address(value)
    except InvalidAddress as exc:
        raise InvalidInput(f"{field}: {exc}", field=field) from None


def _insert(session: Session) -> Any:
    """The dialect's INSERT, which knows ``ON CONFLICT``."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def list_suppressions(
    *,
    session: Session,
    tenant_id: int,
    limit: int,
    cursor: str | None,
    reason: SuppressionReason | None = None,
    q: str | None = None,
) -> Page[Suppression]:
    """Entries by id; ``q`` is a case-insensitive substring of the address."""
    query = select(Suppression).where(Suppression.tenant_id == tenant_id)
    if reason is not None:
        query = query.where(Suppression.reason == reason.value)
    if q:
        if len(q) > MAX_QUERY_LENGTH:
            raise InvalidInput(f"q is longer than {MAX_QUERY_LENGTH} characters", field="q")
        query = query.where(Suppression.email.icontains(q, autoescape=True))
    return paginate(session, query, Suppression.id, limit=limit, cursor=cursor)


def upsert_suppression(
    *,
    session: Session,
    tenant_id: int,
    email: str,
    reason: SuppressionReason,
    detail: str | None,
    now: datetime,
) -> tuple[Suppression, bool]:
    """The entry for ``email`` with this reason and detail, and whether it is new.

    An existing entry takes the new reason and detail (the tenant said so) but keeps its
    ``created_at``. Contacts with the address take the status the reason stands for, as on every
    other path (``queue/suppress.py``). ``ON CONFLICT DO NOTHING`` first, then an update: two requests for the same
    address at once end with one entry, never a unique-constraint error.
    """
    address = clean_address(email)
    if detail is not None and len(detail) > MAX_DETAIL_LENGTH:
        raise InvalidInput(f"detail is longer than {MAX_DETAIL_LENGTH} characters", field="detail")
    inserted = session.execute(
        _insert(session)(Suppression)
        .values(
            tenant_id=tenant_id, email=address, reason=reason.value, detail=detail, created_at=now
        )
        .on_conflict_do_nothing(index_elements=["tenant_id", "email"])
        .returning(Suppression.id)
    ).scalar_one_or_none()
    if inserted is None:
        session.execute(
            update(Suppression)
            .where(Suppression.tenant_id == tenant_id, Suppression.email == address)
            .values(reason=reason.value, detail=detail)
            .execution_options(synchronize_session=False)
        )
    follow(session, tenant_id=tenant_id, emails=[address], reason=reason, now=now)
    row = session.scalars(
        select(Suppression)
        .where(Suppression.tenant_id == tenant_id, Suppression.email == address)
        .execution_options(populate_existing=True)
    ).one()
    return row, inserted is not None


def delete_suppression(
    *, session: Session, tenant_id: int, email: str, address_key: bytes | None = None
) -> None:
    """Take ``email`` off the list; ``NotFound`` when it is not on it.

    A value that is not a valid address is looked up as given: it cannot be a stored form, so
    the answer is the same 404 as for any address that is not listed. With ``address_key``, the
    entry an erasure left for the address (its hash) goes too: the only way to lift it.
    """
    try:
        address = normalize_address(email)
    except InvalidAddress:
        address = email
    forms = [address]
    if address_key is not None and "@" in address:
        forms.append(hashed_address(address_key, tenant_id, address))
    removed = session.execute(
        delete(Suppression)
        .where(Suppression.tenant_id == tenant_id, Suppression.email.in_(forms))
        .returning(Suppression.id)
    ).all()
    if not removed:
        raise NotFound("that address is not on the suppression list")


#: ``email`` values of hashed entries sort between these two (``:`` + 1 is ``;``), so "does this
#: tenant have any" is a short range scan of the (tenant_id, email) unique index.
_HASHED_RANGE = (HASHED_PREFIX, HASHED_PREFIX[:-1] + ";")
RESTORE_BATCH = 5_000  # addresses hashed and looked up per statement


def has_erased(*, session: Session, tenant_id: int) -> bool:
    """Whether the tenant keeps any hashed (erased) entry; when not, nothing needs hashing."""
    low, high = _HASHED_RANGE
    found = session.scalar(
        select(Suppression.id)
        .where(
            Suppression.tenant_id == tenant_id,
            Suppression.email >= low,
            Suppression.email < high,
        )
        .limit(1)
    )
    return found is not None


def restore_erased(
    *, session: Session, tenant_id: int, addresses: Iterable[str], address_key: bytes
) -> int:
    """Turn the hashed entries of ``addresses`` (normalised) back into plain ones; how many.

    Called where an erased address comes back (an import, an upsert): from then on it is in the
    database again anyway, and every plain look-up (the fan-out's join, the import's) sees it.
    Costs one index probe when the tenant never erased anyone.
    """
    if not has_erased(session=session, tenant_id=tenant_id):
        return 0
    restored = 0
    batch: dict[str, str] = {}
    for address in addresses:
        batch[hashed_address(address_key, tenant_id, address)] = address
        if len(batch) >= RESTORE_BATCH:
            restored += _restore(session, tenant_id, batch)
            batch = {}
    if batch:
        restored += _restore(session, tenant_id, batch)
    return restored


def _restore(session: Session, tenant_id: int, batch: dict[str, str]) -> int:
    rows = session.execute(
        select(Suppression.id, Suppression.email).where(
            Suppression.tenant_id == tenant_id, Suppression.email.in_(list(batch))
        )
    ).all()
    for row_id, hashed in rows:
        address = batch[hashed]
        plain = session.scalar(
            select(Suppression.id).where(
                Suppression.tenant_id == tenant_id, Suppression.email == address
            )
        )
        if plain is not None:  # listed again meanwhile: that entry stands, the hash goes
            session.execute(delete(Suppression).where(Suppression.id == row_id))
        else:
            session.execute(
                update(Suppression)
                .where(Suppression.id == row_id)
                .values(email=address)
                .execution_options(synchronize_session=False)
            )
    return len(rows)
