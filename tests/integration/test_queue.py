"""The queue's guarantees on both databases: claim order, fairness, throttles, fencing, reaping."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from tests.conftest import TenantKeys
from tidings.db.engine import transaction
from tidings.db.models import DomainThrottle, Event, Message, Throttle
from tidings.delivery.throttle import HORIZON
from tidings.domain import TRANSACTIONAL_PRIORITY_BOOST, EventType, MessageStatus
from tidings.queue.claim import claim_batch, release_unsent
from tidings.queue.leases import reap_expired_leases, renew_leases
from tidings.queue.outcomes import Decision, record_outcomes
from tidings.runtime import Runtime


def enqueue(
    runtime: Runtime,
    tenant_id: int,
    count: int,
    *,
    priority: int = 5,
    prefix: str = "r",
    domain: str = "example.test",
) -> list[int]:
    now = datetime.now(UTC) - timedelta(seconds=1)
    with transaction(runtime.sessions) as session:
        rows = [
            Message(
                tenant_id=tenant_id,
                to_address=f"{prefix}{i}@{domain}",
                subject="hi",
                text="hello",
                priority=priority,
                status="queued",
                not_before=now,
                expires_at=now + timedelta(days=1),
                created_at=now,
                updated_at=now,
            )
            for i in range(count)
        ]
        session.add_all(rows)
        session.flush()
        return [r.id for r in rows]


def claim(runtime: Runtime, limit: int, owner: str = "w1"):  # type: ignore[no-untyped-def]
    with transaction(runtime.sessions) as session:
        return claim_batch(session=session, owner=owner, limit=limit, lease_seconds=30)


def statuses(runtime: Runtime, ids: list[int]) -> list[str]:
    with runtime.sessions() as session:
        found = dict(
            session.execute(select(Message.id, Message.status).where(Message.id.in_(ids))).all()
        )
    return [found[i] for i in ids]


def test_transactional_mail_is_claimed_before_campaign_mail(
    runtime: Runtime, acme: TenantKeys
) -> None:
    bulk = enqueue(runtime, acme.tenant_id, 5, priority=9)
    urgent = enqueue(runtime, acme.tenant_id, 2, priority=TRANSACTIONAL_PRIORITY_BOOST)
    got = claim(runtime, 3)
    assert [m.id for m in got.messages][:2] == urgent
    assert got.messages[2].id == bulk[0]


def test_a_message_is_never_claimed_twice(runtime: Runtime, acme: TenantKeys) -> None:
    ids = enqueue(runtime, acme.tenant_id, 10)
    first, second, third = claim(runtime, 6, "a"), claim(runtime, 6, "b"), claim(runtime, 6, "c")
    seen = [m.id for c in (first, second, third) for m in c.messages]
    assert sorted(seen) == ids
    assert len(third.messages) == 0
    assert set(statuses(runtime, ids)) == {"sending"}


def test_tenants_take_turns_within_one_claim(
    runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    enqueue(runtime, acme.tenant_id, 50, prefix="a")
    enqueue(runtime, globex.tenant_id, 3, prefix="g")
    got = claim(runtime, 6)
    tenants = [m.tenant_id for m in got.messages]
    assert tenants.count(globex.tenant_id) == 3  # the big tenant does not crowd the small one out


def test_a_throttled_tenant_gets_its_limit_and_does_not_block_others(
    runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Throttle)
            .where(Throttle.tenant_id == acme.tenant_id)
            .values(enabled=True, per_second=1)
        )
    held = enqueue(runtime, acme.tenant_id, 10, prefix="a")
    free = enqueue(runtime, globex.tenant_id, 10, prefix="g")
    with runtime.sessions() as session:
        query = select(Message.id, Message.not_before).where(Message.id.in_(held))
        queued_at = dict(session.execute(query).all())
    got = claim(runtime, 100)
    slotted = [m for m in got.messages if m.tenant_id == acme.tenant_id]
    # 1 a second is 1.02 s apart: one slot within the claim's horizon of a second.
    assert len(slotted) == 1 and slotted[0].id == held[0]
    assert got.clock is not None and slotted[0].send_at is not None
    assert got.clock.db < slotted[0].send_at <= got.clock.db + HORIZON
    unthrottled = [m for m in got.messages if m.tenant_id == globex.tenant_id]
    assert len(unthrottled) == 10 and all(m.send_at is None for m in unthrottled)
    with runtime.sessions() as session:
        waiting = session.scalars(
            select(Message).where(Message.id.in_(held), Message.status == "queued")
        ).all()
        assert len(waiting) == 9
        # Untouched: no attempt spent, and their place in the queue kept.
        assert all(m.not_before == queued_at[m.id] for m in waiting)
        assert all(m.lease_token is None and m.attempts == 0 for m in waiting)
        blocked_until = session.get_one(Throttle, acme.tenant_id).blocked_until
    # Closed until shortly before the next slot, which the claim names for the worker's timer.
    assert got.wake_at == blocked_until
    assert got.clock.db < blocked_until < slotted[0].send_at + 1.02
    assert claim(runtime, 100).messages == []
    assert set(statuses(runtime, free)) == {"sending"}


def test_a_domain_limit_holds_back_only_that_tenants_mail_to_that_domain(
    runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    with transaction(runtime.sessions) as session:
        session.add(DomainThrottle(tenant_id=acme.tenant_id, domain="outlook.test", per_minute=3))
    limited = enqueue(runtime, acme.tenant_id, 10, prefix="a", domain="outlook.test")
    elsewhere = enqueue(runtime, acme.tenant_id, 10, prefix="b", domain="gmail.test")
    other_tenant = enqueue(runtime, globex.tenant_id, 10, prefix="g", domain="outlook.test")
    got = claim(runtime, 100)
    claimed = {m.id for m in got.messages}
    assert claimed & set(limited) == set(limited[:3])  # a minute's limit may go at once
    assert set(elsewhere) <= claimed and set(other_tenant) <= claimed
    assert all(m.send_at is None for m in got.messages if m.id not in limited)
    with runtime.sessions() as session:
        waiting = session.scalars(
            select(Message).where(Message.id.in_(limited), Message.status == "queued")
        ).all()
    assert len(waiting) == 7
    # They come back shortly before the domain's window has room again, a minute on.
    assert all(m.attempts == 0 for m in waiting)
    assert all(
        timedelta(seconds=59) < m.not_before - got.now < timedelta(seconds=62) for m in waiting
    )
    assert got.wake_at == pytest.approx(min(m.not_before for m in waiting).timestamp(), abs=1e-5)


def test_an_outcome_from_a_stale_lease_is_ignored(runtime: Runtime, acme: TenantKeys) -> None:
    (message_id,) = enqueue(runtime, acme.tenant_id, 1)
    stale = claim(runtime, 1)
    with transaction(runtime.sessions) as session:  # the lease expires and the reaper takes it back
        session.execute(update(Message).values(lease_expires_at=stale.now - timedelta(seconds=1)))
        assert reap_expired_leases(session=session, now=stale.now, max_expiries=5) == (1, 0)
    fresh = claim(runtime, 1, "w2")
    assert fresh.token != stale.token
    decision = Decision(
        message_id=message_id,
        tenant_id=acme.tenant_id,
        campaign_id=None,
        status=MessageStatus.sent,
        event=EventType.sent,
    )
    with transaction(runtime.sessions) as session:
        written = record_outcomes(
            session=session, token=stale.token, decisions=[decision], now=fresh.now
        )
    assert written == []
    assert statuses(runtime, [message_id]) == ["sending"]
    with transaction(runtime.sessions) as session:
        written = record_outcomes(
            session=session, token=fresh.token, decisions=[decision], now=fresh.now
        )
    assert written == [message_id]
    with runtime.sessions() as session:
        row = session.get(Message, message_id)
        assert (
            row is not None
            and row.status == "sent"
            and row.attempts == 1
            and row.sent_at is not None
        )
        kinds = session.scalars(
            select(Event.type).where(Event.message_id == message_id).order_by(Event.id)
        ).all()
    assert kinds == ["lease_expired", "sent"]


def test_renewed_leases_are_not_reaped_and_poison_messages_die(
    runtime: Runtime, acme: TenantKeys
) -> None:
    (message_id,) = enqueue(runtime, acme.tenant_id, 1)
    for round_ in range(3):
        got = claim(runtime, 1)
        assert [m.id for m in got.messages] == [message_id], round_
        later = got.now + timedelta(seconds=60)
        with transaction(runtime.sessions) as session:
            if round_ == 0:  # a heartbeat keeps it
                renew_leases(session=session, tokens=[got.token], now=later, lease_seconds=30)
                assert reap_expired_leases(session=session, now=later, max_expiries=3) == (0, 0)
                later += timedelta(seconds=60)
            reaped = reap_expired_leases(
                session=session, now=later, max_expiries=2 if round_ else 3
            )
        with transaction(runtime.sessions) as session:
            session.execute(update(Message).values(not_before=got.now))
        if reaped == (0, 1):
            break
    assert statuses(runtime, [message_id]) == ["dead"]


def test_a_retry_follows_a_campaign_paused_while_it_was_in_flight(
    runtime: Runtime, acme: TenantKeys
) -> None:
    from tidings.db.models import Campaign, Template

    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        template = Template(
            tenant_id=acme.tenant_id,
            name="t",
            subject="s",
            text="t",
            created_at=now,
            updated_at=now,
        )
        session.add(template)
        session.flush()
        campaign = Campaign(
            tenant_id=acme.tenant_id,
            name="c",
            template_id=template.id,
            status="running",
            created_at=now,
        )
        session.add(campaign)
        session.flush()
        campaign_id = campaign.id
    (message_id,) = enqueue(runtime, acme.tenant_id, 1)
    with transaction(runtime.sessions) as session:
        session.execute(update(Message).values(campaign_id=campaign_id))
    got = claim(runtime, 1)
    with transaction(runtime.sessions) as session:
        session.execute(update(Campaign).values(status="paused"))
    retry = Decision(
        message_id=message_id,
        tenant_id=acme.tenant_id,
        campaign_id=campaign_id,
        status=MessageStatus.queued,
        event=EventType.deferred,
        detail="451 later",
        not_before=got.now,
    )
    with transaction(runtime.sessions) as session:
        assert record_outcomes(
            session=session, token=got.token, decisions=[retry], now=got.now
        ) == [message_id]
    assert statuses(runtime, [message_id]) == ["paused"]


def test_a_slot_that_was_not_used_stops_counting_against_the_windows(
    runtime: Runtime, acme: TenantKeys
) -> None:
    """A worker that could not start a burst in time hands the late sends back: their slots
    must free the tenant's and the domain's room at once, not a window later."""
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Throttle)
            .where(Throttle.tenant_id == acme.tenant_id)
            .values(enabled=True, per_minute=3)
        )
        session.add(DomainThrottle(tenant_id=acme.tenant_id, domain="outlook.test", per_minute=3))
    ids = enqueue(runtime, acme.tenant_id, 6, domain="outlook.test")
    first = claim(runtime, 100)
    assert [m.id for m in first.messages] == ids[:3]
    assert claim(runtime, 100).messages == []  # a minute's limit is spent
    # The second never reached the server; the third's envelope did (the worker hands it back
    # with no slot), and a server may count it: its slot stays used.
    unseen, abandoned = first.messages[1], replace(first.messages[2], send_at=None, send_by=None)
    with transaction(runtime.sessions) as session:
        release_unsent(
            session=session, token=first.token, messages=[unseen, abandoned], now=first.now
        )
    again = claim(runtime, 100)
    assert [m.id for m in again.messages] == [ids[1]]  # back in its place, with a new slot
    assert again.messages[0].send_at is not None
    assert statuses(runtime, ids[2:]) == ["queued"] * 4  # queued, no attempt spent, no room
