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
from tidings.db.models import Campaign, Contact, Event, Message, Segment
from tidings.delivery.worker import MAINTENANCE_SECONDS, Worker
from tidings.domain import CampaignStatus
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


def test_a_preparing_campaign_never_completes_early(runtime: Runtime, acme: TenantKeys) -> None:
    campaign_id, _ = _preparing(runtime, acme.tenant_id, 4, chunk_size=2)
    with transaction(runtime.sessions) as session:  # its first chunk finished
        session.execute(
            update(Message).where(Message.campaign_id == campaign_id).values(status="sent")
        )
    with transaction(runtime.sessions) as session:
        assert complete_finished_campaigns(session=session, now=NOW) == []


def _act(runtime: Runtime, tenant_id: int, campaign_id: int, action: str) -> str:
    """Pause or resume through the service, as the API, the dashboard and the CLI do."""
    verb = {"pause": campaigns.pause_campaign, "resume": campaigns.resume_campaign}[action]
    with transaction(runtime.sessions) as session:
        return verb(session=session, tenant_id=tenant_id, campaign_id=campaign_id, now=NOW).status


def _state(runtime: Runtime, campaign_id: int) -> tuple[str, int, int | None, dict[str, int]]:
    """(status, recipient_count, fanout_cursor, messages by status)."""
    row = seed.campaign_row(runtime, campaign_id)
    by_status: dict[str, int] = {}
    for message in seed.messages_of(runtime, campaign_id):
        by_status[message.status] = by_status.get(message.status, 0) + 1
    return row.status, row.recipient_count, row.fanout_cursor, by_status


def test_a_campaign_paused_while_preparing_gets_the_rest_written_held_and_stays_paused(
    runtime: Runtime, acme: TenantKeys
) -> None:
    campaign_id, ids = _preparing(runtime, acme.tenant_id, 10, chunk_size=4)
    assert _act(runtime, acme.tenant_id, campaign_id, "pause") == "paused"
    # What was queued is held, exactly as pausing a running campaign does.
    assert _state(runtime, campaign_id) == ("paused", 4, ids[3], {"paused": 4})
    assert not prepare_campaign(
        runtime.sessions, campaign_id, ttl_seconds=TTL, chunk_size=4, keep_going=_chunks(1)
    )
    assert _state(runtime, campaign_id) == ("paused", 8, ids[7], {"paused": 8})
    assert prepare_campaign(runtime.sessions, campaign_id, ttl_seconds=TTL, chunk_size=4)
    assert _state(runtime, campaign_id) == ("paused", 10, None, {"paused": 10})
    with transaction(runtime.sessions) as session:
        assert complete_finished_campaigns(session=session, now=NOW) == []
    # Written: a resume makes it run, every message queued once.
    assert _act(runtime, acme.tenant_id, campaign_id, "resume") == "running"
    assert _state(runtime, campaign_id) == ("running", 10, None, {"queued": 10})
    assert sorted(m.contact_id or 0 for m in seed.messages_of(runtime, campaign_id)) == ids


