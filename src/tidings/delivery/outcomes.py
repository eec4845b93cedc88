"""What an attempt's outcome means for its message, and what a batch's outcomes say about each
recipient domain: pure functions, so every rule is testable alone."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from tidings.delivery.retry import RetryPolicy
from tidings.domain import BounceKind, EventType, MessageStatus
from tidings.domain.addresses import domain_of
from tidings.domain.message import Outcome, Permanent, Sent, Transient
from tidings.queue.claimed import Claim, ClaimedMessage
from tidings.queue.domain_rates import DomainFeedback
from tidings.queue.outcomes import Decision

#: How long a slow-down reply holds its message back when its domain's next slot is not known.
PROVIDER_THROTTLE_PAUSE = 30.0  # seconds


def decide(
    message: ClaimedMessage,
    outcome: Outcome,
    *,
    now: datetime,
    policy: RetryPolicy,
    message_id_header: str,
    domain_slot: datetime | None = None,
) -> Decision:
    """``domain_slot``: for a slow-down reply, when the recipient's domain admits its next message
    (its adaptive rate, just lowered, and any Retry-After)."""

    def decision(status: MessageStatus, event: EventType, **fields: Any) -> Decision:
        return Decision(
            message_id=message.id,
            tenant_id=message.tenant_id,
            campaign_id=message.campaign_id,
            contact_id=message.contact_id,
            message_id_header=message_id_header,
            status=status,
            event=event,
            **fields,
        )

    if isinstance(outcome, Sent):
        return decision(
            MessageStatus.sent,
            EventType.sent,
            provider_id=outcome.provider_id,
            delivered=not outcome.delivery_reported_later,
        )
    if isinstance(outcome, Permanent):
        suppress = message.to_address if outcome.hard_bounce else None
        return decision(
            MessageStatus.failed,
            EventType.failed,
            detail=outcome.reason,
            suppress_email=suppress,
            bounce=BounceKind.hard if outcome.bounce or outcome.hard_bounce else None,
        )
    soft = BounceKind.soft if outcome.bounce else None
    retry_at = _retry_at(message, outcome, now=now, policy=policy, domain_slot=domain_slot)
    # A provider rate limiting *us* is not the message's fault: that wait spends no attempt.
    counts = not outcome.throttled
    if retry_at is None:
        attempts = message.attempts + (1 if counts else 0)
        detail = f"gave up after {attempts} attempts (time to live ran out): {outcome.reason}"
        return decision(
            MessageStatus.dead, EventType.dead, detail=detail, counts_as_attempt=counts, bounce=soft
        )
    event = EventType.throttled if outcome.throttled else EventType.deferred
    return decision(
        MessageStatus.queued,
        event,
        detail=outcome.reason,
        not_before=retry_at,
        counts_as_attempt=counts,
        bounce=soft,
    )


def _retry_at(
    message: ClaimedMessage,
    outcome: Transient,
    *,
    now: datetime,
    policy: RetryPolicy,
    domain_slot: datetime | None,
) -> datetime | None:
    if outcome.throttled:
        if domain_slot is None:
            domain_slot = now + timedelta(seconds=outcome.retry_after or PROVIDER_THROTTLE_PAUSE)
        retry_at = max(domain_slot, now)
        return None if retry_at > message.expires_at else retry_at
    return policy.next_attempt_at(
        attempt=message.attempts + 1,
        now=now,
        expires_at=message.expires_at,
        retry_after=outcome.retry_after,
    )


def domain_feedback(
    claim: Claim, results: Sequence[tuple[ClaimedMessage, Outcome]]
) -> list[DomainFeedback]:
    """What the batch's replies say about each recipient domain's adaptive rate: its slow-down
    replies, and its successes when the domain was being held to a rate (only those climb)."""
    slowdowns: defaultdict[tuple[int, str], int] = defaultdict(int)
    successes: defaultdict[tuple[int, str], int] = defaultdict(int)
    retry_after: dict[tuple[int, str], float] = {}
    for message, outcome in results:
        key = (message.tenant_id, domain_of(message.to_address))
        if isinstance(outcome, Transient) and outcome.throttled:
            slowdowns[key] += 1
            if outcome.retry_after is not None:
                retry_after[key] = max(outcome.retry_after, retry_after.get(key, 0.0))
        elif isinstance(outcome, Sent) and key in claim.adaptive:
            successes[key] += 1
    return [
        DomainFeedback(
            tenant_id=tenant_id,
            domain=domain,
            slowdowns=slowdowns.get((tenant_id, domain), 0),
            successes=successes.get((tenant_id, domain), 0),
            admitted_at=claim.now.timestamp(),
            retry_after=retry_after.get((tenant_id, domain)),
        )
        for tenant_id, domain in sorted(slowdowns.keys() | successes.keys())
    ]
