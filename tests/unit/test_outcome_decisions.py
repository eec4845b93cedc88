"""What each transport outcome does to a message: sent, retried, throttled, failed, dead, suppressed."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from tidings.delivery.outcomes import PROVIDER_THROTTLE_PAUSE, decide
from tidings.delivery.retry import RetryPolicy
from tidings.domain import EventType, MessageStatus
from tidings.domain.message import Permanent, Sent, Transient
from tidings.queue.claimed import ClaimedMessage

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
POLICY = RetryPolicy(60, 600, rng=random.Random(0))


def message(*, attempts: int = 0, ttl: float = 86400) -> ClaimedMessage:
    return ClaimedMessage(
        id=1,
        tenant_id=2,
        campaign_id=3,
        contact_id=4,
        to_address="ann@example.test",
        template_id=None,
        subject="s",
        html=None,
        text="t",
        data=None,
        from_address=None,
        category=None,
        priority=5,
        attempts=attempts,
        expires_at=NOW + timedelta(seconds=ttl),
        idempotency_key=None,
    )


def test_sent_keeps_the_provider_id() -> None:
    d = decide(message(), Sent("q-1"), now=NOW, policy=POLICY, message_id_header="<m>")
    assert (d.status, d.event, d.provider_id, d.counts_as_attempt) == (
        MessageStatus.sent,
        EventType.sent,
        "q-1",
        True,
    )


def test_permanent_fails_at_once_and_a_hard_bounce_suppresses_the_address() -> None:
    soft = decide(
        message(), Permanent("554 5.7.1 rejected"), now=NOW, policy=POLICY, message_id_header="<m>"
    )
    hard = decide(
        message(),
        Permanent("550 5.1.1 no such user", hard_bounce=True),
        now=NOW,
        policy=POLICY,
        message_id_header="<m>",
    )
    assert soft.status == hard.status == MessageStatus.failed
    assert soft.suppress_email is None and hard.suppress_email == "ann@example.test"
    assert hard.detail == "550 5.1.1 no such user"


def test_transient_is_retried_later_and_counts_as_an_attempt() -> None:
    d = decide(
        message(attempts=1),
        Transient("451 4.3.0 later"),
        now=NOW,
        policy=POLICY,
        message_id_header="<m>",
    )
    assert (
        d.status == MessageStatus.queued and d.event == EventType.deferred and d.counts_as_attempt
    )
    assert d.not_before is not None and NOW + timedelta(
        seconds=60
    ) <= d.not_before <= NOW + timedelta(seconds=120)


def test_transient_past_the_time_to_live_is_dead_with_the_last_error() -> None:
    d = decide(
        message(attempts=4, ttl=10),
        Transient("451 busy"),
        now=NOW,
        policy=POLICY,
        message_id_header="<m>",
    )
    assert d.status == MessageStatus.dead
    assert d.detail is not None and "5 attempts" in d.detail and "451 busy" in d.detail


def test_provider_throttling_waits_without_spending_an_attempt() -> None:
    d = decide(
        message(),
        Transient("421 4.7.0 slow down", throttled=True),
        now=NOW,
        policy=POLICY,
        message_id_header="<m>",
    )
    assert (
        d.status == MessageStatus.queued
        and d.event == EventType.throttled
        and not d.counts_as_attempt
    )
    assert d.not_before == NOW + timedelta(seconds=PROVIDER_THROTTLE_PAUSE)
    honoured = decide(
        message(),
        Transient("429", retry_after=7, throttled=True),
        now=NOW,
        policy=POLICY,
        message_id_header="<m>",
    )
    assert honoured.not_before == NOW + timedelta(seconds=7)
