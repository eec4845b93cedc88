"""The flush: buffered hits become ``tracking_hits`` rows, classified, and each campaign's summary
(``campaign_engagement``, ``campaign_links``, ``campaign_timeline``) moves in the same
transaction, so the statistics can never disagree with the hits they count.

One flush is a fixed handful of statements whatever its size: the hits' messages (one ``IN``
read), what those messages saw before (one grouped read of their earlier hits, a row per link,
not per hit), one multi-row ``INSERT`` of the hits, and one multi-row upsert per summary table
(``ON CONFLICT … DO UPDATE SET n = n + excluded.n``: two flushes of two processes add up, neither
overwrites the other). Only one flush per process runs at a time (``hits.py``); flushes of two
processes may count the same message's first open twice if they race on it, a bounded error
(one per message and process) accepted to keep the request path free of database writes.

A hit whose message is gone (purged), names another tenant's message, or whose recipient was
erased (a hit still in a server's buffer when the erasure ran) is dropped: its link still
redirected, it records nothing.

The same transaction sets each message's ``first_opened_at``/``first_clicked_at`` (a person's
first open / click, one ``UPDATE`` per flush) and, for tenants with an endpoint subscribed to
``message.opened``/``message.clicked``, writes those webhooks' deliveries (one ``INSERT``; for
other tenants, one indexed read of their endpoints).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, case, false, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tidings.address_hash import HASHED_PREFIX
from tidings.db.models import (
    CampaignEngagement,
    CampaignLink,
    CampaignTimeline,
    Message,
    TrackingHit,
    table,
)
from tidings.queue.webhook_outbox import TrackingNotice, enqueue_tracking, tracking_subscribers
from tidings.tracking.classify import BURST_SECONDS, HitFacts, classify
from tidings.tracking.links import HitKind

HONEYPOT_INDEX = 0  # a honeypot hit is stored as a click on link 0 (real links count from 1)
MAX_AGENT = 512


@dataclass(frozen=True, slots=True)
class Hit:
    """One request to ``/o/`` or ``/c/`` with an authentic token, as the route saw it."""

    kind: HitKind
    tenant_id: int
    message_id: int
    link_index: int | None
    url: str | None
    at: datetime
    user_agent: str | None
    network: str | None  # the client's /24 or /48 (classify.client_network)


@dataclass(frozen=True, slots=True)
class Flushed:
    recorded: int  # hits written
    orphaned: int  # hits of messages gone, erased or not their tenant's: dropped
    machine: int  # of the recorded, a machine's


@dataclass(slots=True)
class _Seen:
    """What one message's hits so far tell the flush."""

    opened: bool = False  # a person opened it
    clicked: bool = False  # a person clicked in it
    links: set[int] = field(default_factory=set)  # links a person clicked
    last_click: dict[int, datetime] = field(default_factory=dict)  # each link's latest click


@dataclass(slots=True)
class _Totals:
    engagement: Counter[str] = field(default_factory=Counter)
    url: str | None = None  # links: the link's URL


@dataclass(slots=True)
class _Firsts:
    """Messages a person opened (clicked in) for the first time in this flush."""

    opened: set[int] = field(default_factory=set)
    clicked: set[int] = field(default_factory=set)


def _count(
    state: _Seen, kind: str, machine: bool, message_id: int, firsts: _Firsts
) -> Counter[str]:
    """The summary counts one hit adds, given what its message saw before (``state``, updated)."""
    name = "opens" if kind == "open" else "clicks"
    if machine:
        return Counter({f"{name}_machine": 1})
    counts = Counter({f"{name}_total": 1})
    if kind == "open" and not state.opened:
        counts["opens_unique"] = 1
        firsts.opened.add(message_id)
    elif kind == "click" and not state.clicked:
        counts["clicks_unique"] = 1
        firsts.clicked.add(message_id)
    state.opened = state.opened or kind == "open"
    state.clicked = state.clicked or kind == "click"
    return counts


def _notice(hit: Hit, message: Any, reason: str | None) -> TrackingNotice:
    """The webhook notice of ``hit`` (the honeypot's is a click on link 0, a machine's)."""
    return TrackingNotice(
        tenant_id=hit.tenant_id,
        event_type="message.opened" if hit.kind == "open" else "message.clicked",
        at=hit.at,
        message_id=hit.message_id,
        campaign_id=message.campaign_id,
        contact_id=message.contact_id,
        email=message.to_address,
        reference=message.reference,
        machine=reason is not None,
        machine_reason=reason,
        url=hit.url if hit.kind == "click" else None,
        link_index=HONEYPOT_INDEX if hit.kind == "honeypot" else hit.link_index,
    )


