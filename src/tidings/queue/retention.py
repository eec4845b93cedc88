"""Retention: message bodies and events older than ``TIDINGS_RETENTION_DAYS`` are purged, a little
at a time, by the workers' maintenance.

**What goes.** The bodies (``subject``, ``html``, ``text``, ``data``) of messages created before the
cut-off that have ended (sent, failed, dead, cancelled, suppressed) are set to null; the rows stay,
because campaign figures are counts of messages by status (``services/campaigns.py``) and must not
change. Events created before the cut-off are deleted, except the audit of erasures
(``contact_erased``), and except the bounces, complaints and guardrail pauses of campaigns that
have not ended: the guardrails count those for as long as a campaign runs. Tracking hits (the
user agent and network of each open and click) are deleted too; a campaign's open and click
figures stay, because they are kept in its summary (``campaign_engagement``), not counted from
the hits.

**Without long locks.** Each table is walked in id order from a cursor kept in
``retention_cursors``: one transaction reads the next ``batch`` ids after the cursor, purges those
older than the cut-off by primary key, and moves the cursor, so a transaction touches at most
``batch`` rows and holds its locks for milliseconds. Ids grow with creation time, so the walk
stops at the first row younger than the cut-off and the next pass starts there; rows purged once
are never read again. A pass stops after its time budget and goes on at the next one. The
cursor row is locked for the batch (``SKIP LOCKED`` on PostgreSQL): two workers never purge the
same batch, the second one skips its turn. Between two batches the purge rests as long as the
batch took, so other writers get in (``RETENTION_REST``). A message still pending when the walk passes it (a
reminder scheduled further ahead than the retention period) keeps its body.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, not_, null, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from tidings.db.engine import transaction
from tidings.db.models import Campaign, Event, Message, RetentionCursor, TrackingHit
from tidings.domain import FINAL_MESSAGE_STATUSES, CampaignStatus, EventType
from tidings.queue.clock import db_now

RETENTION_BATCH = 1_000  # rows per transaction: milliseconds of locks
RETENTION_BUDGET = 1.0  # seconds of purging per maintenance pass
RETENTION_EVERY = 60.0  # seconds between two passes of one worker
#: After each batch the purge rests this many times as long as the batch took: on SQLite (one
#: writer at a time, and a waiting writer only retries now and then) back-to-back batches kept
#: every other writer out for the whole pass (927 ms of a 5,000-message purge); resting lets them
#: in between two batches. The purge runs at half speed, which background work can afford.
RETENTION_REST = 1.0
BODIES, EVENTS, HITS = "message_bodies", "events", "tracking_hits"
#: Kept whatever their age: the record that an erasure happened.
KEPT_EVENTS = (EventType.contact_erased.value,)
#: Events the guardrails count while a campaign has not ended (``queue/guardrails.py``).
SIGNAL_EVENTS = (
    EventType.bounced.value,
    EventType.complained.value,
    EventType.campaign_paused.value,
)
UNFINISHED_CAMPAIGNS = (
    CampaignStatus.running.value,
    CampaignStatus.paused.value,
    CampaignStatus.preparing.value,
)


@dataclass
class PurgeResult:
    bodies: int = 0  # messages whose body was purged
    events: int = 0  # events deleted
    hits: int = 0  # tracking hits deleted
    batches: int = 0  # transactions
    longest: float = 0.0  # seconds: the longest single transaction
    done: bool = True  # False: the budget ran out with more to purge
    durations: list[float] = field(default_factory=list)


def purge_expired(
    sessions: sessionmaker[Session],
    *,
    retention_days: int,
    batch: int = RETENTION_BATCH,
    budget: float = RETENTION_BUDGET,
    rest: float = RETENTION_REST,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PurgeResult:
    """Purge what is older than ``retention_days`` (0: nothing), batch after batch, until done
    or ``budget`` seconds have passed, resting ``rest`` times a batch's time after each."""
    result = PurgeResult()
    if retention_days <= 0:
        return result
    deadline = clock() + budget
    for target in TARGETS:
        while True:
            if clock() >= deadline:
                result.done = False
                return result
            started = clock()
            with transaction(sessions) as session:
                cutoff = db_now(session) - timedelta(days=retention_days)
                purged, finished = _purge_batch(session, target, cutoff, batch)
            took = clock() - started
            result.batches += 1
            result.longest = max(result.longest, took)
            result.durations.append(took)
            if target == BODIES:
                result.bodies += purged
            elif target == EVENTS:
                result.events += purged
            else:
                result.hits += purged
            if finished:
                break
            sleep(took * rest)
    return result


