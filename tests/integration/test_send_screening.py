"""``screen_claimed``: what changed since a message was queued is honoured just before it is sent."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, select, update

from tests.conftest import TenantKeys
from tests.integration.campaign_seed import contacts, opt_out, suppress, template
from tidings.db.engine import transaction
from tidings.db.models import Campaign, Contact, Event, FrequencyCap, Message
from tidings.queue.claim import _CLAIMED_COLUMNS, claim_batch
from tidings.queue.claimed import ClaimedMessage
from tidings.queue.compliance import blocking_reason, screen_claimed
from tidings.runtime import Runtime

HOUR = timedelta(hours=1)


def campaign(runtime: Runtime, tenant_id: int, category: str | None) -> int:
    template_id = template(runtime, tenant_id, name=f"t-{category}")
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        row = Campaign(
            tenant_id=tenant_id,
            name=f"c-{category}",
            template_id=template_id,
            list_ids=[],
            contact_ids=[],
            data={},
            category=category,
            status="running",
            recipient_count=0,
            created_at=now,
        )
        session.add(row)
        session.flush()
        return row.id


def message(
    runtime: Runtime,
    tenant_id: int,
    to: str,
    *,
    contact_id: int | None = None,
    campaign_id: int | None = None,
    category: str | None = None,
    priority: int = 5,
    status: str = "queued",
    sent_at: datetime | None = None,
    expires_in: timedelta = timedelta(days=5),
) -> int:
    now = datetime.now(UTC) - timedelta(seconds=1)
    with transaction(runtime.sessions) as session:
        row = Message(
            tenant_id=tenant_id,
            campaign_id=campaign_id,
            contact_id=contact_id,
            to_address=to,
            subject="hi",
            text="hello",
            category=category,
            priority=priority,
            status=status,
            not_before=now,
            expires_at=now + expires_in,
            attempts=0,
            lease_expiries=0,
            sent_at=sent_at,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
        return row.id


def claim_and_screen(runtime: Runtime) -> tuple[list[int], datetime]:
    """Claim every ready message (as the worker does) and screen them in the same transaction."""
    with transaction(runtime.sessions) as session:
        claim = claim_batch(session=session, owner="w1", limit=500, lease_seconds=30)
        kept = screen_claimed(session=session, messages=claim.messages, now=claim.now)
        return sorted(m.id for m in kept), claim.now


def row(runtime: Runtime, message_id: int) -> Message:
    with runtime.sessions() as session:
        found = session.get(Message, message_id)
        assert found is not None
        return found


def events(runtime: Runtime, message_id: int) -> list[tuple[str, str | None]]:
    with runtime.sessions() as session:
        return [
            (e.type, e.detail)
            for e in session.scalars(
                select(Event).where(Event.message_id == message_id).order_by(Event.id)
            )
        ]


def assert_suppressed(runtime: Runtime, message_id: int, reason: str) -> None:
    found = row(runtime, message_id)
    assert (found.status, found.last_error) == ("suppressed", reason)
    assert found.lease_token is None and found.lease_owner is None
    assert found.lease_expires_at is None
    assert ("suppressed", reason) in events(runtime, message_id)


def test_campaign_mail_is_suppressed_for_whatever_changed_since_the_fan_out(
    runtime: Runtime, acme: TenantKeys
) -> None:
    news = campaign(runtime, acme.tenant_id, "news")
    ann, bob, cy, dee, eve = contacts(
        runtime, acme.tenant_id, [f"{n}@example.com" for n in ("ann", "bob", "cy", "dee", "eve")]
    )
    ids = {
        name: message(
            runtime,
            acme.tenant_id,
            f"{name}@example.com",
            contact_id=contact_id,
            campaign_id=news,
            category="news",
        )
        for name, contact_id in zip(
            ("ann", "bob", "cy", "dee", "eve"), (ann, bob, cy, dee, eve), strict=True
        )
    }
    # After the fan-out: bob unsubscribes, cy bounces, dee is suppressed by hand, eve opts out.
    with transaction(runtime.sessions) as session:
        session.execute(update(Contact).where(Contact.id == bob).values(status="unsubscribed"))
        session.execute(update(Contact).where(Contact.id == cy).values(status="bounced"))
    suppress(runtime, acme.tenant_id, "dee@example.com", reason="manual")
    opt_out(runtime, acme.tenant_id, eve, "news")
    kept, _ = claim_and_screen(runtime)
    assert kept == [ids["ann"]]
    assert row(runtime, ids["ann"]).status == "sending"
    assert_suppressed(runtime, ids["bob"], "contact is unsubscribed")
    assert_suppressed(runtime, ids["cy"], "contact is bounced")
    assert_suppressed(runtime, ids["dee"], "address is on the suppression list (manual)")
    assert_suppressed(runtime, ids["eve"], "opted out of news")
    with runtime.sessions() as session:
        campaign_ids = set(
            session.scalars(select(Event.campaign_id).where(Event.type == "suppressed"))
        )
    assert campaign_ids == {news}  # the campaign's webhooks and figures see them


def test_a_campaign_message_without_its_own_category_uses_the_campaigns(
    runtime: Runtime, acme: TenantKeys
) -> None:
    news = campaign(runtime, acme.tenant_id, "news")
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    opt_out(runtime, acme.tenant_id, ann, "news")
    mid = message(runtime, acme.tenant_id, "ann@example.com", contact_id=ann, campaign_id=news)
    assert claim_and_screen(runtime)[0] == []
    assert_suppressed(runtime, mid, "opted out of news")


def test_transactional_mail_without_category_ignores_an_unsubscribe_but_not_a_bounce(
    runtime: Runtime, acme: TenantKeys
) -> None:
    ann, bob, cy = contacts(
        runtime, acme.tenant_id, ["ann@example.com", "bob@example.com", "cy@example.com"]
    )
    with transaction(runtime.sessions) as session:
        session.execute(update(Contact).where(Contact.id == ann).values(status="unsubscribed"))
        session.execute(update(Contact).where(Contact.id == cy).values(status="complained"))
    suppress(runtime, acme.tenant_id, "ann@example.com", reason="unsubscribe")
    suppress(runtime, acme.tenant_id, "bob@example.com", reason="hard_bounce")
    suppress(runtime, acme.tenant_id, "walk-in@example.com", reason="unsubscribe")
    reset = message(runtime, acme.tenant_id, "ann@example.com", contact_id=ann, priority=105)
    walk_in = message(runtime, acme.tenant_id, "walk-in@example.com", priority=105)
    bounced = message(runtime, acme.tenant_id, "bob@example.com", contact_id=bob, priority=105)
    complained = message(runtime, acme.tenant_id, "cy@example.com", contact_id=cy, priority=105)
    reminder = message(
        runtime, acme.tenant_id, "ann@example.com", contact_id=ann, category="reminders"
    )
    kept, _ = claim_and_screen(runtime)
    assert kept == sorted([reset, walk_in])
    assert_suppressed(runtime, bounced, "address is on the suppression list (hard_bounce)")
    assert_suppressed(runtime, complained, "contact is complained")
    assert_suppressed(runtime, reminder, "contact is unsubscribed")


def test_blocking_reason_rules() -> None:
    def reason(**given: Any) -> str | None:
        values: dict[str, Any] = {
            "bulk": True,
            "contact_status": "active",
            "listed_reason": None,
            "category": None,
            "opted_out": False,
        }
        return blocking_reason(**(values | given))

    assert reason() is None
    assert reason(contact_status=None) is None
    assert reason(bulk=False, contact_status="unsubscribed") is None
    assert reason(bulk=False, listed_reason="unsubscribe") is None
    assert (
        reason(bulk=False, listed_reason="manual") == "address is on the suppression list (manual)"
    )
    assert reason(bulk=False, contact_status="bounced") == "contact is bounced"
    assert reason(contact_status="unsubscribed") == "contact is unsubscribed"
    assert reason(listed_reason="unsubscribe") == "address is on the suppression list (unsubscribe)"
    assert reason(category="news", opted_out=True) == "opted out of news"


def test_other_tenants_suppressions_do_not_apply(
    runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    suppress(runtime, globex.tenant_id, "ann@example.com", reason="complaint")
    mid = message(runtime, acme.tenant_id, "ann@example.com", category="news")
    assert claim_and_screen(runtime)[0] == [mid]


# -- frequency caps ---------------------------------------------------------------------------


def cap(runtime: Runtime, tenant_id: int, category: str, max_per_day: int, mode: str) -> None:
    with transaction(runtime.sessions) as session:
        session.add(
            FrequencyCap(
                tenant_id=tenant_id,
                category=category,
                max_per_day=max_per_day,
                mode=mode,
                created_at=datetime.now(UTC),
            )
        )


def test_a_message_over_the_cap_waits_until_the_oldest_send_leaves_the_window(
    runtime: Runtime, acme: TenantKeys
) -> None:
    cap(runtime, acme.tenant_id, "reminders", 2, "delay")
    ann, bob = contacts(runtime, acme.tenant_id, ["ann@example.com", "bob@example.com"])
    earlier = datetime.now(UTC) - 3 * HOUR
    message(
        runtime,
        acme.tenant_id,
        "ann@example.com",
        contact_id=ann,
        category="reminders",
        status="sent",
        sent_at=earlier,
    )
    message(  # outside the rolling day: does not count
        runtime,
        acme.tenant_id,
        "ann@example.com",
        contact_id=ann,
        category="reminders",
        status="sent",
        sent_at=earlier - 22 * HOUR,
    )
    urgent, second, third = (
        message(
            runtime,
            acme.tenant_id,
            "ann@example.com",
            contact_id=ann,
            category="reminders",
            priority=p,
        )
        for p in (9, 5, 5)
    )
    other_category = message(
        runtime, acme.tenant_id, "ann@example.com", contact_id=ann, category="news"
    )
    other_contact = message(
        runtime, acme.tenant_id, "bob@example.com", contact_id=bob, category="reminders"
    )
    kept, now = claim_and_screen(runtime)
    assert kept == sorted([urgent, other_category, other_contact])
    for held in (second, third):
        found = row(runtime, held)
        assert found.status == "queued"
        assert found.lease_token is None
        assert found.attempts == 0
        assert abs(found.not_before - (earlier + 24 * HOUR)) < timedelta(seconds=1)
        assert (found.last_error or "").startswith(
            "frequency cap: 2 reminders message(s) a day to this contact; next slot at"
        )
        assert [kind for kind, _ in events(runtime, held)] == ["deferred"]
    assert claim_and_screen(runtime)[0] == []  # not claimable before their slot
    assert now < earlier + 24 * HOUR


def test_messages_other_workers_are_sending_count_against_the_cap(
    runtime: Runtime, acme: TenantKeys
) -> None:
    cap(runtime, acme.tenant_id, "reminders", 1, "delay")
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    message(
        runtime,
        acme.tenant_id,
        "ann@example.com",
        contact_id=ann,
        category="reminders",
        status="sending",
    )
    waiting = message(
        runtime, acme.tenant_id, "ann@example.com", contact_id=ann, category="reminders"
    )
    assert claim_and_screen(runtime)[0] == []
    assert row(runtime, waiting).status == "queued"


def test_a_suppress_cap_suppresses_what_is_over_it(runtime: Runtime, acme: TenantKeys) -> None:
    cap(runtime, acme.tenant_id, "digest", 1, "suppress")
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    first, second = (
        message(runtime, acme.tenant_id, "ann@example.com", contact_id=ann, category="digest")
        for _ in range(2)
    )
    assert claim_and_screen(runtime)[0] == [first]
    assert_suppressed(
        runtime, second, "frequency cap: 1 digest message(s) a day to this contact, reached"
    )


def test_a_delay_past_the_message_expiry_suppresses_it(runtime: Runtime, acme: TenantKeys) -> None:
    cap(runtime, acme.tenant_id, "codes", 1, "delay")
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    message(
        runtime,
        acme.tenant_id,
        "ann@example.com",
        contact_id=ann,
        category="codes",
        status="sent",
        sent_at=datetime.now(UTC) - HOUR,
    )
    short_lived = message(
        runtime,
        acme.tenant_id,
        "ann@example.com",
        contact_id=ann,
        category="codes",
        expires_in=timedelta(minutes=10),
    )
    assert claim_and_screen(runtime)[0] == []
    assert_suppressed(
        runtime,
        short_lived,
        "frequency cap: 1 codes message(s) a day to this contact; "
        "no free slot before the message expires",
    )


@contextmanager
def counted_statements(runtime: Runtime) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(args[2])

    event.listen(runtime.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(runtime.engine, "before_cursor_execute", count)


def test_screening_a_batch_takes_a_few_statements_whatever_its_size(
    runtime: Runtime, acme: TenantKeys
) -> None:
    news = campaign(runtime, acme.tenant_id, "news")
    cap(runtime, acme.tenant_id, "news", 1, "delay")
    people = contacts(runtime, acme.tenant_id, [f"p{i}@example.com" for i in range(60)])
    for i, contact_id in enumerate(people):
        if i % 3 == 0:
            opt_out(runtime, acme.tenant_id, contact_id, "news")
        for n in range(2):  # the second is over the cap of 1
            message(
                runtime,
                acme.tenant_id,
                f"p{i}@example.com",
                contact_id=contact_id,
                campaign_id=None if n else news,
                category="news",
            )
    with transaction(runtime.sessions) as session:
        # Leased by hand rather than by claim_batch, which screens by itself: the whole batch of
        # 120 (20 opted out, 40 over the cap) reaches the screen here.
        now = datetime.now(UTC)
        rows = session.execute(
            update(Message)
            .where(Message.status == "queued")
            .values(status="sending", lease_token="t", lease_owner="w1", updated_at=now)
            .returning(*_CLAIMED_COLUMNS)  # what a claim reads
        ).all()
        batch = [ClaimedMessage(*r) for r in rows]
        with counted_statements(runtime) as statements:
            kept = screen_claimed(session=session, messages=batch, now=now)
    assert (len(batch), len(kept)) == (120, 40)
    assert len(statements) <= 8, statements