def _earlier(session: Session, message_ids: list[int]) -> dict[int, _Seen]:
    seen: dict[int, _Seen] = defaultdict(_Seen)
    rows = session.execute(
        select(
            TrackingHit.message_id,
            TrackingHit.kind,
            TrackingHit.link_index,
            TrackingHit.machine,
            func.max(TrackingHit.created_at),
        )
        .where(TrackingHit.message_id.in_(message_ids))
        .group_by(
            TrackingHit.message_id, TrackingHit.kind, TrackingHit.link_index, TrackingHit.machine
        )
    )
    for message_id, kind, link_index, machine, latest in rows:
        state = seen[message_id]
        if kind == "open":
            state.opened = state.opened or not machine
        elif link_index is not None and link_index != HONEYPOT_INDEX:
            if not machine:
                state.clicked = True
                state.links.add(link_index)
            previous = state.last_click.get(link_index)
            state.last_click[link_index] = latest if previous is None else max(previous, latest)
    return seen


def _bursts(hits: Sequence[Hit], seen: dict[int, _Seen]) -> dict[int, int]:
    """For each click of ``hits`` (by its position): how many different links of its message
    were clicked within ``BURST_SECONDS`` of it, itself included. A sliding window over each
    message's clicks in time order: linear, however many clicks a flood brings."""
    window = timedelta(seconds=BURST_SECONDS)
    by_message: dict[int, list[tuple[datetime, int, int | None]]] = defaultdict(list)
    for position, hit in enumerate(hits):
        if hit.kind == "click" and hit.link_index is not None:
            by_message[hit.message_id].append((hit.at, hit.link_index, position))
    found: dict[int, int] = {}
    for message_id, clicks in by_message.items():
        for link, latest in seen[message_id].last_click.items():
            clicks.append((latest, link, None))  # earlier flushes' latest click of each link
        clicks.sort(key=lambda c: c[0])
        inside: Counter[int] = Counter()
        low = high = 0
        for at, _, place in clicks:
            while high < len(clicks) and clicks[high][0] <= at + window:
                inside[clicks[high][1]] += 1
                high += 1
            while clicks[low][0] < at - window:
                inside[clicks[low][1]] -= 1
                if not inside[clicks[low][1]]:
                    del inside[clicks[low][1]]
                low += 1
            if place is not None:
                found[place] = len(inside)
    return found


def record_hits(session: Session, hits: Sequence[Hit], now: datetime) -> Flushed:
    """Write ``hits`` and move their campaigns' summaries; the caller commits."""
    if not hits:
        return Flushed(0, 0, 0)
    hits = sorted(hits, key=lambda h: h.at)
    message_ids = sorted({h.message_id for h in hits})
    messages = {
        row.id: row
        for row in session.connection().execute(
            select(
                Message.id,
                Message.tenant_id,
                Message.campaign_id,
                Message.sent_at,
                Message.first_opened_at,
                # for the open and click webhooks (to_address also tells an erased recipient)
                Message.contact_id,
                Message.to_address,
                Message.reference,
            ).where(Message.id.in_(message_ids))
        )
    }
    kept = [
        h
        for h in hits
        if (m := messages.get(h.message_id)) is not None
        and m.tenant_id == h.tenant_id
        and not m.to_address.startswith(HASHED_PREFIX)
    ]
    if not kept:
        return Flushed(0, len(hits), 0)
    seen = _earlier(session, sorted({h.message_id for h in kept}))
    for message_id in {h.message_id for h in kept}:
        # A person's open outlives its hit's purge: it is on the message (migration 0025).
        if messages[message_id].first_opened_at is not None:
            seen[message_id].opened = True
    bursts = _bursts(kept, seen)
    subscribers = tracking_subscribers(session, sorted({h.tenant_id for h in kept}))
    notices: list[TrackingNotice] = []
    rows: list[dict[str, Any]] = []
    engagement: dict[int, Counter[str]] = defaultdict(Counter)
    tenants: dict[int, int] = {}
    links: dict[tuple[int, int], _Totals] = defaultdict(_Totals)
    timeline: dict[tuple[int, datetime], Counter[str]] = defaultdict(Counter)
    machines = 0
    firsts = _Firsts()
    for position, hit in enumerate(kept):
        message = messages[hit.message_id]
        reason = classify(
            HitFacts(
                kind=hit.kind,
                at=hit.at,
                sent_at=message.sent_at,
                user_agent=hit.user_agent,
                network=hit.network,
                links_in_burst=bursts.get(position, 0),
            )
        )
        machine = reason is not None
        machines += machine
        if hit.tenant_id in subscribers:
            notices.append(_notice(hit, message, reason))
        kind = "open" if hit.kind == "open" else "click"
        index = HONEYPOT_INDEX if hit.kind == "honeypot" else hit.link_index
        rows.append(
            {
                "tenant_id": hit.tenant_id,
                "message_id": hit.message_id,
                "campaign_id": message.campaign_id,
                "kind": kind,
                "link_index": index,
                "machine": machine,
                "reason": reason,
                "user_agent": (hit.user_agent or None) and hit.user_agent[:MAX_AGENT],
                "network": hit.network,
                "created_at": hit.at,
            }
        )
        state = seen[hit.message_id]
        counts = _count(state, kind, machine, hit.message_id, firsts)
        campaign_id = message.campaign_id
        if campaign_id is None:
            continue  # a transactional message: its hits are kept, no campaign to sum into
        tenants[campaign_id] = hit.tenant_id
        engagement[campaign_id].update(counts)
        minute = hit.at.replace(second=0, microsecond=0)
        timeline[campaign_id, minute].update(
            {("opens" if kind == "open" else "clicks") + ("_machine" if machine else ""): 1}
        )
        if hit.kind == "click" and index is not None:
            link = links[campaign_id, index]
            link.url = link.url or hit.url
            if machine:
                link.engagement["clicks_machine"] += 1
            else:
                link.engagement["clicks_total"] += 1
                link.engagement["clicks_unique"] += index not in state.links
                state.links.add(index)
    session.execute(table(TrackingHit).insert(), rows)
    _mark_first(session, opened=firsts.opened, clicked=firsts.clicked)
    enqueue_tracking(session=session, subscribers=subscribers, notices=notices, now=now)
    _add(
        session,
        table(CampaignEngagement),
        ["campaign_id"],
        [
            {
                "campaign_id": c,
                "tenant_id": tenants[c],
                "updated_at": now,
                "unsubscribes": 0,
                **_zeros(ENGAGEMENT),
                **n,
            }
            for c, n in engagement.items()
        ],
        ENGAGEMENT,
        also={"updated_at": now},
    )
    _add(
        session,
        table(CampaignLink),
        ["campaign_id", "link_index"],
        [
            {
                "campaign_id": c,
                "link_index": i,
                "tenant_id": tenants[c],
                "url": totals.url or "",
                **_zeros(LINK_COUNTS),
                **totals.engagement,
            }
            for (c, i), totals in links.items()
        ],
        LINK_COUNTS,
    )
    _add(
        session,
        table(CampaignTimeline),
        ["campaign_id", "minute"],
        [
            {"campaign_id": c, "minute": m, "tenant_id": tenants[c], **_zeros(TIMELINE), **n}
            for (c, m), n in timeline.items()
        ],
        TIMELINE,
    )
    return Flushed(len(kept), len(hits) - len(kept), machines)


