"""Reputation guardrails: a running campaign pauses itself when, after a minimum sample, its
hard-bounce rate or its complaint rate passes the configured limit (Gmail's complaint ceiling is
0.3 %). The pause is the ordinary one (the campaign's queued messages are held) with the reason in
``status_reason`` and a ``campaign_paused`` event, so the tenant's webhooks announce it.

Rates: hard bounces are messages with a ``bounced`` event (the worker's 5.1.x replies, DSNs and
provider reports; one message counts once however many reports name it) over attempts (``sent``
+ ``failed`` + ``dead``); complaints are messages with a ``complained`` event over ``sent``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.orm import Session

from tidings.db.models import Campaign, Event, Message
from tidings.domain import CampaignStatus, EventType, MessageStatus
from tidings.queue.enqueue import hold_campaign_messages

GUARDRAIL_PREFIX = "guardrail:"  # starts the detail of every pause the guardrails make

# The partial index ``ix_events_campaign_signal`` holds only these event types, so counting a
# campaign's bounces never reads its (many) ``sent`` events. Its predicate is repeated verbatim in
# every query meant to use it: SQLite uses a partial index only when the query's WHERE contains the
# index's condition term for term, and PostgreSQL proves the implication from the literal list.
# Keep it equal to the index's condition in ``db/models.py``.
SIGNAL_EVENTS_SQL = "type IN ('bounced', 'complained', 'campaign_paused')"
_SIGNAL_EVENTS = text("events." + SIGNAL_EVENTS_SQL)


@dataclass(frozen=True, slots=True)
class _Signals:
    bounced: int = 0  # messages with a hard-bounce event
    complained: int = 0  # messages with a complaint event
    guarded: bool = False  # the guardrail paused this campaign once already


def enforce_guardrails(
    *,
    session: Session,
    now: datetime,
    min_sample: int,
    bounce_rate: float,
    complaint_rate: float,
) -> list[int]:
    """Pause each running campaign whose hard-bounce or complaint rate passed its limit; their ids.

    Cheap enough for every maintenance pass: one grouped count over the small partial index of
    signal events joined to the running campaigns; attempts are counted only for the few
    campaigns that could have passed a limit (with ``attempts >= min_sample``, a bounce rate over
    the limit needs more than ``bounce_rate * min_sample`` bounces; a complaint rate needs one).

    The guardrail pauses a campaign once. If the tenant resumes it, that is an informed decision:
    the rates do not change by resuming, so pausing again would undo it within a second.
    """
    signals = _campaign_signals(session)
    candidates = sorted(
        campaign_id
        for campaign_id, s in signals.items()
        # >= rather than >: a superset, whatever the float rounding of the product.
        if not s.guarded and (s.bounced >= bounce_rate * min_sample or s.complained > 0)
    )
    if not candidates:
        return []
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    for campaign_id, status, count in session.execute(
        select(Message.campaign_id, Message.status, func.count())
        .where(
            Message.campaign_id.in_(candidates),
            Message.status.in_(
                (MessageStatus.sent.value, MessageStatus.failed.value, MessageStatus.dead.value)
            ),
        )
        .group_by(Message.campaign_id, Message.status)
    ):
        assert campaign_id is not None  # the query filters on it
        counts[campaign_id][status] = count
    paused: list[int] = []
    for campaign_id in candidates:
        by_status = counts[campaign_id]
        sent = by_status.get(MessageStatus.sent.value, 0)
        attempts = sum(by_status.values())
        if attempts < min_sample:
            continue
        reason = _tripped(signals[campaign_id], sent, attempts, bounce_rate, complaint_rate)
        if reason is not None and _pause(session, campaign_id, reason, now):
            paused.append(campaign_id)
    return paused


def _campaign_signals(session: Session) -> dict[int, _Signals]:
    rows = session.execute(
        select(
            Event.campaign_id,
            Event.type,
            func.count(func.distinct(Event.message_id)),
            func.count(Event.id),
        )
        .join(
            Campaign, (Campaign.id == Event.campaign_id) & (Campaign.tenant_id == Event.tenant_id)
        )
        .where(
            Campaign.status == CampaignStatus.running.value,
            _SIGNAL_EVENTS,
            or_(
                Event.type.in_((EventType.bounced.value, EventType.complained.value)),
                Event.detail.startswith(GUARDRAIL_PREFIX, autoescape=True),
            ),
        )
        .group_by(Event.campaign_id, Event.type)
    )
    found: dict[int, dict[str, int]] = defaultdict(dict)
    for campaign_id, kind, messages, events in rows:
        assert campaign_id is not None  # the join needs it
        found[campaign_id][kind] = events if kind == EventType.campaign_paused.value else messages
    return {
        campaign_id: _Signals(
            bounced=kinds.get(EventType.bounced.value, 0),
            complained=kinds.get(EventType.complained.value, 0),
            guarded=kinds.get(EventType.campaign_paused.value, 0) > 0,
        )
        for campaign_id, kinds in found.items()
    }


def _tripped(
    signals: _Signals, sent: int, attempts: int, bounce_limit: float, complaint_limit: float
) -> str | None:
    """The reason to pause, naming the rate, or None."""
    if attempts and signals.bounced / attempts > bounce_limit:
        return (
            f"{GUARDRAIL_PREFIX} hard-bounce rate {signals.bounced / attempts:.1%} "
            f"({signals.bounced} of {attempts} attempts) passed the limit of {bounce_limit:.1%}"
        )
    if sent and signals.complained / sent > complaint_limit:
        return (
            f"{GUARDRAIL_PREFIX} complaint rate {signals.complained / sent:.2%} "
            f"({signals.complained} of {sent} delivered) passed the limit of {complaint_limit:.2%}"
        )
    return None


def _pause(session: Session, campaign_id: int, reason: str, now: datetime) -> bool:
    """Running -> paused, as ``services.campaigns.pause_campaign`` does; False if no longer running.

    The conditional UPDATE makes it safe with several workers and a tenant acting at once: exactly
    one of them moves the campaign, and only that one holds its messages and records the event.
    """
    tenant_id = session.scalar(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.running.value)
        .values(status=CampaignStatus.paused.value, status_reason=reason)
        .returning(Campaign.tenant_id)
        .execution_options(synchronize_session=False)
    )
    if tenant_id is None:
        return False
    hold_campaign_messages(session=session, campaign_id=campaign_id, now=now)
    session.add(
        Event(
            tenant_id=tenant_id,
            campaign_id=campaign_id,
            type=EventType.campaign_paused.value,
            detail=reason,
            created_at=now,
        )
    )
    return True
