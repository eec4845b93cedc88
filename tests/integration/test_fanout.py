"""Fan-out and the campaign housekeeping the workers run (start due, complete finished)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from tests.conftest import TenantKeys
from tests.integration import campaign_seed as seed
from tidings.db.engine import transaction
from tidings.db.models import Campaign, Event, Message
from tidings.delivery.worker import Worker
from tidings.domain import CampaignStatus
from tidings.errors import Conflict
from tidings.queue import fanout
from tidings.queue.enqueue import requeue_status
from tidings.queue.fanout import fan_out_campaign, prepare_campaign, take_preparing
from tidings.queue.maintenance import complete_finished_campaigns, start_due_campaigns
from tidings.runtime import Runtime
from tidings.services import campaigns
from tidings.transports.memory import MemoryTransport

TTL = 3600.0
NOW = datetime(2030, 5, 1, 9, 0, tzinfo=UTC)


def _draft(runtime: Runtime, tenant_id: int, **fields: object) -> int:
    with transaction(runtime.sessions) as session:
        draft = campaigns.CampaignDraft(**{"name": "spring", **fields})  # type: ignore[arg-type]
        return campaigns.create_campaign(
            session=session, tenant_id=tenant_id, draft=draft, now=NOW
        ).id


def _fan_out(runtime: Runtime, campaign_id: int, chunk_size: int = 20_000) -> tuple[int, int]:
    """The whole fan-out: the first chunk as a start writes it, the rest as a worker does."""
    with transaction(runtime.sessions) as session:
        campaign = session.get_one(Campaign, campaign_id)
        result = fan_out_campaign(
            session=session, campaign=campaign, now=NOW, ttl_seconds=TTL, chunk_size=chunk_size
        )
    if not result.done:
        assert prepare_campaign(
            runtime.sessions, campaign_id, ttl_seconds=TTL, chunk_size=chunk_size
        )
    row = seed.campaign_row(runtime, campaign_id)
    suppressed = sum(1 for m in seed.messages_of(runtime, campaign_id) if m.status == "suppressed")
    return row.recipient_count, suppressed


def test_a_contact_in_two_lists_and_in_contact_ids_gets_one_message(
    runtime: Runtime, acme: TenantKeys
) -> None:
    template = seed.template(runtime, acme.tenant_id)
    ids = seed.people(runtime, acme.tenant_id, 10)
    first = seed.contact_list(runtime, acme.tenant_id, "a", ids[:6])
    second = seed.contact_list(runtime, acme.tenant_id, "b", ids[4:8])
    campaign_id = _draft(
        runtime,
        acme.tenant_id,
        template_id=template,
        list_ids=[first, second],
        contact_ids=[ids[7], ids[8]],
    )
    assert _fan_out(runtime, campaign_id) == (9, 0)
    rows = seed.messages_of(runtime, campaign_id)
    assert sorted(m.contact_id or 0 for m in rows) == ids[:9]  # ids[9] is in no list and not picked
    assert seed.campaign_row(runtime, campaign_id).recipient_count == 9


def test_fan_out_in_small_chunks_writes_the_same_rows_as_in_one(
    runtime: Runtime, acme: TenantKeys
) -> None:
    template = seed.template(runtime, acme.tenant_id)
    ids = seed.people(runtime, acme.tenant_id, 23)
    # Every third contact is outside the audience, so chunk boundaries fall between gaps.
    audience = [cid for i, cid in enumerate(ids) if i % 3]
    lst = seed.contact_list(runtime, acme.tenant_id, "some", audience)
    one = _draft(runtime, acme.tenant_id, template_id=template, list_ids=[lst])
    many = _draft(runtime, acme.tenant_id, template_id=template, list_ids=[lst])
    _fan_out(runtime, one)
    assert _fan_out(runtime, many, chunk_size=4) == (len(audience), 0)
    assert sorted(m.contact_id or 0 for m in seed.messages_of(runtime, many)) == audience
    assert seed.statuses(runtime, one) == seed.statuses(runtime, many)


def test_a_repeated_fan_out_enqueues_nobody_twice(runtime: Runtime, acme: TenantKeys) -> None:
    template = seed.template(runtime, acme.tenant_id)
    ids = seed.people(runtime, acme.tenant_id, 5)
    campaign_id = _draft(runtime, acme.tenant_id, template_id=template, contact_ids=ids)
    assert _fan_out(runtime, campaign_id) == (5, 0)
    assert _fan_out(runtime, campaign_id, chunk_size=2) == (5, 0)
    assert len(seed.messages_of(runtime, campaign_id)) == 5


def test_unreachable_recipients_are_written_suppressed_with_the_reason(
    runtime: Runtime, acme: TenantKeys
) -> None:
    template = seed.template(runtime, acme.tenant_id, category="news")
    ok, bounced_addr, opted_out, other_category = seed.people(runtime, acme.tenant_id, 4)
    unsubscribed = seed.contacts(
        runtime, acme.tenant_id, ["gone@example.com"], status="unsubscribed"
    )[0]
    seed.suppress(runtime, acme.tenant_id, "p1@example.com", "hard_bounce")
    seed.opt_out(runtime, acme.tenant_id, opted_out, "news")
    seed.opt_out(runtime, acme.tenant_id, other_category, "offers")
    audience = [ok, bounced_addr, opted_out, other_category, unsubscribed]
    campaign_id = _draft(runtime, acme.tenant_id, template_id=template, contact_ids=audience)
    assert seed.campaign_row(runtime, campaign_id).category == "news"  # the template's category
    assert _fan_out(runtime, campaign_id) == (5, 3)
    by_contact = {m.contact_id: m for m in seed.messages_of(runtime, campaign_id)}
    assert {cid: m.status for cid, m in by_contact.items()} == {
        ok: "queued",
        bounced_addr: "suppressed",
        opted_out: "suppressed",
        other_category: "queued",
        unsubscribed: "suppressed",
    }
    assert by_contact[bounced_addr].last_error == "address is on the suppression list (hard_bounce)"
    assert by_contact[opted_out].last_error == "opted out of news"
    assert by_contact[unsubscribed].last_error == "contact is unsubscribed"
    assert by_contact[ok].last_error is None


def test_queued_rows_carry_what_the_worker_needs(runtime: Runtime, acme: TenantKeys) -> None:
    template = seed.template(runtime, acme.tenant_id)
    [cid] = seed.people(runtime, acme.tenant_id, 1)
    campaign_id = _draft(
        runtime,
        acme.tenant_id,
        template_id=template,
        contact_ids=[cid],
        priority=7,
        data={"term": "spring"},
    )
    _fan_out(runtime, campaign_id)
    [row] = seed.messages_of(runtime, campaign_id)
    assert (row.tenant_id, row.campaign_id, row.contact_id, row.to_address) == (
        acme.tenant_id,
        campaign_id,
        cid,
        "p0@example.com",
    )
    assert (row.template_id, row.priority, row.status, row.attempts, row.lease_expiries) == (
        template,
        7,
        "queued",
        0,
        0,
    )
    assert (
        row.data is None and row.subject is None and row.message_id_header is None
    )  # the campaign holds them
    assert row.not_before == NOW and row.expires_at == NOW + timedelta(seconds=TTL)


def test_the_audience_never_reaches_another_tenants_contacts(
    runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    template = seed.template(runtime, acme.tenant_id)
    mine = seed.people(runtime, acme.tenant_id, 2)
    theirs = seed.people(runtime, globex.tenant_id, 2, prefix="g")
    campaign_id = _draft(runtime, acme.tenant_id, template_id=template, contact_ids=mine)
    with transaction(runtime.sessions) as session:  # tampered after validation
        session.execute(
            update(Campaign).where(Campaign.id == campaign_id).values(contact_ids=mine + theirs)
        )
    assert _fan_out(runtime, campaign_id) == (2, 0)


def _chunks(count: int) -> Callable[[], bool]:
    """``keep_going`` for ``prepare_campaign``: this many chunks, then stop (a worker stopping
    or dying between two of its transactions)."""
    left = iter(range(count))
    return lambda: next(left, None) is not None


def _preparing(
    runtime: Runtime, tenant_id: int, people: int, chunk_size: int
) -> tuple[int, list[int]]:
    """A campaign to ``people`` contacts whose start wrote its first chunk of ``chunk_size``:
    (its id, the contact ids)."""
    template = seed.template(runtime, tenant_id)
    ids = seed.people(runtime, tenant_id, people)
    campaign_id = _draft(runtime, tenant_id, template_id=template, contact_ids=ids)
    with transaction(runtime.sessions) as session:
        campaign = session.get_one(Campaign, campaign_id)
        first = fan_out_campaign(
            session=session, campaign=campaign, now=NOW, ttl_seconds=TTL, chunk_size=chunk_size
        )
    assert not first.done
    return campaign_id, ids


def test_a_large_audience_runs_at_once_and_is_written_in_committed_chunks_that_show(
    runtime: Runtime, acme: TenantKeys
) -> None:
    campaign_id, ids = _preparing(runtime, acme.tenant_id, 10, chunk_size=4)
    row = seed.campaign_row(runtime, campaign_id)
    assert (row.status, row.recipient_count, row.fanout_cursor) == ("preparing", 4, ids[3])
    # The first chunk is queued (committed): workers send it while the rest is written.
    assert {m.status for m in seed.messages_of(runtime, campaign_id)} == {"queued"}
    assert not prepare_campaign(
        runtime.sessions, campaign_id, ttl_seconds=TTL, chunk_size=4, keep_going=_chunks(1)
    )
    row = seed.campaign_row(runtime, campaign_id)
    assert (row.status, row.recipient_count, row.fanout_cursor) == ("preparing", 8, ids[7])
    assert len(seed.messages_of(runtime, campaign_id)) == 8
    assert prepare_campaign(runtime.sessions, campaign_id, ttl_seconds=TTL, chunk_size=4)
    row = seed.campaign_row(runtime, campaign_id)
    assert (row.status, row.recipient_count, row.fanout_cursor) == ("running", 10, None)
    assert sorted(m.contact_id or 0 for m in seed.messages_of(runtime, campaign_id)) == ids


def test_a_preparing_campaign_is_leased_to_one_worker_and_taken_over_when_its_lease_ends(
    runtime: Runtime, acme: TenantKeys
) -> None:
    campaign_id, _ = _preparing(runtime, acme.tenant_id, 6, chunk_size=2)

    def take(at: datetime) -> list[int]:
        with transaction(runtime.sessions) as session:
            return take_preparing(session=session, now=at, lease_seconds=30)

    assert take(NOW) == [campaign_id]  # free at once
    assert take(NOW + timedelta(seconds=29)) == []  # the first worker still holds it
    assert take(NOW + timedelta(seconds=30)) == [campaign_id]  # it died: another goes on


def test_a_campaign_cancelled_while_preparing_gets_no_more_messages(
    runtime: Runtime, acme: TenantKeys
) -> None:
    campaign_id, _ = _preparing(runtime, acme.tenant_id, 6, chunk_size=2)
    with transaction(runtime.sessions) as session:
        campaigns.cancel_campaign(
            session=session, tenant_id=acme.tenant_id, campaign_id=campaign_id, now=NOW
        )
    assert prepare_campaign(runtime.sessions, campaign_id, ttl_seconds=TTL, chunk_size=2)
    assert [m.status for m in seed.messages_of(runtime, campaign_id)] == ["cancelled"] * 2


def test_a_preparing_campaign_cannot_be_paused_and_never_completes_early(
    runtime: Runtime, acme: TenantKeys
) -> None:
    campaign_id, _ = _preparing(runtime, acme.tenant_id, 4, chunk_size=2)
    with transaction(runtime.sessions) as session:  # its first chunk finished
        session.execute(
            update(Message).where(Message.campaign_id == campaign_id).values(status="sent")
        )
    with transaction(runtime.sessions) as session:
        assert complete_finished_campaigns(session=session, now=NOW) == []
        with pytest.raises(Conflict, match="preparing"):
            campaigns.pause_campaign(
                session=session, tenant_id=acme.tenant_id, campaign_id=campaign_id, now=NOW
            )


def _start(runtime: Runtime, tenant_id: int, campaign_id: int, now: datetime) -> str:
    with transaction(runtime.sessions) as session:
        return campaigns.start_campaign(
            session=session, tenant_id=tenant_id, campaign_id=campaign_id, now=now, ttl_seconds=TTL
        ).status


def test_a_scheduled_campaign_starts_when_its_time_comes_and_only_once(
    runtime: Runtime, acme: TenantKeys
) -> None:
    template = seed.template(runtime, acme.tenant_id)
    ids = seed.people(runtime, acme.tenant_id, 3)
    at = NOW + timedelta(hours=2)
    campaign_id = _draft(
        runtime, acme.tenant_id, template_id=template, contact_ids=ids, scheduled_at=at
    )
    assert _start(runtime, acme.tenant_id, campaign_id, NOW) == "scheduled"
    assert seed.messages_of(runtime, campaign_id) == []
    with transaction(runtime.sessions) as session:
        assert (
            start_due_campaigns(session=session, now=at - timedelta(seconds=1), ttl_seconds=TTL)
            == 0
        )
    with transaction(runtime.sessions) as session:
        assert start_due_campaigns(session=session, now=at, ttl_seconds=TTL) == 1
    with transaction(runtime.sessions) as session:
        assert (
            start_due_campaigns(session=session, now=at + timedelta(minutes=1), ttl_seconds=TTL)
            == 0
        )
    row = seed.campaign_row(runtime, campaign_id)
    assert (row.status, row.started_at, row.recipient_count) == ("running", at, 3)
    assert len(seed.messages_of(runtime, campaign_id)) == 3
    with runtime.sessions() as session:
        types = list(
            session.scalars(
                select(Event.type).where(Event.campaign_id == campaign_id).order_by(Event.id)
            )
        )
    assert types == ["campaign_scheduled", "campaign_started"]


def test_two_workers_starting_due_campaigns_at_once_start_each_once(
    runtime: Runtime, acme: TenantKeys
) -> None:
    template = seed.template(runtime, acme.tenant_id)
    ids = seed.people(runtime, acme.tenant_id, 3)
    campaign_id = _draft(
        runtime, acme.tenant_id, template_id=template, contact_ids=ids, scheduled_at=NOW
    )
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Campaign).where(Campaign.id == campaign_id).values(status="scheduled")
        )
    started: list[int] = []

    def worker() -> None:
        with transaction(runtime.sessions) as session:
            started.append(start_due_campaigns(session=session, now=NOW, ttl_seconds=TTL))

    if runtime.dialect == "postgresql":
        # The first worker holds the campaign (uncommitted); the second skips it instead of waiting.
        with transaction(runtime.sessions) as first:
            started.append(start_due_campaigns(session=first, now=NOW, ttl_seconds=TTL))
            other = threading.Thread(target=worker)
            other.start()
            other.join(timeout=10)
            assert not other.is_alive()
    else:
        threads = [threading.Thread(target=worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    assert sorted(started) == [0, 1]
    assert len(seed.messages_of(runtime, campaign_id)) == 3


def test_a_campaign_completes_once_no_message_is_pending(
    runtime: Runtime, acme: TenantKeys
) -> None:
    template = seed.template(runtime, acme.tenant_id)
    ids = seed.people(runtime, acme.tenant_id, 3)
    campaign_id = _draft(runtime, acme.tenant_id, template_id=template, contact_ids=ids)
    assert _start(runtime, acme.tenant_id, campaign_id, NOW) == "running"
    rows = seed.messages_of(runtime, campaign_id)
    seed.set_status(runtime, [rows[0].id], "sent", sent_at=NOW)
    seed.set_status(runtime, [rows[1].id], "sending")
    seed.set_status(runtime, [rows[2].id], "failed", last_error="550 no such user")
    later = NOW + timedelta(minutes=5)
    with transaction(runtime.sessions) as session:
        assert (
            complete_finished_campaigns(session=session, now=later) == []
        )  # one is still being sent
    seed.set_status(runtime, [rows[1].id], "dead")
    with transaction(runtime.sessions) as session:
        assert complete_finished_campaigns(session=session, now=later) == [campaign_id]
    with transaction(runtime.sessions) as session:
        assert complete_finished_campaigns(session=session, now=later) == []
    row = seed.campaign_row(runtime, campaign_id)
    assert (row.status, row.completed_at) == ("completed", later)
    with runtime.sessions() as session:
        completed = session.scalar(
            select(func.count()).where(
                Event.campaign_id == campaign_id, Event.type == "campaign_completed"
            )
        )
    assert completed == 1


def test_paused_and_draft_campaigns_are_never_completed(runtime: Runtime, acme: TenantKeys) -> None:
    template = seed.template(runtime, acme.tenant_id)
    ids = seed.people(runtime, acme.tenant_id, 2)
    draft = _draft(runtime, acme.tenant_id, template_id=template, contact_ids=ids)
    paused = _draft(runtime, acme.tenant_id, template_id=template, contact_ids=ids)
    _start(runtime, acme.tenant_id, paused, NOW)
    with transaction(runtime.sessions) as session:
        campaigns.pause_campaign(
            session=session, tenant_id=acme.tenant_id, campaign_id=paused, now=NOW
        )
        assert complete_finished_campaigns(session=session, now=NOW) == []
    assert seed.campaign_row(runtime, draft).status == CampaignStatus.draft
    assert seed.campaign_row(runtime, paused).status == CampaignStatus.paused


def test_an_empty_audience_completes_at_the_next_pass(runtime: Runtime, acme: TenantKeys) -> None:
    template = seed.template(runtime, acme.tenant_id)
    empty = seed.contact_list(runtime, acme.tenant_id, "empty", [])
    campaign_id = _draft(runtime, acme.tenant_id, template_id=template, list_ids=[empty])
    assert _start(runtime, acme.tenant_id, campaign_id, NOW) == "running"
    with transaction(runtime.sessions) as session:
        assert complete_finished_campaigns(session=session, now=NOW) == [campaign_id]
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 0


def test_a_message_coming_back_from_a_worker_follows_its_campaigns_pause_or_cancel(
    runtime: Runtime, acme: TenantKeys
) -> None:
    template = seed.template(runtime, acme.tenant_id)
    ids = seed.people(runtime, acme.tenant_id, 1)
    by_status = {}
    for final in ("running", "paused", "cancelled"):
        campaign_id = _draft(runtime, acme.tenant_id, template_id=template, contact_ids=ids)
        _start(runtime, acme.tenant_id, campaign_id, NOW)
        [row] = seed.messages_of(runtime, campaign_id)
        seed.set_status(runtime, [row.id], "sending")  # claimed before the pause / cancel
        with transaction(runtime.sessions) as session:
            if final == "paused":
                campaigns.pause_campaign(
                    session=session, tenant_id=acme.tenant_id, campaign_id=campaign_id, now=NOW
                )
            if final == "cancelled":
                campaigns.cancel_campaign(
                    session=session, tenant_id=acme.tenant_id, campaign_id=campaign_id, now=NOW
                )
        with transaction(runtime.sessions) as session:  # the worker's retry write
            session.execute(
                update(Message).where(Message.id == row.id).values(status=requeue_status())
            )
        by_status[final] = seed.messages_of(runtime, campaign_id)[0].status
    assert by_status == {"running": "queued", "paused": "paused", "cancelled": "cancelled"}


def test_a_worker_writes_a_preparing_campaigns_chunks_and_sends_every_message_once(
    runtime: Runtime, acme: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started through the service, as the API and the dashboard do: the first chunk goes at
    once, a real worker writes the others and sends them all, and the campaign completes."""
    monkeypatch.setattr(fanout, "FANOUT_CHUNK", 5)
    template = seed.template(runtime, acme.tenant_id)
    ids = seed.people(runtime, acme.tenant_id, 12)
    campaign_id = _draft(
        runtime,
        acme.tenant_id,
        template_id=template,
        contact_ids=ids,
        data={"personal_message": "Grades are due."},
    )
    assert _start(runtime, acme.tenant_id, campaign_id, datetime.now(UTC)) == "preparing"
    transport = MemoryTransport()
    worker = Worker(runtime=runtime, transport=transport)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            async with asyncio.timeout(20):
                # The database holds the state; there is no event to wait on.
                while seed.campaign_row(runtime, campaign_id).status != "completed":  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
        finally:
            stop.set()
            await task

    asyncio.run(main())
    assert sorted(m.to_address for m in transport.sent) == sorted(
        m.to_address for m in seed.messages_of(runtime, campaign_id)
    )
    assert len(transport.sent) == 12 == seed.campaign_row(runtime, campaign_id).recipient_count
