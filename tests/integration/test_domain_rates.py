"""Adaptive per-domain rates on both databases: a slow-down reply lowers one domain's rate in the
outcome's transaction, the claim holds that domain (and only it) to the rate, successes raise it,
many workers at once lose no update, and a quiet domain is forgotten."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from tests.conftest import TenantKeys
from tests.integration.test_queue import claim, enqueue
from tidings.db.engine import transaction
from tidings.db.models import DomainRate, Event, Message, Throttle
from tidings.delivery.adaptive import (
    FORGET_SECONDS,
    START_RATE,
    RateState,
    slow_down,
    speed_up,
)
from tidings.delivery.throttle import REFILL
from tidings.delivery.worker import Worker
from tidings.domain.message import Outcome, Sent, Transient
from tidings.queue.claimed import Claim
from tidings.queue.clock import db_now
from tidings.queue.domain_rates import (
    DomainFeedback,
    forget_quiet_domains,
    record_feedback,
    state_of,
)
from tidings.runtime import Runtime
from tidings.transports.memory import MemoryTransport

SLOW_DOWN = Transient("421 4.7.0 slow down", throttled=True)


def record(runtime: Runtime, batch: Claim, outcome_of: dict[str, Outcome]) -> int:
    """The worker's outcome transaction for ``batch``: each message's outcome by its domain."""
    worker = Worker(runtime=runtime, transport=MemoryTransport())
    results = [(m, outcome_of.get(m.to_address.rpartition("@")[2], Sent())) for m in batch.messages]
    return worker._record(batch, results)


def rates(runtime: Runtime) -> dict[tuple[int, str], DomainRate]:
    with runtime.sessions() as session:
        return {(r.tenant_id, r.domain): r for r in session.scalars(select(DomainRate))}


def slow_domain(runtime: Runtime, tenant_id: int, domain: str, **feedback: object) -> datetime:
    """Record a first slow-down reply from ``domain``; returns the database's time of it."""
    with transaction(runtime.sessions) as session:
        now = db_now(session)
        values: dict[str, object] = {"slowdowns": 1, "successes": 0}
        values.update(feedback)
        record_feedback(
            session=session,
            feedback=[
                DomainFeedback(tenant_id, domain, admitted_at=now.timestamp(), **values)  # type: ignore[arg-type]
            ],
            now=now,
        )
        return now


