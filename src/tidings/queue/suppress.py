"""Suppressing addresses, and the contact status that goes with it: one function for every path.

An unsubscribe (one-click, the preference centre), a hard bounce (an SMTP 5.1.x reply, a bounce
report, a provider's webhook), a complaint, and an entry the tenant adds with one of those reasons
all do the same two things in the caller's transaction:

* the address joins the tenant's suppression list, the protection that outlives a deleted contact
  and covers ad-hoc recipients; an address already listed keeps its reason (an unsubscribe never
  downgrades a complaint);
* the contacts with that address (or named by id: a person who unsubscribed through a link of a
  mail sent to an older address of theirs) take the status that reason stands for, so what the
  tenant sees says why the person gets no mail. A complaint outranks every status; a bounce or an
  unsubscribe only replaces ``active``, so that neither hides a complaint and a bounce does not
  overwrite an opt-out.

It lives in ``queue/`` because the worker records hard bounces itself and must not depend on the
service layer.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tidings.db.models import Contact, Suppression, table
from tidings.domain import ContactStatus, SuppressionReason

MAX_DETAIL_LENGTH = 2000  # characters

#: The contact status each automatic reason stands for, and the statuses it may replace.
STATUS_OF: dict[SuppressionReason, tuple[ContactStatus, frozenset[str]]] = {
    # ``pending`` (a sign-up not confirmed yet): its confirmation mail may bounce too.
    SuppressionReason.unsubscribe: (
        ContactStatus.unsubscribed,
        frozenset({ContactStatus.active.value, ContactStatus.pending.value}),
    ),
    SuppressionReason.hard_bounce: (
        ContactStatus.bounced,
        frozenset({ContactStatus.active.value, ContactStatus.pending.value}),
    ),
    SuppressionReason.complaint: (
        ContactStatus.complained,
        frozenset(s.value for s in ContactStatus if s is not ContactStatus.complained),
    ),
}


def suppress(
    session: Session,
    *,
    tenant_id: int,
    entries: Mapping[str, str | None],
    reason: SuppressionReason,
    now: datetime,
    contact_ids: Collection[int] = (),
) -> tuple[int, int]:
    """List the (normalised) addresses of ``entries`` (address -> detail: the server's reply, the
    report) and update their contacts' status; (entries added, contacts changed)."""
    rows = [
        {
            "tenant_id": tenant_id,
            "email": email,
            "reason": reason.value,
            "detail": detail[:MAX_DETAIL_LENGTH] if detail else None,
            "created_at": now,
        }
        for email, detail in entries.items()
    ]
    added = 0
    if rows:
        added = len(
            session.execute(
                _insert(session)(table(Suppression))
                .values(rows)
                .on_conflict_do_nothing(index_elements=["tenant_id", "email"])
                .returning(table(Suppression).c.id)
            ).all()
        )
    changed = follow(
        session,
        tenant_id=tenant_id,
        emails=list(entries),
        contact_ids=contact_ids,
        reason=reason,
        now=now,
    )
    return added, changed


def follow(
    session: Session,
    *,
    tenant_id: int,
    emails: Collection[str],
    reason: SuppressionReason,
    now: datetime,
    contact_ids: Collection[int] = (),
) -> int:
    """Give the contacts with these addresses or ids the status ``reason`` stands for (none for a
    ``manual`` entry); how many changed."""
    if reason not in STATUS_OF or not (emails or contact_ids):
        return 0
    status, replaces = STATUS_OF[reason]
    who = []
    if emails:
        who.append(Contact.email.in_(sorted(set(emails))))
    if contact_ids:
        who.append(Contact.id.in_(sorted(set(contact_ids))))
    result = session.execute(
        update(Contact)
        .where(Contact.tenant_id == tenant_id, or_(*who), Contact.status.in_(sorted(replaces)))
        .values(status=status.value, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
