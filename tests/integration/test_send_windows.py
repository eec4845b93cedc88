"""Sending windows through the API and the queue, on both databases: a message or a campaign outside
its window waits for the opening, each contact in its own zone; the claim sends back a message taken
outside its window unspent; the tenant's time zone in /v1/settings; bad windows are 422s naming the
field. Windows are placed minutes from now, so nothing waits for real.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.conftest import TenantKeys
from tests.integration import campaign_seed as seed
from tidings.db.engine import transaction
from tidings.db.models import Contact, Event, Message
from tidings.queue.claim import claim_batch
from tidings.runtime import Runtime

INLINE = {"subject": "Hello", "text": "Hi {{ name }}", "data": {"name": "there"}}


def opening_in(minutes: int, zone: str = "UTC") -> tuple[dict[str, Any], datetime]:
    """A one-hour window, every day, whose next opening is ``minutes`` (and a bit) from now."""
    local = (datetime.now(UTC) + timedelta(minutes=minutes)).astimezone(ZoneInfo(zone))
    start = local.replace(second=0, microsecond=0) + timedelta(minutes=1)
    end = start + timedelta(hours=1)
    body = {"start": f"{start:%H:%M}", "end": f"{end:%H:%M}", "timezone": zone}
    return body, start.astimezone(UTC)


def next_local(hour_minute: str, zone: str, now: datetime) -> datetime:
    """The next time the clock in ``zone`` shows ``hour_minute`` after ``now`` (no DST day assumed)."""
    hour, minute = map(int, hour_minute.split(":"))
    local = now.astimezone(ZoneInfo(zone))
    candidate = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if candidate <= local:
        candidate = (candidate.replace(tzinfo=None) + timedelta(days=1)).replace(
            tzinfo=ZoneInfo(zone)
        )
    return candidate.astimezone(UTC)


def _row(runtime: Runtime, message_id: int) -> Message:
    with runtime.sessions() as session:
        return session.get_one(Message, message_id)


def _send(client: TestClient, tenant: TenantKeys, **body: Any) -> Any:
    return client.post("/v1/messages", json={**INLINE, **body}, headers=tenant.auth(tenant.sender))


# -- /v1/settings -------------------------------------------------------------------------------


def test_the_tenants_time_zone_is_utc_until_an_admin_sets_it(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    read = client.get("/v1/settings", headers=acme.auth(acme.viewer))
    assert read.status_code == 200 and read.json()["timezone"] == "UTC"
    for key in (acme.viewer, acme.sender):
        refused = client.put(
            "/v1/settings", json={"timezone": "Europe/Berlin"}, headers=acme.auth(key)
        )
        assert refused.status_code == 403
    changed = client.put(
        "/v1/settings", json={"timezone": "Europe/Berlin"}, headers=acme.auth(acme.admin)
    )
    assert changed.status_code == 200 and changed.json()["timezone"] == "Europe/Berlin"
    assert (
        client.get("/v1/settings", headers=acme.auth(acme.viewer)).json()["timezone"]
        == "Europe/Berlin"
    )
    # Leaving the field out changes nothing; another tenant keeps its own.
    same = client.put("/v1/settings", json={}, headers=acme.auth(acme.admin))
    assert same.json()["timezone"] == "Europe/Berlin"
    assert (
        client.get("/v1/settings", headers=globex.auth(globex.viewer)).json()["timezone"] == "UTC"
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timezone": "Europe/Atlantis"}, "timezone"),
        ({"timezone": None}, "timezone"),
        ({"timezone": "/etc/localtime"}, "timezone"),
        ({"track_opens": "yes"}, "track_opens"),  # a JSON boolean only
    ],
)
def test_a_bad_setting_is_a_422_naming_it(
    client: TestClient, acme: TenantKeys, body: dict[str, Any], field: str
) -> None:
    answer = client.put("/v1/settings", json=body, headers=acme.auth(acme.admin))
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field


# -- messages -----------------------------------------------------------------------------------


def test_a_message_outside_its_window_waits_for_the_opening(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    window, opening = opening_in(2, "Asia/Kathmandu")  # UTC+05:45
    answer = _send(client, acme, to="ana@example.com", send_window=window, ttl_seconds=3600)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert datetime.fromisoformat(body["not_before"]) == opening
    assert datetime.fromisoformat(body["expires_at"]) == opening + timedelta(hours=1)
    assert body["send_window"] == {
        **window,
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
    }
    row = _row(runtime, body["id"])
    assert (row.window_timezone, row.send_window["timezone"]) == (
        "Asia/Kathmandu",
        "Asia/Kathmandu",
    )


def test_a_message_inside_its_window_goes_now_and_send_at_comes_first(
    client: TestClient, acme: TenantKeys
) -> None:
    local = datetime.now(UTC)
    open_now = {
        "start": f"{local - timedelta(minutes=30):%H:%M}",
        "end": f"{local + timedelta(minutes=30):%H:%M}",
        "timezone": "UTC",
    }
    before = datetime.now(UTC)
    now_body = _send(client, acme, to="bo@example.com", send_window=open_now).json()
    assert (
        before - timedelta(seconds=1)
        <= datetime.fromisoformat(now_body["not_before"])
        <= datetime.now(UTC)
    )
    # send_at after the window's close: the next day's opening.
    later = local + timedelta(hours=2)
    tomorrow = _send(
        client, acme, to="cy@example.com", send_window=open_now, send_at=later.isoformat()
    ).json()
    assert datetime.fromisoformat(tomorrow["not_before"]) == next_local(
        open_now["start"], "UTC", later
    )


def test_contact_time_reads_the_contacts_zone_then_the_tenants(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    client.put("/v1/settings", json={"timezone": "America/New_York"}, headers=acme.auth(acme.admin))
    tokyo, plain = seed.contacts(runtime, acme.tenant_id, ["ken@example.jp", "nobody@example.com"])
    with transaction(runtime.sessions) as session:
        session.execute(update(Contact).where(Contact.id == tokyo).values(timezone="Asia/Tokyo"))
    office = {"start": "09:00", "end": "17:00", "days": ["mon", "tue", "wed", "thu", "fri"]}
    first = _send(client, acme, contact_id=tokyo, send_window=office).json()
    second = _send(client, acme, to="nobody@example.com", send_window=office).json()
    stranger = _send(client, acme, to="stranger@example.org", send_window=office).json()
    # Plain text, nothing to render in any zone: the window still opens in the tenant's.
    literal = _send(client, acme, to="x@example.org", send_window=office, text="Plain.").json()
    assert literal["send_window"]["timezone"] == "America/New_York"
    assert first["send_window"]["timezone"] == "Asia/Tokyo"
    assert second["send_window"]["timezone"] == "America/New_York"  # a contact without a zone
    assert stranger["send_window"]["timezone"] == "America/New_York"  # no contact at all
    assert plain and first["send_window"]["days"] == office["days"]
    openings = {datetime.fromisoformat(b["not_before"]) for b in (first, second)}
    assert len(openings) == 2  # nine in Tokyo is not nine in New York


@pytest.mark.parametrize(
    ("window", "field"),
    [
        ({"start": "09:00"}, "send_window.end"),
        ({"start": "25:00", "end": "17:00"}, "send_window.start"),
        ({"start": "09:00", "end": "09:00"}, "send_window.end"),
        ({"start": "09:00", "end": "17:00", "days": ["someday"]}, "send_window.days"),
        ({"start": "09:00", "end": "17:00", "days": []}, "send_window.days"),
        ({"start": "09:00", "end": "17:00", "timezone": "Mars/Base"}, "send_window.timezone"),
        ({"start": "09:00", "end": "17:00", "tz": "UTC"}, "send_window.tz"),
        ({"start": 9, "end": "17:00"}, "send_window.start"),
    ],
)
def test_a_bad_window_is_a_422_naming_the_field_for_messages_and_campaigns(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    window: dict[str, Any],
    field: str,
) -> None:
    message = _send(client, acme, to="ana@example.com", send_window=window)
    assert message.status_code == 422, message.text
    assert message.json()["error"]["field"] == field
    template = seed.template(runtime, acme.tenant_id)
    (contact,) = seed.people(runtime, acme.tenant_id, 1)
    campaign = client.post(
        "/v1/campaigns",
        json={
            "name": "c",
            "template_id": template,
            "contact_ids": [contact],
            "send_window": window,
        },
        headers=acme.auth(acme.sender),
    )
    assert campaign.status_code == 422, campaign.text
    assert campaign.json()["error"]["field"] == field
    with runtime.sessions() as session:
        assert session.scalar(select(Message.id)) is None


# -- campaigns ----------------------------------------------------------------------------------


def _campaign(
    client: TestClient,
    tenant: TenantKeys,
    runtime: Runtime,
    contacts: list[int],
    window: dict[str, Any],
) -> dict[str, Any]:
    template = seed.template(runtime, tenant.tenant_id)
    created = client.post(
        "/v1/campaigns",
        json={
            "name": "Term",
            "template_id": template,
            "contact_ids": contacts,
            "send_window": window,
        },
        headers=tenant.auth(tenant.sender),
    )
    assert created.status_code == 201, created.text
    assert created.json()["send_window"]["start"] == window["start"]
    started = client.post(
        f"/v1/campaigns/{created.json()['id']}/start", headers=tenant.auth(tenant.sender)
    )
    assert started.status_code == 202, started.text
    body: dict[str, Any] = client.get(
        f"/v1/campaigns/{created.json()['id']}", headers=tenant.auth(tenant.viewer)
    ).json()
    return body


def test_a_campaign_outside_its_window_waits_for_the_opening(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    window, opening = opening_in(2, "Europe/Berlin")
    people = seed.people(runtime, acme.tenant_id, 5)
    body = _campaign(client, acme, runtime, people, window)
    assert (body["pending"], body["pending_until_window"]) == (5, 5)
    ttl = timedelta(seconds=runtime.settings.message_ttl_seconds)
    rows = seed.messages_of(runtime, body["id"])
    assert {(m.not_before, m.expires_at, m.window_timezone) for m in rows} == {
        (opening, opening + ttl, "Europe/Berlin")
    }
    with transaction(runtime.sessions) as session:
        claimed = claim_batch(session=session, owner="w", limit=10, lease_seconds=30)
    assert claimed.messages == []  # nothing is ready before the opening


def test_contacts_in_two_zones_get_their_own_openings(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    client.put("/v1/settings", json={"timezone": "Europe/Berlin"}, headers=acme.auth(acme.admin))
    client.put(
        "/v1/throttle", json={"enabled": True, "per_second": 50}, headers=acme.auth(acme.admin)
    )
    tokyo, new_york, unknown = seed.people(runtime, acme.tenant_id, 3)
    with transaction(runtime.sessions) as session:
        for contact_id, zone in ((tokyo, "Asia/Tokyo"), (new_york, "America/New_York")):
            session.execute(update(Contact).where(Contact.id == contact_id).values(timezone=zone))
    # Opens in two minutes in Tokyo; the same local hour is hours away in New York and Berlin.
    window, tokyo_opening = opening_in(2, "Asia/Tokyo")
    window["timezone"] = "contact"
    now = datetime.now(UTC)
    body = _campaign(client, acme, runtime, [tokyo, new_york, unknown], window)
    by_contact = {m.contact_id: m for m in seed.messages_of(runtime, body["id"])}
    expected = {
        tokyo: (tokyo_opening, "Asia/Tokyo"),
        new_york: (next_local(window["start"], "America/New_York", now), "America/New_York"),
        unknown: (next_local(window["start"], "Europe/Berlin", now), "Europe/Berlin"),
    }
    assert {c: (m.not_before, m.window_timezone) for c, m in by_contact.items()} == expected
    assert len({opening for opening, _ in expected.values()}) == 3
    assert body["pending_until_window"] == 3
    # The last of them opens last; at 50 a second three messages take no time after it.
    last = max(opening for opening, _ in expected.values())
    finish = datetime.fromisoformat(body["estimated_completion"])
    assert last <= finish <= last + timedelta(seconds=1)


# -- the claim ----------------------------------------------------------------------------------


def test_a_message_claimed_outside_its_window_goes_back_to_the_opening_unspent(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    """A retry that lands outside the window: the claim takes it (its not_before is past), then
    sends it back at the opening with its attempts as they were and no throttle slot used, so
    the message after it in the queue still gets the one slot a second."""
    client.put(
        "/v1/throttle", json={"enabled": True, "per_second": 1}, headers=acme.auth(acme.admin)
    )
    window, opening = opening_in(2)
    waiting = _send(client, acme, to="late@example.com", send_window=window).json()
    ready = _send(client, acme, to="ready@example.com").json()
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Message)
            .where(Message.id == waiting["id"])
            .values(not_before=datetime.now(UTC) - timedelta(seconds=10), attempts=2)
        )
    with transaction(runtime.sessions) as session:
        claimed = claim_batch(session=session, owner="w", limit=10, lease_seconds=30)
    assert [m.id for m in claimed.messages] == [ready["id"]]
    row = _row(runtime, waiting["id"])
    assert (row.status, row.not_before, row.attempts, row.lease_token) == (
        "queued",
        opening,
        2,
        None,
    )
    with runtime.sessions() as session:
        events = session.scalars(select(Event.type).where(Event.message_id == waiting["id"])).all()
        detail = session.scalar(
            select(Event.detail).where(Event.message_id == waiting["id"], Event.type == "deferred")
        )
    assert list(events) == ["queued", "deferred"]
    assert detail is not None and "sending window" in detail


def test_a_message_inside_its_window_is_claimed_like_any_other(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    now = datetime.now(UTC)
    always = {"start": "00:00", "end": "24:00", "timezone": "UTC"}
    sent = _send(client, acme, to="any@example.com", send_window=always).json()
    assert datetime.fromisoformat(sent["not_before"]) <= datetime.now(UTC)
    assert now - timedelta(seconds=1) <= datetime.fromisoformat(sent["not_before"])
    with transaction(runtime.sessions) as session:
        claimed = claim_batch(session=session, owner="w", limit=10, lease_seconds=30)
    assert [m.id for m in claimed.messages] == [sent["id"]]
