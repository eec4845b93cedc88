"""What an attempt's outcome means for its message: a pure function, so every rule is testable alone."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tidings.delivery.retry import RetryPolicy
from tidings.domain import EventType, MessageStatus
from tidings.domain.message import Outcome, Permanent, Sent, Transient
from tidings.queue.claimed import ClaimedMessage
from tidings.queue.outcomes import Decision

#: How long a tenant is held back when the provider says "slow down" without a Retry-After.
PROVIDER_THROTTLE_PAUSE = 30.0  # seconds


def decide(
    message: ClaimedMessage,
    outcome: Outcome,
    *,
    now: datetime,
    policy: RetryPolicy,
    message_id_header: str,
) -> Decision:
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
        return decision(MessageStatus.sent, EventType.sent, provider_id=outcome.provider_id)
    if isinstance(outcome, Permanent):
        suppress = message.to_address if outcome.hard_bounce else None
        return decision(
            MessageStatus.failed, EventType.failed, detail=outcome.reason, suppress_email=suppress
        )
    retry_at = _retry_at(message, outcome, now=now, policy=policy)
    # A provider rate limiting *us* is not the message's fault: that wait spends no attempt.
    counts = not outcome.throttled
    if retry_at is None:
        attempts = message.attempts + (1 if counts else 0)
        detail = f"gave up after {attempts} attempts (time to live ran out): {outcome.reason}"
        return decision(MessageStatus.dead, EventType.dead, detail=detail, counts_as_attempt=counts)
    event = EventType.throttled if outcome.throttled else EventType.deferred
    return decision(
        MessageStatus.queued,
        event,
        detail=outcome.reason,
        not_before=retry_at,
        counts_as_attempt=counts,
    )


def _retry_at(
    message: ClaimedMessage, outcome: Transient, *, now: datetime, policy: RetryPolicy
) -> datetime | None:
    if outcome.throttled:
        retry_at = now + timedelta(seconds=outcome.retry_after or PROVIDER_THROTTLE_PAUSE)
        return None if retry_at > message.expires_at else retry_at
    return policy.next_attempt_at(
        attempt=message.attempts + 1,
        now=now,
        expires_at=message.expires_at,
        retry_after=outcome.retry_after,
    )