def test_a_slow_down_reply_lowers_only_that_domains_rate_and_pauses_nobody(
    runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    slow = enqueue(runtime, acme.tenant_id, 3, prefix="s", domain="slow.test")
    enqueue(runtime, acme.tenant_id, 3, prefix="f", domain="fast.test")
    enqueue(runtime, globex.tenant_id, 2, prefix="g", domain="slow.test")
    batch = claim(runtime, 100)
    assert len(batch.messages) == 8
    worker = Worker(runtime=runtime, transport=MemoryTransport())
    results = [
        (m, SLOW_DOWN if m.id in slow else Sent()) for m in batch.messages
    ]  # globex's slow.test mail was accepted: that domain answers each sender for itself
    assert worker._record(batch, results) == 8

    [(key, row)] = rates(runtime).items()
    assert key == (acme.tenant_id, "slow.test")
    assert (row.rate, row.slowed_from, row.state) == (START_RATE, 2 * START_RATE, "backing_off")
    with runtime.sessions() as session:
        refused = session.scalars(select(Message).where(Message.id.in_(slow))).all()
        throttle = session.get(Throttle, acme.tenant_id)
        events = session.scalars(select(Event.type).where(Event.message_id.in_(slow))).all()
    assert {(m.status, m.attempts) for m in refused} == {("queued", 0)}  # no attempt spent
    slot = datetime.fromtimestamp(row.tat, UTC)
    assert {m.not_before for m in refused} == {slot}  # the domain's next slot
    assert batch.now < slot <= batch.now + timedelta(seconds=5)
    assert set(events) == {"throttled"}
    assert throttle is None or throttle.blocked_until == 0.0  # the tenant is not paused
    # The tenant's other mail goes at once, all of it; the refused mail waits for its slot.
    more = enqueue(runtime, acme.tenant_id, 20, prefix="m", domain="fast.test")
    assert set(more) <= {m.id for m in claim(runtime, 100).messages}


def test_the_claim_holds_a_slowed_domain_to_its_rate_and_no_other(
    runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    slow_domain(runtime, acme.tenant_id, "slow.test")
    with transaction(runtime.sessions) as session:  # lowered to 1 a minute, its next slot has come
        session.execute(update(DomainRate).values(rate=1 / 60, tat=0.0))
    held = enqueue(runtime, acme.tenant_id, 10, prefix="s", domain="slow.test")
    free = enqueue(runtime, acme.tenant_id, 10, prefix="f", domain="fast.test")
    other = enqueue(runtime, globex.tenant_id, 10, prefix="g", domain="slow.test")
    got = claim(runtime, 100)
    ids = {m.id for m in got.messages}
    assert set(free) <= ids and set(other) <= ids
    assert len(ids & set(held)) == 1  # spacing 1 / rate, no burst
    assert got.adaptive == {(acme.tenant_id, "slow.test")}
    row = rates(runtime)[(acme.tenant_id, "slow.test")]
    assert row.tat >= got.now.timestamp() + 60  # the next one a slot later
    with runtime.sessions() as session:
        waiting = session.scalars(
            select(Message).where(Message.id.in_(held), Message.status == "queued")
        ).all()
    assert len(waiting) == 9
    # Claimed again a little before that slot (REFILL), so that claim can give it the slot.
    assert {m.not_before for m in waiting} == {datetime.fromtimestamp(row.tat - REFILL, UTC)}
    assert all(m.attempts == 0 and m.lease_token is None for m in waiting)
    assert claim(runtime, 100).messages == []  # nothing more before that slot


def test_retry_after_pauses_that_domain_until_then(runtime: Runtime, acme: TenantKeys) -> None:
    at = slow_domain(runtime, acme.tenant_id, "api.test", retry_after=30.0)
    held = enqueue(runtime, acme.tenant_id, 3, prefix="a", domain="api.test")
    free = enqueue(runtime, acme.tenant_id, 3, prefix="f", domain="fast.test")
    got = claim(runtime, 100)
    assert sorted(m.id for m in got.messages) == free
    row = rates(runtime)[(acme.tenant_id, "api.test")]
    assert row.paused_until == pytest.approx(at.timestamp() + 30.0)
    with runtime.sessions() as session:
        waiting = session.scalars(select(Message).where(Message.id.in_(held))).all()
    assert {m.not_before for m in waiting} == {
        datetime.fromtimestamp(row.paused_until - REFILL, UTC)
    }


def test_successes_while_held_to_a_rate_raise_it_and_others_do_not(
    runtime: Runtime, acme: TenantKeys
) -> None:
    slow_domain(runtime, acme.tenant_id, "slow.test")
    key = (acme.tenant_id, "slow.test")
    before = state_of(rates(runtime)[key])
    enqueue(runtime, acme.tenant_id, 24, prefix="s", domain="slow.test")
    # One batch of all 24 (the claim itself admits one a slot): claimed while the rate is
    # briefly not applied, so the claim does not name the domain as held to it.
    with transaction(runtime.sessions) as session:
        session.execute(update(DomainRate).values(state="steady"))
    batch = claim(runtime, 100)
    with transaction(runtime.sessions) as session:
        session.execute(update(DomainRate).values(state=before.state.value))
    assert len(batch.messages) == 24 and batch.adaptive == frozenset()
    record(runtime, replace(batch, messages=batch.messages[:4]), {})
    assert state_of(rates(runtime)[key]) == before  # not admitted under the rate: not counted
    record(runtime, replace(batch, messages=batch.messages[4:], adaptive=frozenset({key})), {})
    raised = state_of(rates(runtime)[key])
    expected = speed_up(before, successes=20, ceiling=None)
    assert (raised.rate, raised.successes, raised.state) == (
        pytest.approx(expected.rate),
        expected.successes,
        RateState.probing,
    )
    assert raised.rate > before.rate


def test_a_configured_limit_is_the_ceiling_of_the_rate(runtime: Runtime, acme: TenantKeys) -> None:
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Throttle)
            .where(Throttle.tenant_id == acme.tenant_id)
            .values(enabled=True, per_minute=120)  # 2/s
        )
    slow_domain(runtime, acme.tenant_id, "slow.test")
    row = rates(runtime)[(acme.tenant_id, "slow.test")]
    assert (row.rate, row.slowed_from) == (1.0, 2.0)  # halved from the ceiling
    slow_domain(runtime, acme.tenant_id, "slow.test", slowdowns=0, successes=1000)
    row = rates(runtime)[(acme.tenant_id, "slow.test")]
    assert (row.rate, row.state) == (2.0, "steady")  # back at the ceiling: no longer applied
    enqueue(runtime, acme.tenant_id, 3, prefix="s", domain="slow.test")
    assert claim(runtime, 100).adaptive == frozenset()