def _first(column: Any, kind: str, ids: set[int]) -> ColumnElement[Any]:
    """``column`` of a message among ``ids``: its earliest person's hit of ``kind`` if not set
    yet (the hits just written are in the transaction; earlier ones, if still kept, count too)."""
    earliest = (
        select(func.min(TrackingHit.created_at))
        .where(
            TrackingHit.message_id == Message.id,
            TrackingHit.kind == kind,
            TrackingHit.machine.is_(false()),
        )
        .scalar_subquery()
    )
    return case((and_(column.is_(None), Message.id.in_(sorted(ids))), earliest), else_=column)


def _mark_first(session: Session, *, opened: set[int], clicked: set[int]) -> None:
    """Set ``first_opened_at``/``first_clicked_at`` of the messages a person engaged with for the
    first time: one ``UPDATE`` per flush, whatever its size. A message already marked (by another
    process's flush, or before its hits were purged) keeps its first time."""
    if not opened and not clicked:
        return
    table_ = table(Message)
    session.execute(
        update(table_)
        .where(table_.c.id.in_(sorted(opened | clicked)))
        .values(
            first_opened_at=_first(Message.first_opened_at, "open", opened),
            first_clicked_at=_first(Message.first_clicked_at, "click", clicked),
        )
    )


ENGAGEMENT = (
    "opens_unique",
    "opens_total",
    "opens_machine",
    "clicks_unique",
    "clicks_total",
    "clicks_machine",
)
LINK_COUNTS = ("clicks_unique", "clicks_total", "clicks_machine")
TIMELINE = ("opens", "clicks", "opens_machine", "clicks_machine")


def _zeros(names: Sequence[str]) -> dict[str, int]:
    return dict.fromkeys(names, 0)


def _add(
    session: Session,
    target: Table,
    keys: list[str],
    rows: list[dict[str, Any]],
    counts: Sequence[str],
    also: dict[str, Any] | None = None,
) -> None:
    """Insert ``rows`` or add their ``counts`` to the rows already there, in one statement."""
    if not rows:
        return
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(target).values(rows)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=keys,
            set_={
                **{name: target.c[name] + statement.excluded[name] for name in counts},
                **(also or {}),
            },
        )
    )


def count_unsubscribe(session: Session, *, tenant_id: int, campaign_id: int, now: datetime) -> None:
    """One more unsubscribe through a link of the campaign's mail, in the caller's transaction
    (the one that records the unsubscribe)."""
    _add(
        session,
        table(CampaignEngagement),
        ["campaign_id"],
        [
            {
                "campaign_id": campaign_id,
                "tenant_id": tenant_id,
                "updated_at": now,
                **_zeros(ENGAGEMENT),
                "unsubscribes": 1,
            }
        ],
        ("unsubscribes",),
        also={"updated_at": now},
    )
