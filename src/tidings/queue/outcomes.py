"""Recording what happened to claimed messages: one transaction per batch, fenced by the lease token.

Fencing: every write names the lease token the claim handed out and only touches rows still
``sending`` under that token. A worker that froze past its lease (and whose messages the reaper
has since given to another worker) comes back to find its token gone: its late result is
dropped instead of overwriting the newer attempt's. The check and the write are one step, so the
reaper cannot take a row between them: on PostgreSQL the batch's single ``UPDATE`` checks the
token in its ``WHERE`` under the row lock it takes; on SQLite the rows are read under the
database's write lock (``lock_leased``) and then written.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    Text,
    bindparam,
    case,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine

from tidings.db.models import Event, Message, table
from tidings.domain import BounceKind, EventType, MessageStatus, SuppressionReason
from tidings.queue.enqueue import requeue_status
from tidings.queue.suppress import suppress

MAX_ERROR_LENGTH = 2000  # characters of a server reply kept as last_error


@dataclass(frozen=True, slots=True)
class Decision:
    """The new state of one message after an attempt (computed by the worker, written here)."""

    message_id: int
    tenant_id: int
    campaign_id: int | None
    status: MessageStatus  # sent | queued (retry) | failed | dead
    event: EventType
    detail: str | None = None  # the server's reply, or why we gave up
    not_before: datetime | None = None  # for a retry
    provider_id: str | None = None
    message_id_header: str | None = None
    counts_as_attempt: bool = True  # False when the provider throttled us: not the message's fault
    suppress_email: str | None = None  # a hard bounce: never try this address again
    contact_id: int | None = None
    #: Sent, and the server's acceptance is the delivery (SMTP): ``delivered_at`` is set now. A
    #: provider that confirms deliveries later (Resend) sets it from its webhook instead.
    delivered: bool = False
    #: The receiving server refused the message (hard: for good, soft: for now); None otherwise.
    bounce: BounceKind | None = None


def record_outcomes(
    *,
    session: Session,
    token: str,
    decisions: Sequence[Decision],
    now: datetime,
    warnings: Mapping[int, str] | None = None,
) -> list[int]:
    """Write ``decisions`` for messages still leased under ``token``; returns the ids written.

    ``warnings`` (message id -> text) adds an ``unsigned`` event just before the ``sent`` event of
    a message sent without DKIM; nothing for a message not sent this time."""
    if not decisions:
        return []
    if session.get_bind().dialect.name == "postgresql":
        live = _write_batch(session, token, decisions, now)
        current = [d for d in decisions if d.message_id in live]
    else:
        live = lock_leased(session, token=token, ids=[d.message_id for d in decisions])
        current = [d for d in decisions if d.message_id in live]
        if current:
            _write_messages(session, token, current, now)
    if current:
        _write_events(session, current, now, warnings or {})
        _suppress(session, [d for d in current if d.suppress_email], now)
    return [d.message_id for d in current]


def lock_leased(session: Session, *, token: str, ids: Sequence[int]) -> set[int]:
    """Lock the messages of ``ids`` still leased under ``token``; returns their ids. A transaction
    that records outcomes takes these rows before any other (``domain_rates`` after them)."""
    return set(
        session.scalars(
            select(Message.id)
            .where(
                Message.id.in_(ids),
                Message.lease_token == token,
                Message.status == MessageStatus.sending.value,
            )
            .with_for_update()
        )
    )


#: What each decision sets, in the order of ``_row``, with each value's type.
_COLUMNS = (
    "mid",
    "new_status",
    "new_not_before",
    "attempt_increment",
    "new_error",
    "new_provider_id",
    "new_header",
    "new_sent_at",
    "new_delivered_at",
    "new_bounce",
)
_TYPES: tuple[TypeEngine[Any], ...] = (
    BigInteger(),
    String(),
    table(Message).c.not_before.type,
    Integer(),
    Text(),
    String(),
    String(),
    table(Message).c.sent_at.type,
    table(Message).c.delivered_at.type,
    String(),
)


def _outcome_update(new: Mapping[str, ColumnElement[Any]]) -> Update:
    """``UPDATE messages SET …`` from the decision's values ``new`` (by name in ``_COLUMNS``),
    for the rows still leased under ``:token``; the caller says which row each value is for."""
    messages = table(Message)
    return (
        update(messages)
        .where(messages.c.lease_token == bindparam("token"))
        .values(
            # A retry follows its campaign: paused or cancelled meanwhile, it must not go out.
            status=case(
                (new["new_status"] == MessageStatus.queued.value, requeue_status()),
                else_=new["new_status"],
            ),
            not_before=func.coalesce(new["new_not_before"], messages.c.not_before),
            attempts=messages.c.attempts + new["attempt_increment"],
            last_error=new["new_error"],
            provider_message_id=func.coalesce(
                new["new_provider_id"], messages.c.provider_message_id
            ),
            message_id_header=func.coalesce(new["new_header"], messages.c.message_id_header),
            sent_at=new["new_sent_at"],
            delivered_at=func.coalesce(new["new_delivered_at"], messages.c.delivered_at),
            # An accepted attempt ends an earlier soft bounce; a refusal replaces it; anything
            # else (a dropped connection, a timeout) leaves the last refusal standing.
            bounce=case(
                (new["new_status"] == MessageStatus.sent.value, None),
                else_=func.coalesce(new["new_bounce"], messages.c.bounce),
            ),
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
            updated_at=bindparam("now", type_=messages.c.updated_at.type),
        )
    )


#: SQLite: one statement per message (executemany), the rows locked by ``lock_leased`` first.
_UPDATE = _outcome_update(
    {name: bindparam(name, type_=kind) for name, kind in zip(_COLUMNS, _TYPES, strict=True)}
).where(table(Message).c.id == bindparam("mid"))


def _write_messages(
    session: Session, token: str, decisions: Sequence[Decision], now: datetime
) -> None:
    session.connection().execute(
        _UPDATE,
        [
            {**dict(zip(_COLUMNS, _row(d, now), strict=True)), "token": token, "now": now}
            for d in decisions
        ],
    )


def _batch_update() -> Update:
    """``UPDATE messages … FROM unnest(:arrays) AS outcome(…)``: the batch travels as one array
    per column, so the statement text is the same for every batch (compiled once, and prepared
    by the server); a ``VALUES`` list of literals would be compiled anew for each batch (it was
    a quarter of the worker's CPU)."""
    outcome = (
        func.unnest(
            *(
                bindparam(name, type_=ARRAY(kind))
                for name, kind in zip(_COLUMNS, _TYPES, strict=True)
            )
        )
        .table_valued(*_COLUMNS)
        .render_derived(name="outcome")
    )
    messages = table(Message)
    return (
        _outcome_update({name: outcome.c[name] for name in _COLUMNS})
        .where(
            messages.c.id == outcome.c.mid,
            messages.c.status == MessageStatus.sending.value,
        )
        .returning(messages.c.id)
    )


_BATCH_UPDATE = _batch_update()


def _write_batch(
    session: Session, token: str, decisions: Sequence[Decision], now: datetime
) -> set[int]:
    """PostgreSQL: the whole batch in one statement (``_batch_update``), fenced in its ``WHERE``
    (the row lock the update takes makes the check and the write one step, so no ``FOR UPDATE``
    read goes first). One statement instead of one per message: one round trip, and one run of
    the count triggers (migration 0014) for the batch. SQLite has no round trips to save, and
    no arrays: it keeps ``_write_messages``."""
    arrays = zip(*(_row(d, now) for d in decisions), strict=True)
    parameters = dict(zip(_COLUMNS, (list(a) for a in arrays), strict=True))
    return set(
        session.connection()
        .execute(_BATCH_UPDATE, {**parameters, "token": token, "now": now})
        .scalars()
    )


def _row(d: Decision, now: datetime) -> tuple[object, ...]:
    """A decision as the values ``_write_batch`` and ``_write_messages`` set."""
    return (
        d.message_id,
        d.status.value,
        d.not_before,
        1 if d.counts_as_attempt else 0,
        d.detail[:MAX_ERROR_LENGTH] if d.detail and d.status != MessageStatus.sent else None,
        d.provider_id,
        d.message_id_header,
        now if d.status == MessageStatus.sent else None,
        now if d.status == MessageStatus.sent and d.delivered else None,
        d.bounce.value if d.bounce is not None else None,
    )


def _write_events(
    session: Session, decisions: Sequence[Decision], now: datetime, warnings: Mapping[int, str]
) -> None:
    """One event per decision, plus ``bounced`` for a hard bounce (the reputation guardrails count
    those), and ``unsigned`` before the ``sent`` of a message that went without DKIM."""
    rows = [
        {
            "tenant_id": d.tenant_id,
            "message_id": d.message_id,
            "campaign_id": d.campaign_id,
            "type": EventType.unsigned.value,
            "detail": warnings[d.message_id][:MAX_ERROR_LENGTH],
            "created_at": now,
        }
        for d in decisions
        if d.status == MessageStatus.sent and d.message_id in warnings
    ]
    rows += [
        {
            "tenant_id": d.tenant_id,
            "message_id": d.message_id,
            "campaign_id": d.campaign_id,
            "type": event.value,
            "detail": d.detail[:MAX_ERROR_LENGTH] if d.detail else None,
            "created_at": now,
        }
        for d in decisions
        for event in ((d.event, EventType.bounced) if d.suppress_email else (d.event,))
    ]
    session.connection().execute(insert(table(Event)), rows)


def _suppress(session: Session, decisions: Sequence[Decision], now: datetime) -> None:
    """Hard bounces: the address joins the tenant's suppression list and the contact is ``bounced``."""
    by_tenant: defaultdict[int, list[Decision]] = defaultdict(list)
    for d in decisions:
        by_tenant[d.tenant_id].append(d)
    for tenant_id, bounced in sorted(by_tenant.items()):  # a fixed order: no lock-order deadlock
        suppress(
            session,
            tenant_id=tenant_id,
            entries={d.suppress_email: d.detail for d in bounced if d.suppress_email},
            reason=SuppressionReason.hard_bounce,
            now=now,
            contact_ids=[d.contact_id for d in bounced if d.contact_id is not None],
        )


def utc_from_epoch(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