def _purge_batch(session: Session, target: str, cutoff: datetime, batch: int) -> tuple[int, bool]:
    """One batch of ``target``: (rows purged, whether the walk reached young rows or the end)."""
    cursor = _lock_cursor(session, target)
    if cursor is None:  # another worker is purging this table now
        return 0, True
    model = _MODELS[target]
    rows = session.execute(
        select(model.id, model.created_at)
        .where(model.id > cursor.last_id)
        .order_by(model.id)
        .limit(batch)
    ).all()
    old = 0
    while old < len(rows) and rows[old].created_at < cutoff:
        old += 1
    if old == 0:
        return 0, True
    upper = rows[old - 1].id
    in_batch = and_(model.id > cursor.last_id, model.id <= upper)
    purged = _PURGES[target](session, in_batch)
    session.execute(
        update(RetentionCursor)
        .where(RetentionCursor.name == target)
        .values(last_id=upper, updated_at=db_now(session))
    )
    return purged, old < len(rows) or len(rows) < batch


def _purge_bodies(session: Session, in_batch: ColumnElement[bool]) -> int:
    return int(
        session.execute(
            update(Message)
            .where(
                in_batch,
                Message.status.in_(sorted(s.value for s in FINAL_MESSAGE_STATUSES)),
                or_(
                    Message.subject.is_not(None),
                    Message.html.is_not(None),
                    Message.text.is_not(None),
                    Message.data.is_not(None),
                ),
            )
            .values(subject=None, html=None, text=None, data=null())
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        or 0
    )


def _purge_events(session: Session, in_batch: ColumnElement[bool]) -> int:
    counted = and_(
        Event.type.in_(SIGNAL_EVENTS),
        Event.campaign_id.in_(select(Campaign.id).where(Campaign.status.in_(UNFINISHED_CAMPAIGNS))),
    )
    return int(
        session.execute(
            delete(Event)
            .where(in_batch, Event.type.not_in(KEPT_EVENTS), not_(counted))
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        or 0
    )


def _lock_cursor(session: Session, name: str) -> RetentionCursor | None:
    """The table's cursor, created at 0 the first time, locked for this transaction; None when
    another transaction holds it (PostgreSQL; SQLite runs one writer at a time)."""
    dialect_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(
        dialect_insert(RetentionCursor)
        .values(name=name, last_id=0, updated_at=db_now(session))
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return session.scalar(
        select(RetentionCursor)
        .where(RetentionCursor.name == name)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )


def _purge_hits(session: Session, in_batch: ColumnElement[bool]) -> int:
    deleted = session.execute(
        delete(TrackingHit).where(in_batch).execution_options(synchronize_session=False)
    )
    return int(deleted.rowcount or 0)  # type: ignore[attr-defined]


#: The purged tables, in order, with what each purge does.
TARGETS = (BODIES, EVENTS, HITS)
_MODELS: dict[str, type[Message] | type[Event] | type[TrackingHit]] = {
    BODIES: Message,
    EVENTS: Event,
    HITS: TrackingHit,
}
_PURGES: dict[str, Callable[[Session, ColumnElement[bool]], int]] = {
    BODIES: _purge_bodies,
    EVENTS: _purge_events,
    HITS: _purge_hits,
}
