"""Reputation guardrails: a running campaign pauses itself when bounces or complaints pass a limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from tests.conftest import TenantKeys
from tests.integration.campaign_seed import campaign_row, people, template
from tidings.db.engine import transaction
from tidings.db.models import Campaign, Event, Message
from tidings.queue.compliance import enforce_guardrails
from tidings.runtime import Runtime

LIMITS = {"min_sample": 200, "bounce_rate": 0.05, "complaint_rate": 0.003}


def running_campaign(
    runtime: Runtime,
    tenant_id: int,
    *,
    sent: int = 0,
    failed: int = 0,
    queued: int = 0,
    bounced: int = 0,
    complained: int = 0,
    status: str = "running",
) -> int:
    """A campaign with messages in those statuses and bounce/complaint events on the first sent ones."""
    total = sent + failed + queued
    contact_ids = people(runtime, tenant_id, total, prefix=f"c{datetime.now(UTC).timestamp()}-")
    template_id = template(runtime, tenant_id, name=f"t{contact_ids[0]}")
    now = datetime.now(UTC)
    statuses = ["sent"] * sent + ["failed"] * failed + ["queued"] * queued
    with transaction(runtime.sessions) as session:
        row = Campaign(
            tenant_id=tenant_id,
            name=f"c{contact_ids[0]}",
            template_id=template_id,
            list_ids=[],
            contact_ids=[],
            data={},
            status=status,
            recipient_count=total,
            created_at=now,
        )
        session.add(row)
        session.flush()
        rows: list[dict[str, Any]] = [
            {
                "tenant_id": tenant_id,
                "campaign_id": row.id,
                "contact_id": contact_id,
                "to_address": f"{contact_id}@example.com",
                "priority": 5,
                "status": state,
                "not_before": now,
                "expires_at": now + timedelta(days=1),
                "attempts": 1,
                "lease_expiries": 0,
                "created_at": now,
                "updated_at": now,
            }
            for contact_id, state in zip(contact_ids, statuses, strict=True)
        ]
        session.execute(insert(Message), rows)
        ids = list(
            session.scalars(
                select(Message.id).where(Message.campaign_id == row.id).order_by(Message.id)
            )
        )
        signals = [("bounced", i) for i in ids[:bounced]] + [
            ("complained", i) for i in ids[:complained]
        ]
        if signals:
            session.execute(
                insert(Event),
                [
                    {
                        "tenant_id": tenant_id,
                        "message_id": message_id,
                        "campaign_id": row.id,
                        "type": kind,
                        "detail": "550 5.1.1 no such user",
                        "created_at": now,
                    }
                    for kind, message_id in signals
                ],
            )
        return row.id


def guard(runtime: Runtime, **overrides: Any) -> list[int]:
    with transaction(runtime.sessions) as session:
        return enforce_guardrails(session=session, now=datetime.now(UTC), **(LIMITS | overrides))


def pause_events(runtime: Runtime, campaign_id: int) -> list[str | None]:
    with runtime.sessions() as session:
        return list(
            session.scalars(
                select(Event.detail).where(
                    Event.campaign_id == campaign_id, Event.type == "campaign_paused"
                )
            )
        )


def message_statuses(runtime: Runtime, campaign_id: int) -> set[str]:
    with runtime.sessions() as session:
        return set(
            session.scalars(select(Message.status).where(Message.campaign_id == campaign_id))
        )


def test_a_bounce_rate_over_the_limit_pauses_the_campaign_and_says_why(
    runtime: Runtime, acme: TenantKeys
) -> None:
    bad = running_campaign(runtime, acme.tenant_id, sent=150, failed=50, queued=20, bounced=11)
    fine = running_campaign(runtime, acme.tenant_id, sent=200, queued=5, bounced=10)  # 5.0 %
    assert guard(runtime) == [bad]
    paused = campaign_row(runtime, bad)
    assert paused.status == "paused"
    reason = "guardrail: hard-bounce rate 5.5% (11 of 200 attempts) passed the limit of 5.0%"
    assert paused.status_reason == reason
    assert pause_events(runtime, bad) == [reason]
    assert message_statuses(runtime, bad) == {"sent", "failed", "paused"}
    assert campaign_row(runtime, fine).status == "running"
    assert guard(runtime) == []  # already paused: nothing more happens


def test_a_complaint_rate_over_the_limit_pauses_the_campaign(
    runtime: Runtime, acme: TenantKeys
) -> None:
    bad = running_campaign(runtime, acme.tenant_id, sent=250, queued=3, complained=1)
    assert guard(runtime) == [bad]
    assert campaign_row(runtime, bad).status_reason == (
        "guardrail: complaint rate 0.40% (1 of 250 delivered) passed the limit of 0.30%"
    )


def test_nothing_happens_below_the_minimum_sample(runtime: Runtime, acme: TenantKeys) -> None:
    small = running_campaign(runtime, acme.tenant_id, sent=100, queued=10, bounced=50)
    assert guard(runtime) == []
    assert campaign_row(runtime, small).status == "running"
    assert guard(runtime, min_sample=100) == [small]


def test_several_reports_of_one_bounce_count_once(runtime: Runtime, acme: TenantKeys) -> None:
    campaign_id = running_campaign(runtime, acme.tenant_id, sent=200, bounced=10)
    with transaction(runtime.sessions) as session:
        first_bounced = session.scalars(
            select(Event).where(Event.campaign_id == campaign_id, Event.type == "bounced")
        ).first()
        assert first_bounced is not None
        session.add_all(
            Event(
                tenant_id=acme.tenant_id,
                message_id=first_bounced.message_id,
                campaign_id=campaign_id,
                type="bounced",
                detail="DSN 5.1.1",
                created_at=datetime.now(UTC),
            )
            for _ in range(5)
        )
    assert guard(runtime) == []


def test_a_campaign_resumed_after_a_guardrail_pause_is_not_paused_again(
    runtime: Runtime, acme: TenantKeys
) -> None:
    from tidings.services.campaigns import resume_campaign

    campaign_id = running_campaign(runtime, acme.tenant_id, sent=200, queued=5, bounced=30)
    assert guard(runtime) == [campaign_id]
    with transaction(runtime.sessions) as session:
        resume_campaign(
            session=session,
            tenant_id=acme.tenant_id,
            campaign_id=campaign_id,
            now=datetime.now(UTC),
        )
    assert guard(runtime) == []
    assert campaign_row(runtime, campaign_id).status == "running"
    assert message_statuses(runtime, campaign_id) == {"sent", "queued"}


def test_only_running_campaigns_are_looked_at(runtime: Runtime, acme: TenantKeys) -> None:
    done = running_campaign(runtime, acme.tenant_id, sent=200, bounced=100, status="completed")
    paused = running_campaign(runtime, acme.tenant_id, sent=200, bounced=100, status="paused")
    assert guard(runtime) == []
    assert campaign_row(runtime, done).status == "completed"
    assert pause_events(runtime, paused) == []
