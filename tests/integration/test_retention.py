"""``TIDINGS_RETENTION_DAYS``: old message bodies and events are purged in small batches by the
workers' maintenance; message rows, campaign figures and the guardrails' evidence stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from tidings.db.engine import transaction
from tidings.db.models import (
    Campaign,
    Event,
    Message,
    RetentionCursor,
    Template,
    TrackingHit,
)
from tidings.delivery.worker import Worker
from tidings.domain import CampaignStatus, EventType, MessageStatus
from tidings.queue.retention import purge_expired
from tidings.runtime import Runtime
from tidings.services.campaigns import campaign_progress
from tidings.transports.memory import MemoryTransport

OLD = datetime.now(UTC) - timedelta(days=200)
YOUNG = datetime.now(UTC) - timedelta(days=10)
BODY: dict[str, Any] = {"subject": "s", "html": "<p>h</p>", "text": "t", "data": {"k": "v"}}


def _campaign(session: Any, tenant_id: int, status: CampaignStatus) -> int:
    template = Template(
        tenant_id=tenant_id,
        name=f"t-{status.value}",
        subject="s",
        created_at=OLD,
        updated_at=OLD,
    )
    session.add(template)
    session.flush()
    campaign = Campaign(
        tenant_id=tenant_id,
        name=status.value,
        template_id=template.id,
        status=status.value,
        created_at=OLD,
    )
    session.add(campaign)
    session.flush()
    return int(campaign.id)


def _message(
    session: Any, tenant_id: int, at: datetime, status: MessageStatus, **extra: Any
) -> int:
    message = Message(
        tenant_id=tenant_id,
        to_address=f"r{at.timestamp()}{status.value}@example.com",
        status=status.value,
        not_before=at,
        expires_at=at + timedelta(days=5),
        created_at=at,
        updated_at=at,
        **BODY,
        **extra,
    )
    session.add(message)
    session.flush()
    return int(message.id)


def _event(session: Any, tenant_id: int, at: datetime, kind: EventType, **extra: Any) -> int:
    event = Event(tenant_id=tenant_id, type=kind.value, detail="d", created_at=at, **extra)
    session.add(event)
    session.flush()
    return int(event.id)


def seed(runtime: Runtime) -> dict[str, Any]:
    with transaction(runtime.sessions) as session:
        from tidings.services import tenants

        tenant, _ = tenants.create_tenant(session=session, name="acme", now=OLD)
        t = tenant.id
        ended = _campaign(session, t, CampaignStatus.completed)
        running = _campaign(session, t, CampaignStatus.running)
        ids: dict[str, Any] = {
            "tenant": t,
            "ended": ended,
            "old_sent": [
                _message(session, t, OLD, MessageStatus.sent, campaign_id=ended, contact_id=i)
                for i in range(1, 8)
            ],
            "old_failed": _message(session, t, OLD, MessageStatus.failed),
            "old_queued": _message(session, t, OLD, MessageStatus.queued),
            "young_sent": _message(session, t, YOUNG, MessageStatus.sent),
            "old_events": [_event(session, t, OLD, EventType.sent) for _ in range(5)],
            "old_audit": _event(session, t, OLD, EventType.contact_erased, contact_id=99),
            "old_signal_running": _event(
                session, t, OLD, EventType.bounced, campaign_id=running, message_id=1
            ),
            "old_signal_ended": _event(
                session, t, OLD, EventType.bounced, campaign_id=ended, message_id=1
            ),
            "young_event": _event(session, t, YOUNG, EventType.sent),
        }
    return ids


def bodies(runtime: Runtime) -> dict[int, tuple[Any, ...]]:
    with runtime.sessions() as session:
        return {
            m.id: (m.subject, m.html, m.text, m.data)
            for m in session.scalars(select(Message).order_by(Message.id))
        }


def event_ids(runtime: Runtime) -> set[int]:
    with runtime.sessions() as session:
        return set(session.scalars(select(Event.id)))


def progress(runtime: Runtime, campaign_id: int) -> Any:
    with runtime.sessions() as session:
        campaign = session.get_one(Campaign, campaign_id)
        return campaign_progress(session=session, campaigns=[campaign], now=datetime.now(UTC))[
            campaign_id
        ]


def test_old_bodies_and_events_are_purged_and_the_rest_stays(runtime: Runtime) -> None:
    ids = seed(runtime)
    figures = progress(runtime, ids["ended"])
    rows_before = len(bodies(runtime))

    result = purge_expired(runtime.sessions, retention_days=180, batch=2, budget=60)

    assert result.done and result.bodies == 8 and result.events == 6
    assert result.batches >= 8  # batches of 2, never the whole table at once
    after = bodies(runtime)
    assert len(after) == rows_before  # no message row is ever deleted
    for message_id in [*ids["old_sent"], ids["old_failed"]]:
        assert after[message_id] == (None, None, None, None)
    kept = tuple(BODY.values())
    assert after[ids["old_queued"]] == kept  # still pending: not the purge's to take
    assert after[ids["young_sent"]] == kept
    assert event_ids(runtime) == {
        ids["old_audit"],
        ids["old_signal_running"],
        ids["young_event"],
    }
    assert progress(runtime, ids["ended"]) == figures


def test_a_second_pass_starts_where_the_first_stopped(runtime: Runtime) -> None:
    seed(runtime)
    purge_expired(runtime.sessions, retention_days=180, batch=2, budget=60)
    with runtime.sessions() as session:
        cursors = dict(session.execute(select(RetentionCursor.name, RetentionCursor.last_id)).all())
    assert set(cursors) == {"message_bodies", "events", "tracking_hits"}

    again = purge_expired(runtime.sessions, retention_days=180, batch=2, budget=60)

    assert (again.bodies, again.events, again.batches) == (0, 0, 3)  # one look per table


def test_a_pass_stops_at_its_budget_and_the_next_goes_on(runtime: Runtime) -> None:
    seed(runtime)
    ticks = iter(range(1000))

    first = purge_expired(
        runtime.sessions,
        retention_days=180,
        batch=2,
        budget=3,
        clock=lambda: next(ticks),
        sleep=lambda _: None,
    )

    assert not first.done and first.bodies <= 4
    rest = purge_expired(runtime.sessions, retention_days=180, batch=2, budget=60)
    assert rest.done and first.bodies + rest.bodies == 8 and rest.events == 6


def test_zero_days_purges_nothing(runtime: Runtime) -> None:
    seed(runtime)
    before = bodies(runtime)
    assert purge_expired(runtime.sessions, retention_days=0).batches == 0
    assert bodies(runtime) == before


def test_the_workers_maintenance_pass_purges(runtime: Runtime) -> None:
    ids = seed(runtime)

    Worker(runtime=runtime, transport=MemoryTransport())._maintenance_pass()

    assert bodies(runtime)[ids["old_failed"]] == (None, None, None, None)
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Event)) == 3


def test_old_tracking_hits_go_and_young_ones_stay(runtime: Runtime) -> None:
    ids = seed(runtime)
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        for at, agent in ((now - timedelta(days=400), "old"), (now, "young")):
            session.add(
                TrackingHit(
                    tenant_id=ids["tenant"],
                    message_id=ids["young_sent"],
                    kind="click",
                    link_index=1,
                    machine=False,
                    user_agent=agent,
                    network="198.51.100.0/24",
                    created_at=at,
                )
            )

    result = purge_expired(runtime.sessions, retention_days=180, batch=2, budget=60)

    assert result.hits == 1
    with runtime.sessions() as session:
        assert list(session.scalars(select(TrackingHit.user_agent))) == ["young"]