def test_other_tenants_contacts_between_are_skipped_not_walked_in_empty_chunks(
    runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    """A tenant whose contacts lie far up the id range (others' came first) is fanned out from
    its own first contact: 4 contacts behind 30 of another tenant's, spans of 10 ids, are one
    chunk, not three empty ones first."""
    template = seed.template(runtime, acme.tenant_id)
    seed.people(runtime, globex.tenant_id, 30)
    ids = seed.people(runtime, acme.tenant_id, 4)
    campaign_id = _draft(runtime, acme.tenant_id, template_id=template, contact_ids=ids)
    with transaction(runtime.sessions) as session:
        first = fan_out_campaign(
            session=session,
            campaign=session.get_one(Campaign, campaign_id),
            now=NOW,
            ttl_seconds=TTL,
            chunk_span=10,
        )
    assert first.done
    assert sorted(m.contact_id or 0 for m in seed.messages_of(runtime, campaign_id)) == ids


def test_a_sparse_segment_fans_out_in_chunks_of_bounded_id_span_each_contact_once(
    runtime: Runtime, acme: TenantKeys
) -> None:
    """A chunk never reads past ``span`` ids looking for matches: 5 matches among 40 contacts are
    written in spans of 10 ids, each committed on its own, each contact once, and a pause taken
    between two of them holds the rest. (Chunks of 2: the search for a chunk's second match stops
    at the span's end too.)"""
    template = seed.template(runtime, acme.tenant_id)
    ids = seed.people(runtime, acme.tenant_id, 40)
    chosen = ids[3::8]
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Contact).where(Contact.id.in_(chosen)).values(attributes={"vip": True})
        )
        segment = Segment(
            tenant_id=acme.tenant_id,
            name="vip",
            filter={"field": "attributes.vip", "op": "eq", "value": True},
            created_at=NOW,
            updated_at=NOW,
        )
        session.add(segment)
        session.flush()
        segment_id = segment.id
    campaign_id = _draft(runtime, acme.tenant_id, template_id=template, segment_ids=[segment_id])
    span = 10
    with transaction(runtime.sessions) as session:
        first = fan_out_campaign(
            session=session,
            campaign=session.get_one(Campaign, campaign_id),
            now=NOW,
            ttl_seconds=TTL,
            chunk_size=2,
            chunk_span=span,
        )
    assert not first.done  # 5 matches, far fewer than a chunk, and still not read in one go

    def written() -> list[int]:
        return sorted(m.contact_id or 0 for m in seed.messages_of(runtime, campaign_id))

    cursor = seed.campaign_row(runtime, campaign_id).fanout_cursor
    assert cursor == ids[0] - 1 + span  # the span starts at the tenant's first contact
    assert written() == [c for c in chosen if c <= cursor]
    assert _act(runtime, acme.tenant_id, campaign_id, "pause") == "paused"
    chunks = 1
    while not prepare_campaign(
        runtime.sessions,
        campaign_id,
        ttl_seconds=TTL,
        chunk_size=2,
        chunk_span=span,
        keep_going=_chunks(1),
    ):
        chunks += 1
        assert seed.campaign_row(runtime, campaign_id).fanout_cursor == cursor + span
        cursor += span
        assert written() == [c for c in chosen if c <= cursor]
    # One chunk per span of ids, the last takes the rest.
    assert chunks + 1 == -(-(ids[-1] - ids[0] + 1) // span)
    assert _state(runtime, campaign_id) == ("paused", 5, None, {"paused": 5})
    assert _act(runtime, acme.tenant_id, campaign_id, "resume") == "running"
    assert _state(runtime, campaign_id) == ("running", 5, None, {"queued": 5})
    assert written() == chosen


def test_a_campaign_resumed_while_still_preparing_prepares_again_and_then_runs(
    runtime: Runtime, acme: TenantKeys
) -> None:
    campaign_id, ids = _preparing(runtime, acme.tenant_id, 10, chunk_size=4)
    _act(runtime, acme.tenant_id, campaign_id, "pause")
    prepare_campaign(
        runtime.sessions, campaign_id, ttl_seconds=TTL, chunk_size=4, keep_going=_chunks(1)
    )
    assert _act(runtime, acme.tenant_id, campaign_id, "resume") == "preparing"
    assert _state(runtime, campaign_id) == ("preparing", 8, ids[7], {"queued": 8})
    with transaction(runtime.sessions) as session:  # its chunks so far all went out
        session.execute(
            update(Message).where(Message.campaign_id == campaign_id).values(status="sent")
        )
    with transaction(runtime.sessions) as session:
        assert complete_finished_campaigns(session=session, now=NOW) == []
    assert prepare_campaign(runtime.sessions, campaign_id, ttl_seconds=TTL, chunk_size=4)
    assert _state(runtime, campaign_id) == ("running", 10, None, {"sent": 8, "queued": 2})
    # Paused and resumed again once it runs: the ordinary pause.
    assert _act(runtime, acme.tenant_id, campaign_id, "pause") == "paused"
    assert _act(runtime, acme.tenant_id, campaign_id, "resume") == "running"


def test_a_worker_that_finished_a_paused_fan_out_leaves_it_to_a_late_second_worker(
    runtime: Runtime, acme: TenantKeys
) -> None:
    """A worker whose lease lapsed while it wrote (another took over and finished) finds the
    campaign paused with no cursor: it must not write the audience again from the start."""
    campaign_id, _ = _preparing(runtime, acme.tenant_id, 6, chunk_size=2)
    _act(runtime, acme.tenant_id, campaign_id, "pause")
    assert prepare_campaign(runtime.sessions, campaign_id, ttl_seconds=TTL, chunk_size=2)
    assert prepare_campaign(
        runtime.sessions, campaign_id, ttl_seconds=TTL, chunk_size=2, keep_going=_chunks(1)
    )
    assert _state(runtime, campaign_id) == ("paused", 6, None, {"paused": 6})


def test_a_campaign_paused_while_preparing_is_leased_and_taken_over_but_not_once_written(
    runtime: Runtime, acme: TenantKeys
) -> None:
    campaign_id, _ = _preparing(runtime, acme.tenant_id, 6, chunk_size=2)
    _act(runtime, acme.tenant_id, campaign_id, "pause")

    def take(at: datetime) -> list[int]:
        with transaction(runtime.sessions) as session:
            return take_preparing(session=session, now=at, lease_seconds=30)

    assert take(NOW) == [campaign_id]
    assert take(NOW + timedelta(seconds=29)) == []
    assert take(NOW + timedelta(seconds=30)) == [campaign_id]  # its worker died
    assert prepare_campaign(runtime.sessions, campaign_id, ttl_seconds=TTL, chunk_size=2)
    assert take(NOW + timedelta(days=1)) == []  # written: a paused campaign like any other


def test_a_worker_stopping_gives_up_the_lease_of_a_campaign_paused_while_preparing(
    runtime: Runtime, acme: TenantKeys
) -> None:
    campaign_id, _ = _preparing(runtime, acme.tenant_id, 6, chunk_size=2)
    _act(runtime, acme.tenant_id, campaign_id, "pause")
    # It writes one chunk (its lease now runs 30 s more), then stops.
    assert not prepare_campaign(
        runtime.sessions, campaign_id, ttl_seconds=TTL, chunk_size=2, keep_going=_chunks(1)
    )
    with transaction(runtime.sessions) as session:  # another worker may go on at once
        assert take_preparing(session=session, now=datetime.now(UTC), lease_seconds=30) == [
            campaign_id
        ]


def test_a_pause_committed_while_a_chunk_waits_for_the_campaign_is_seen_by_that_chunk(
    runtime: Runtime, acme: TenantKeys
) -> None:
    """The chunk's transaction locks the campaign row before it reads the status: a pause that
    holds the row makes it wait, and the chunk it then writes is held too, not queued."""
    campaign_id, ids = _preparing(runtime, acme.tenant_id, 6, chunk_size=2)
    wrote = threading.Event()

    def worker() -> None:
        prepare_campaign(
            runtime.sessions, campaign_id, ttl_seconds=TTL, chunk_size=2, keep_going=_chunks(1)
        )
        wrote.set()

    with transaction(runtime.sessions) as session:
        campaigns.pause_campaign(
            session=session, tenant_id=acme.tenant_id, campaign_id=campaign_id, now=NOW
        )
        session.flush()
        other = threading.Thread(target=worker)
        other.start()
        assert not wrote.wait(timeout=1.0)  # it waits for the pause to commit
    other.join(timeout=10)
    assert wrote.is_set()
    assert _state(runtime, campaign_id) == ("paused", 4, ids[3], {"paused": 4})


def test_a_pause_waiting_for_a_chunks_transaction_holds_that_chunk_too(
    runtime: Runtime, acme: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other order: a chunk is being written (queued) when the pause comes; the pause waits
    for the chunk's commit, then holds the new messages with the rest."""
    campaign_id, ids = _preparing(runtime, acme.tenant_id, 6, chunk_size=2)
    written, go_on = threading.Event(), threading.Event()
    write_chunk = fanout._write_chunk

    def slow_write(*args: object, **kwargs: object) -> tuple[int | None, int]:
        result = write_chunk(*args, **kwargs)  # type: ignore[arg-type]
        written.set()
        assert go_on.wait(timeout=10)
        return result

    monkeypatch.setattr(fanout, "_write_chunk", slow_write)
    chunk = threading.Thread(
        target=prepare_campaign,
        args=(runtime.sessions, campaign_id),
        kwargs={"ttl_seconds": TTL, "chunk_size": 2, "keep_going": _chunks(1)},
    )
    chunk.start()
    assert written.wait(timeout=10)
    paused = threading.Event()

    def pause() -> None:
        _act(runtime, acme.tenant_id, campaign_id, "pause")
        paused.set()

    pauser = threading.Thread(target=pause)
    pauser.start()
    assert not paused.wait(timeout=1.0)  # it waits for the chunk's transaction
    go_on.set()
    chunk.join(timeout=10)
    pauser.join(timeout=10)
    assert paused.is_set()
    assert _state(runtime, campaign_id) == ("paused", 4, ids[3], {"paused": 4})


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


def test_a_campaign_paused_while_preparing_sends_nothing_until_resumed_then_everyone_once(
    runtime: Runtime, acme: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real worker: the campaign is paused with 5 of its 12 messages written; the worker writes
    the other 7 and sends none of them; after the resume it sends each of the 12 once."""
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
    assert _act(runtime, acme.tenant_id, campaign_id, "pause") == "paused"
    transport = MemoryTransport()
    worker = Worker(runtime=runtime, transport=transport)
    seen: dict[str, object] = {}

    async def wait_for(done: Callable[[], bool]) -> None:
        while not await asyncio.to_thread(done):  # noqa: ASYNC110 (the state is in the database)
            await asyncio.sleep(0.1)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            async with asyncio.timeout(30):
                await wait_for(
                    lambda: seed.campaign_row(runtime, campaign_id).fanout_cursor is None
                )
                # A few more passes of the worker: a held message it could claim would go now.
                await asyncio.sleep(2 * MAINTENANCE_SECONDS)
                seen["held"] = await asyncio.to_thread(_state, runtime, campaign_id)
                seen["sent while paused"] = list(transport.sent)
                seen["resumed"] = await asyncio.to_thread(
                    _act, runtime, acme.tenant_id, campaign_id, "resume"
                )
                await wait_for(
                    lambda: seed.campaign_row(runtime, campaign_id).status == "completed"
                )
        finally:
            stop.set()
            await task

    asyncio.run(main())
    assert seen["held"] == ("paused", 12, None, {"paused": 12})
    assert seen["sent while paused"] == []
    assert seen["resumed"] == "running"
    addresses = [m.to_address for m in transport.sent]
    assert len(addresses) == 12 == len(set(addresses))
    assert sorted(addresses) == sorted(m.to_address for m in seed.messages_of(runtime, campaign_id))
    assert _state(runtime, campaign_id) == ("completed", 12, None, {"sent": 12})
