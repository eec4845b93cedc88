"""``GET /v1/campaigns/{id}/stats``: the figures of a small campaign with people's and machines'
opens and clicks, read from summaries only, and never another tenant's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import insert, select, update

from tests.conftest import TenantKeys
from tests.integration.test_tracking_routes import statements
from tidings import tokens
from tidings.db.engine import transaction
from tidings.db.models import Campaign, Contact, Event, Message, Template, table
from tidings.runtime import Runtime
from tidings.tracking.hits import flush
from tidings.tracking.record import Hit

PERSON = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120 Safari/537.36"
HOME = "203.0.113.0/24"
SENT = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
SHOP, BLOG = "https://shop.example.com/", "https://blog.example.com/"


def seed_campaign(
    runtime: Runtime, tenant_id: int, statuses: list[str], *, prefix: str = ""
) -> tuple[int, list[int]]:
    """A completed campaign whose messages have ``statuses``, sent at ``SENT`` (``prefix`` names
    its template, contacts and itself apart from another seeded in the same tenant)."""
    with transaction(runtime.sessions) as session:
        template = Template(
            tenant_id=tenant_id,
            name=f"{prefix}t",
            subject="s",
            html="<p>x</p>",
            created_at=SENT,
            updated_at=SENT,
        )
        session.add(template)
        session.flush()
        campaign = Campaign(
            tenant_id=tenant_id,
            name=f"{prefix}c",
            template_id=template.id,
            list_ids=[],
            contact_ids=[],
            data={},
            status="completed",
            recipient_count=len(statuses),
            created_at=SENT,
            started_at=SENT,
        )
        session.add(campaign)
        session.flush()
        contact_ids = []
        for i in range(len(statuses)):
            contact = Contact(
                tenant_id=tenant_id,
                email=f"{prefix}r{i}@example.com",
                attributes={},
                status="active",
                created_at=SENT,
                updated_at=SENT,
            )
            session.add(contact)
            session.flush()
            contact_ids.append(contact.id)
        session.execute(
            insert(table(Message)),
            [
                {
                    "tenant_id": tenant_id,
                    "campaign_id": campaign.id,
                    "contact_id": contact_ids[i],
                    "to_address": f"{prefix}r{i}@example.com",
                    "status": status,
                    "priority": 5,
                    "not_before": SENT,
                    "expires_at": SENT + timedelta(days=5),
                    "attempts": 1,
                    "lease_expiries": 0,
                    "created_at": SENT,
                    "updated_at": SENT,
                    "sent_at": SENT if status == "sent" else None,
                }
                for i, status in enumerate(statuses)
            ],
        )
        ids = list(
            session.scalars(
                select(Message.id).where(Message.campaign_id == campaign.id).order_by(Message.id)
            )
        )
        return campaign.id, ids


def hit(
    tenant_id: int,
    message_id: int,
    kind: str,
    seconds: float,
    *,
    link: int | None = None,
    agent: str = PERSON,
    network: str = HOME,
) -> Hit:
    url = {1: SHOP, 2: BLOG}.get(link or 0)
    return Hit(
        kind,  # type: ignore[arg-type]
        tenant_id,
        message_id,
        link,
        url,
        SENT + timedelta(seconds=seconds),
        agent,
        network,
    )


def test_stats_of_a_small_campaign_count_people_and_machines_apart(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    t = acme.tenant_id
    campaign_id, (m1, m2, m3, m4, m5, _failed) = seed_campaign(
        runtime, t, ["sent", "sent", "sent", "sent", "sent", "failed"]
    )
    # Two flushes, as the buffer would make them: the second sees what the first wrote.
    flush(
        runtime,
        [
            hit(t, m1, "open", 600),  # a person, twice: unique 1, total 2
            hit(t, m1, "open", 3600),
            hit(t, m1, "click", 610, link=1),  # a person clicks the shop
            hit(t, m2, "open", 300, agent="Mozilla/5.0", network="17.58.1.0/24"),  # Apple MPP
            hit(t, m3, "click", 20, link=1),  # a scanner: two links within a second
            hit(t, m3, "click", 20.3, link=2),
            hit(t, m3, "honeypot", 20.5),
            hit(t, m4, "open", 1),  # fetched on delivery
        ],
    )
    flush(
        runtime,
        [
            hit(t, m2, "open", 7200),  # the person behind Apple's proxy, later
            hit(t, m1, "click", 4000, link=1),  # the shop again: total 2, unique still 1
            hit(t, m5, "click", 9000, link=2, agent="Barracuda Sentinel"),
        ],
    )
    with transaction(runtime.sessions) as session:
        for kind, message_id in (("bounced", m4), ("complained", m5), ("bounced", m4)):
            session.add(
                Event(
                    tenant_id=t,
                    message_id=message_id,
                    campaign_id=campaign_id,
                    type=kind,
                    created_at=SENT,
                )
            )
        contact_id = session.scalar(select(Message.contact_id).where(Message.id == m1))
        contact = session.get(Contact, contact_id)
        assert contact is not None
        created = tokens.contact_stamp(contact.created_at)
    unsubscribe = tokens.make_token(
        runtime.secret_key,
        kind="unsubscribe",
        tenant_id=t,
        message_id=m1,
        contact_created=created,
        category=None,
        now=datetime.now(UTC),
    )
    answer = client.post(f"/u/{unsubscribe}", data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200, answer.text

    with statements(runtime) as seen:
        stats = client.get(f"/v1/campaigns/{campaign_id}/stats", headers=acme.auth(acme.viewer))
    assert stats.status_code == 200, stats.text
    body = stats.json()
    figures = {k: v for k, v in body.items() if k not in ("links", "timeline")}
    assert figures == {
        "recipient_count": 6,
        "sent": 5,
        "delivered": 5,
        "bounced_hard": 1,  # one message, however many reports
        "bounced_soft": 0,
        "complaints": 1,
        "unsubscribes": 1,
        "opens_unique": 2,  # m1 and m2's person
        "opens_total": 3,
        "opens_machine": 2,  # Apple's proxy, the prefetch
        "clicks_unique": 1,
        "clicks_total": 2,
        "clicks_machine": 4,  # the burst's two, the honeypot, Barracuda
        "open_rate": 0.4,
        "click_rate": 0.2,
        "click_to_open_rate": 0.5,
        "bounce_rate": round(1 / 6, 4),
        "complaint_rate": 0.2,
        "unsubscribe_rate": 0.2,
        "interval_seconds": 300,
    }
    assert body["links"] == [
        {"url": SHOP, "clicks_unique": 1, "clicks_total": 2, "clicks_machine": 1},
        {"url": BLOG, "clicks_unique": 0, "clicks_total": 0, "clicks_machine": 2},
    ]
    timeline = body["timeline"]
    assert timeline[0]["at"].startswith("2026-11-30T09:00:00")
    assert sum(p["opens"] for p in timeline) == 3 and sum(p["clicks"] for p in timeline) == 2
    assert sum(p["opens_machine"] for p in timeline) == 2
    assert sum(p["clicks_machine"] for p in timeline) == 4
    # From summaries only: no statement reads the campaign's messages or hits.
    reads = " ".join(seen).lower()
    assert "from messages" not in reads and "tracking_hits" not in reads, seen


def test_stats_of_a_campaign_without_tracking_are_zeros(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    campaign_id, _ = seed_campaign(runtime, acme.tenant_id, ["sent", "sent", "queued"])
    body = client.get(f"/v1/campaigns/{campaign_id}/stats", headers=acme.auth(acme.viewer)).json()
    assert (body["sent"], body["opens_unique"], body["clicks_machine"]) == (2, 0, 0)
    assert body["links"] == [] and body["timeline"] == [] and body["open_rate"] == 0.0


def test_the_counts_follow_every_status_change(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    """``campaign_counts`` is kept by triggers: an UPDATE or DELETE typed anywhere counts."""
    campaign_id, ids = seed_campaign(runtime, acme.tenant_id, ["queued"] * 4)
    with transaction(runtime.sessions) as session:
        session.execute(update(Message).where(Message.id.in_(ids[:3])).values(status="sent"))
        session.execute(update(Message).where(Message.id == ids[0]).values(status="failed"))
    with transaction(runtime.sessions) as session:
        session.execute(Message.__table__.delete().where(Message.id == ids[3]))
    body = client.get(f"/v1/campaigns/{campaign_id}/stats", headers=acme.auth(acme.viewer)).json()
    assert body["sent"] == 2


def test_another_tenants_campaign_stats_are_a_404(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    campaign_id, _ = seed_campaign(runtime, acme.tenant_id, ["sent"])
    theirs = client.get(f"/v1/campaigns/{campaign_id}/stats", headers=globex.auth(globex.admin))
    missing = client.get("/v1/campaigns/999999/stats", headers=globex.auth(globex.admin))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()


def test_a_campaign_takes_tracking_overrides_and_a_patch_changes_or_clears_them(
    client: TestClient, acme: TenantKeys
) -> None:
    auth = acme.auth(acme.admin)
    template = client.post(
        "/v1/templates", json={"name": "t", "subject": "s", "html": "<p>x</p>"}, headers=auth
    ).json()["id"]
    contact = client.post("/v1/contacts", json={"email": "a@example.com"}, headers=auth).json()
    created = client.post(
        "/v1/campaigns",
        json={
            "name": "c",
            "template_id": template,
            "contact_ids": [contact["id"]],
            "track_opens": True,
        },
        headers=auth,
    ).json()
    assert (created["track_opens"], created["track_clicks"]) == (True, None)
    changed = client.patch(
        f"/v1/campaigns/{created['id']}",
        json={"track_opens": None, "track_clicks": False},
        headers=auth,
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["track_opens"], changed.json()["track_clicks"]) == (None, False)
    wrong = client.patch(
        f"/v1/campaigns/{created['id']}", json={"track_clicks": "no"}, headers=auth
    )
    assert wrong.status_code == 422
