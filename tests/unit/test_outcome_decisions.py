"""What each transport outcome does to a message: sent, retried, throttled, failed, dead, suppressed."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from tidings.delivery.outcomes import PROVIDER_THROTTLE_PAUSE, decide, domain_feedback
from tidings.delivery.retry import RetryPolicy
from tidings.domain import EventType, MessageStatus
from tidings.domain.message import Permanent, Sent, Transient
from tidings.queue.claimed import Claim, ClaimedMessage
from tidings.queue.domain_rates import DomainFeedback

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
POLICY = RetryPolicy(60, 600, rng=random.Random(0))


def message(
    *, attempts: int = 0, ttl: float = 86400, to: str = "ann@example.test", tenant_id: int = 2
) -> ClaimedMessage:
    return ClaimedMessage(
        id=1,
        tenant_id=tenant_id,
        campaign_id=3,
        contact_id=4,
        to_address=to,
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
    assert d.not_before == NOW + timedelta(seconds=PROVIDER_THROTTLE_PAUSE)  # no slot known
    slot = NOW + timedelta(seconds=0.25)
    at_the_domains_slot = decide(
        message(),
        Transient("421 4.7.0 slow down", throttled=True),
        now=NOW,
        policy=POLICY,
        message_id_header="<m>",
        domain_slot=slot,
    )
    assert at_the_domains_slot.not_before == slot and not at_the_domains_slot.counts_as_attempt
    too_late = decide(
        message(ttl=0.1),
        Transient("421 4.7.0 slow down", throttled=True),
        now=NOW,
        policy=POLICY,
        message_id_header="<m>",
        domain_slot=slot,
    )
    assert too_late.status == MessageStatus.dead and not too_late.counts_as_attempt
    honoured = decide(
        message(),
        Transient("429", retry_after=7, throttled=True),
        now=NOW,
        policy=POLICY,
        message_id_header="<m>",
    )
    assert honoured.not_before == NOW + timedelta(seconds=7)


def test_a_batch_tells_each_domain_its_slow_downs_and_counts_successes_only_where_held_to_a_rate() -> (
    None
):
    claim = Claim(token="t", now=NOW, messages=[], adaptive=frozenset({(2, "slow.test")}))
    slow_down = Transient("421 4.7.0 slow down", throttled=True)
    results = [
        (message(to="a@Slow.Test"), Sent()),
        (message(to="b@slow.test"), Sent()),
        (message(to="c@slow.test", tenant_id=9), slow_down),  # another tenant's domain state
        (message(to="d@fast.test"), Sent()),  # not held to a rate: nothing to count
        (message(to="e@busy.test"), slow_down),
        (message(to="f@busy.test"), Transient("429", retry_after=7, throttled=True)),
        (message(to="g@busy.test"), Transient("429", retry_after=3, throttled=True)),
        (message(to="h@busy.test"), Transient("451 4.3.0 try later")),  # not a slow-down
        (message(to="i@slow.test"), Permanent("550 5.1.1 no such user")),
    ]
    admitted_at = NOW.timestamp()
    assert domain_feedback(claim, results) == [
        DomainFeedback(
            2, "busy.test", slowdowns=3, successes=0, admitted_at=admitted_at, retry_after=7
        ),
        DomainFeedback(2, "slow.test", slowdowns=0, successes=2, admitted_at=admitted_at),
        DomainFeedback(9, "slow.test", slowdowns=1, successes=0, admitted_at=admitted_at),
    ]