@pytest.mark.timeout(60)
def test_concurrent_outcomes_lose_no_update_and_halve_once_per_round(
    runtime: Runtime, acme: TenantKeys
) -> None:
    """Eight workers record at once: their slow-downs (all for mail sent before any decrease)
    halve the rate once, and their successes all count."""
    start = datetime.now(UTC).timestamp() - 1
    workers = 8

    def together(feedback: DomainFeedback) -> None:
        barrier = threading.Barrier(workers)
        errors: list[BaseException] = []

        def one() -> None:
            try:
                barrier.wait(10)
                with transaction(runtime.sessions) as session:
                    record_feedback(session=session, feedback=[feedback], now=db_now(session))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []

    together(DomainFeedback(acme.tenant_id, "slow.test", 1, 0, admitted_at=start))
    lowered = state_of(rates(runtime)[(acme.tenant_id, "slow.test")])
    assert lowered.rate == START_RATE  # once, not eight times
    for _ in range(3):
        together(DomainFeedback(acme.tenant_id, "slow.test", 0, 7, admitted_at=start))
    raised = state_of(rates(runtime)[(acme.tenant_id, "slow.test")])
    expected = speed_up(lowered, successes=3 * workers * 7, ceiling=None)
    assert (raised.rate, raised.successes) == (pytest.approx(expected.rate), expected.successes)
    # A second round of refusals, of mail admitted after the first decrease, halves it again.
    later = raised.last_slowdown_at + 0.001
    together(DomainFeedback(acme.tenant_id, "slow.test", 1, 0, admitted_at=later))
    again = state_of(rates(runtime)[(acme.tenant_id, "slow.test")])
    assert again.rate == pytest.approx(raised.rate / 2)
    assert again == replace(
        slow_down(raised, now=again.last_slowdown_at, admitted_at=later, ceiling=None),
        tat=again.tat,
    )


def test_a_domain_quiet_for_long_is_forgotten(runtime: Runtime, acme: TenantKeys) -> None:
    slow_domain(runtime, acme.tenant_id, "old.test")
    slow_domain(runtime, acme.tenant_id, "new.test")
    with transaction(runtime.sessions) as session:
        session.execute(
            update(DomainRate)
            .where(DomainRate.domain == "old.test")
            .values(last_slowdown_at=DomainRate.last_slowdown_at - FORGET_SECONDS)
        )
    held = enqueue(runtime, acme.tenant_id, 5, prefix="o", domain="old.test")
    got = claim(runtime, 100)
    assert {m.id for m in got.messages} == set(held)  # forgotten: not held back, even before...
    with transaction(runtime.sessions) as session:
        assert forget_quiet_domains(session=session, now=db_now(session)) == 1  # ...it is deleted
    assert list(rates(runtime)) == [(acme.tenant_id, "new.test")]


def test_the_workers_maintenance_pass_forgets_quiet_domains(
    runtime: Runtime, acme: TenantKeys
) -> None:
    slow_domain(runtime, acme.tenant_id, "old.test")
    with transaction(runtime.sessions) as session:
        session.execute(update(DomainRate).values(last_slowdown_at=0.0))
    Worker(runtime=runtime, transport=MemoryTransport())._maintenance_pass()
    assert rates(runtime) == {}
