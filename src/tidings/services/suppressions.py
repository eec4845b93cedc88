"""The tenant's suppression list: addresses that must not be mailed, each with why.

A suppression names an *address*, not a contact: it outlives a deleted contact, covers ad-hoc
transactional recipients, and is what the fan-out and the send-time screen
(``queue/compliance.py``) look up. Unsubscribes, hard bounces and complaints write here on their
own; tenants add and remove entries through the API (``manual`` by default).

Every automatic path goes through ``queue/suppress.py``, which also gives the contacts with the
address the status the reason stands for; an entry the tenant adds here does the same.

Removing an entry does not re-activate the contact: a contact marked ``unsubscribed``, ``bounced``
or ``complained`` stays so until the tenant changes its status, because those statuses carry the
same information and either one alone keeps bulk mail away.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

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


def delete_suppression(*, session: Session, tenant_id: int, email: str) -> None:
    """Take ``email`` off the list; ``NotFound`` when it is not on it.

    A value that is not a valid address is looked up as given: it cannot be a stored form, so
    the answer is the same 404 as for any address that is not listed.
    """
    try:
        address = normalize_address(email)
    except InvalidAddress:
        address = email
    removed = session.execute(
        delete(Suppression)
        .where(Suppression.tenant_id == tenant_id, Suppression.email == address)
        .returning(Suppression.id)
    ).all()
    if not removed:
        raise NotFound("that address is not on the suppression list")
