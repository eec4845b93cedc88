"""/v1/messages: transactional sends, idempotency, suppression, cancel one or a group; tenants and roles."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import TenantKeys
from tests.integration import campaign_seed as seed
from tidings.db.engine import transaction
from tidings.db.models import Message, Suppression
from tidings.domain import TRANSACTIONAL_PRIORITY_BOOST
from tidings.runtime import Runtime
from tidings.services import campaigns, messages

INLINE = {"subject": "Your code", "text": "Code: {{ code }}", "data": {"code": "123456"}}


def _send(
    client: TestClient,
    tenant: TenantKeys,
    body: dict[str, Any],
    key: str | None = None,
    **headers: str,
) -> Any:
    return client.post(
        "/v1/messages", json=body, headers={**tenant.auth(key or tenant.sender), **headers}
    )


def _row(runtime: Runtime, message_id: int) -> Message:
    with runtime.sessions() as session:
        return session.get_one(Message, message_id)


def test_an_inline_message_is_queued_with_its_event(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    before = datetime.now(UTC)
    answer = _send(
        client,
        acme,
        {
            "to": "Jane@Example.COM",
            **INLINE,
            "priority": 9,
            "reference": "login",
            "category": "security",
            "from_address": "Acme <security@example.com>",
        },
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["status"], body["to"], body["priority"], body["attempts"]) == (
        "queued",
        "Jane@example.com",
        9,
        0,
    )
    assert [e["type"] for e in body["events"]] == ["queued"]
    row = _row(runtime, body["id"])
    assert row.campaign_id is None and row.contact_id is None and row.template_id is None
    assert (row.subject, row.text, row.html, row.data) == (
        "Your code",
        "Code: {{ code }}",
        None,
        {"code": "123456"},
    )
    assert (row.priority, row.category, row.reference) == (
        9 + TRANSACTIONAL_PRIORITY_BOOST,
        "security",
        "login",
    )
    assert row.from_address == '"Acme" <security@example.com>'
    assert row.message_id_header is None and row.lease_expiries == 0
    assert before <= row.not_before <= datetime.now(UTC)
    assert row.expires_at - row.not_before == timedelta(
        seconds=runtime.settings.message_ttl_seconds
    )
    assert client.get(f"/v1/messages/{body['id']}", headers=acme.auth(acme.viewer)).json() == body


def test_a_template_message_to_a_contact_is_rendered_for_that_contact(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    template = seed.template(
        runtime,
        acme.tenant_id,
        subject="Reminder for {{ first_name }}",
        html="<p>{{ meeting }} at {{ time }}</p>",
        category="reminders",
    )
    [contact] = seed.people(runtime, acme.tenant_id, 1)
    answer = _send(
        client,
        acme,
        {
            "contact_id": contact,
            "template_id": template,
            "data": {"meeting": "Board", "time": "9:00"},
        },
    )
    assert answer.status_code == 201, answer.text
    row = _row(runtime, answer.json()["id"])
    assert (row.contact_id, row.to_address, row.template_id, row.category) == (
        contact,
        "p0@example.com",
        template,
        "reminders",
    )
    missing = _send(
        client, acme, {"contact_id": contact, "template_id": template, "data": {"meeting": "Board"}}
    )
    assert missing.status_code == 422
    assert (
        missing.json()["error"]["field"] == "data" and "time" in missing.json()["error"]["message"]
    )


def test_an_address_of_a_known_contact_is_linked_to_it(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    [contact] = seed.people(runtime, acme.tenant_id, 1)
    body = _send(client, acme, {"to": "p0@EXAMPLE.com", **INLINE}).json()
    assert body["contact_id"] == contact


def test_transactional_mail_outranks_any_campaign_mail(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    template = seed.template(runtime, acme.tenant_id)
    ids = seed.people(runtime, acme.tenant_id, 2)
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        draft = campaigns.CampaignDraft(
            name="urgent", template_id=template, contact_ids=ids, priority=9
        )
        campaign = campaigns.create_campaign(
            session=session, tenant_id=acme.tenant_id, draft=draft, now=now
        )
        campaigns.start_campaign(
            session=session,
            tenant_id=acme.tenant_id,
            campaign_id=campaign.id,
            now=now,
            ttl_seconds=60,
        )
    lowest = _send(client, acme, {"to": "x@example.com", **INLINE, "priority": 0}).json()
    highest_campaign = max(m.priority for m in seed.messages_of(runtime, campaign.id))
    assert _row(runtime, lowest["id"]).priority > highest_campaign


def test_send_at_delays_and_a_past_send_at_means_now(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    meeting = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    day_before = _send(
        client,
        acme,
        {
            "to": "a@example.com",
            **INLINE,
            "reference": "meeting-7",
            "send_at": (meeting - timedelta(hours=24)).isoformat(),
        },
    ).json()
    assert datetime.fromisoformat(day_before["not_before"]) == meeting - timedelta(hours=24)
    short = _send(
        client,
        acme,
        {
            "to": "a@example.com",
            **INLINE,
            "ttl_seconds": 600,
            "send_at": (meeting - timedelta(hours=2)).isoformat(),
        },
    ).json()
    assert datetime.fromisoformat(short["expires_at"]) == meeting - timedelta(hours=2) + timedelta(
        seconds=600
    )
    before = datetime.now(UTC)
    past = _send(
        client, acme, {"to": "a@example.com", **INLINE, "send_at": "2001-01-01T00:00:00Z"}
    ).json()
    assert datetime.fromisoformat(past["not_before"]) >= before


def test_a_repeated_idempotency_key_returns_the_first_message(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    first = _send(
        client, acme, {"to": "a@example.com", **INLINE}, **{"Idempotency-Key": "order-42"}
    )
    again = _send(
        client, acme, {"to": "b@example.com", **INLINE}, **{"Idempotency-Key": "order-42"}
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    other = _send(
        client, acme, {"to": "a@example.com", **INLINE}, **{"Idempotency-Key": "order-43"}
    )
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 2


def test_the_same_key_in_two_tenants_is_two_messages(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    mine = _send(client, acme, {"to": "a@example.com", **INLINE}, **{"Idempotency-Key": "k"})
    theirs = _send(client, globex, {"to": "a@example.com", **INLINE}, **{"Idempotency-Key": "k"})
    assert (mine.status_code, theirs.status_code) == (201, 201)


def test_concurrent_repeats_of_a_key_create_one_message(runtime: Runtime, acme: TenantKeys) -> None:
    """Both requests pass the look-up before either commits; the unique key decides, nobody fails."""
    request = messages.MessageRequest(
        to="a@example.com", subject="s", text="t", idempotency_key="race"
    )
    results: list[tuple[int, bool]] = []
    errors: list[BaseException] = []

    def send(hold: threading.Event | None, release: threading.Event | None) -> None:
        try:
            with transaction(runtime.sessions) as session:
                done = messages.send_message(
                    session=session,
                    tenant_id=acme.tenant_id,
                    request=request,
                    renderer=runtime.renderer,
                    default_ttl_seconds=60,
                    now=datetime.now(UTC),
                )
                results.append((done.message.id, done.created))
                if hold is not None and release is not None:
                    hold.set()
                    release.wait(5)
        except BaseException as exc:
            errors.append(exc)

    inserted, release = threading.Event(), threading.Event()
    first = threading.Thread(target=send, args=(inserted, release))
    first.start()
    assert inserted.wait(10)
    second = threading.Thread(target=send, args=(None, None))
    second.start()
    second.join(0.3)
    assert second.is_alive()  # waiting: on the unique index (PostgreSQL) or the write lock (SQLite)
    release.set()
    first.join(10)
    second.join(10)
    assert not errors, errors
    assert sorted(created for _, created in results) == [False, True]
    assert len({message_id for message_id, _ in results}) == 1
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 1


def test_a_suppressed_address_is_stored_suppressed_with_the_reason(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    seed.suppress(runtime, acme.tenant_id, "gone@example.com", "complaint")
    answer = _send(client, acme, {"to": "gone@example.com", **INLINE})
    assert answer.status_code == 201
    body = answer.json()
    assert (body["status"], body["last_error"]) == (
        "suppressed",
        "address is on the suppression list (complaint)",
    )
    assert [e["type"] for e in body["events"]] == ["suppressed"]
    [contact] = seed.people(runtime, acme.tenant_id, 1)
    seed.opt_out(runtime, acme.tenant_id, contact, "digest")
    opted = _send(client, acme, {"contact_id": contact, **INLINE, "category": "digest"}).json()
    assert (opted["status"], opted["last_error"]) == ("suppressed", "opted out of digest")
    assert (
        _send(client, acme, {"contact_id": contact, **INLINE, "category": "security"}).json()[
            "status"
        ]
        == "queued"
    )


def test_cancel_stops_a_message_not_yet_claimed(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    ids = [_send(client, acme, {"to": "a@example.com", **INLINE}).json()["id"] for _ in range(3)]
    cancelled = client.delete(f"/v1/messages/{ids[0]}", headers=acme.auth(acme.sender))
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert [e["type"] for e in cancelled.json()["events"]] == ["queued", "cancelled"]
    assert (
        client.delete(f"/v1/messages/{ids[0]}", headers=acme.auth(acme.sender)).json()["status"]
        == "cancelled"
    )
    seed.set_status(runtime, [ids[1]], "sending")
    seed.set_status(runtime, [ids[2]], "sent", sent_at=datetime.now(UTC))
    for message_id, status in ((ids[1], "sending"), (ids[2], "sent")):
        answer = client.delete(f"/v1/messages/{message_id}", headers=acme.auth(acme.sender))
        assert answer.status_code == 409
        assert status in answer.json()["error"]["message"]
        assert _row(runtime, message_id).status == status


def test_cancelling_a_reference_cancels_the_groups_unsent_messages(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    group = [
        _send(
            client,
            acme,
            {"to": "a@example.com", **INLINE, "reference": "meeting-7", "send_at": later},
        ).json()["id"]
        for _ in range(3)
    ]
    other = _send(client, acme, {"to": "a@example.com", **INLINE, "reference": "meeting-8"}).json()[
        "id"
    ]
    seed.set_status(runtime, [group[0]], "sending")
    answer = client.delete(
        "/v1/messages", params={"reference": "meeting-7"}, headers=acme.auth(acme.sender)
    )
    assert answer.status_code == 200 and answer.json() == {"cancelled": 2}
    assert [_row(runtime, i).status for i in [*group, other]] == [
        "sending",
        "cancelled",
        "cancelled",
        "queued",
    ]
    assert client.delete(
        "/v1/messages", params={"reference": "meeting-7"}, headers=acme.auth(acme.sender)
    ).json() == {"cancelled": 0}
    assert (
        client.delete("/v1/messages", headers=acme.auth(acme.sender)).json()["error"]["field"]
        == "reference"
    )


def test_messages_are_listed_newest_first_and_filtered(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    ids = [
        _send(client, acme, {"to": "a@example.com", **INLINE, "reference": f"r{i % 2}"}).json()[
            "id"
        ]
        for i in range(4)
    ]
    client.delete(f"/v1/messages/{ids[0]}", headers=acme.auth(acme.sender))
    listed = client.get("/v1/messages", params={"limit": 3}, headers=acme.auth(acme.viewer)).json()
    assert [m["id"] for m in listed["items"]] == ids[::-1][:3]
    rest = client.get(
        "/v1/messages",
        params={"limit": 3, "cursor": listed["next_cursor"]},
        headers=acme.auth(acme.viewer),
    )
    assert [m["id"] for m in rest.json()["items"]] == [ids[0]]
    by_ref = client.get(
        "/v1/messages", params={"reference": "r1"}, headers=acme.auth(acme.viewer)
    ).json()
    assert [m["id"] for m in by_ref["items"]] == [ids[3], ids[1]]
    by_status = client.get(
        "/v1/messages", params={"status": "cancelled"}, headers=acme.auth(acme.viewer)
    ).json()
    assert [m["id"] for m in by_status["items"]] == [ids[0]]
    bad = client.get("/v1/messages", params={"status": "lost"}, headers=acme.auth(acme.viewer))
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "status"


BAD_FIELDS: list[tuple[dict[str, Any], dict[str, str], str]] = [
    ({"to": "not-an-address"}, {}, "to"),
    ({"to": "a@example.com\r\nBcc: b@example.com"}, {}, "to"),
    ({"to": None}, {}, "to"),
    ({"contact_id": 1}, {}, "to"),  # both to and contact_id
    ({"contact_id": 0}, {}, "contact_id"),
    ({"subject": "Hi\r\nBcc: all@example.com"}, {}, "subject"),
    ({"subject": None}, {}, "subject"),
    ({"text": None}, {}, "html"),
    ({"text": "{% if %}"}, {}, "text"),
    ({"text": "{{ missing }}"}, {}, "text"),
    ({"from_address": "A <a@example.com>\nBcc: x@example.com"}, {}, "from_address"),
    ({"from_address": "nobody"}, {}, "from_address"),
    ({"category": "a\nb"}, {}, "category"),
    ({"reference": "x" * 201}, {}, "reference"),
    ({"priority": 10}, {}, "priority"),
    ({"priority": "9"}, {}, "priority"),
    ({"ttl_seconds": 5}, {}, "ttl_seconds"),
    ({"ttl_seconds": 10**9}, {}, "ttl_seconds"),
    ({"send_at": "2030-01-01T09:00:00"}, {}, "send_at"),
    ({"send_at": "2999-01-01T09:00:00Z"}, {}, "send_at"),
    ({"data": "nope"}, {}, "data"),
    ({"template_id": 0}, {}, "template_id"),
    ({"bcc": "x@example.com"}, {}, "bcc"),
    ({}, {"Idempotency-Key": "k" * 201}, "Idempotency-Key"),
    ({}, {"Idempotency-Key": "two\tparts"}, "Idempotency-Key"),
]


def test_a_bad_field_is_422_naming_it(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    template = seed.template(runtime, acme.tenant_id)
    for change, headers, field in BAD_FIELDS:
        answer = _send(client, acme, {"to": "a@example.com", **INLINE, **change}, **headers)
        assert answer.status_code == 422, (change, answer.text)
        assert answer.json()["error"]["field"] == field, (change, answer.json())
    both = _send(
        client, acme, {"to": "a@example.com", **INLINE, "template_id": template, "data": {}}
    )
    assert both.status_code == 422 and both.json()["error"]["field"] == "subject"
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 0


def test_another_tenants_rows_are_not_found(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    theirs_template = seed.template(runtime, globex.tenant_id)
    [theirs_contact] = seed.people(runtime, globex.tenant_id, 1, prefix="g")
    for body, field in (
        ({"to": "a@example.com", "template_id": theirs_template}, "template_id"),
        ({"contact_id": theirs_contact, **INLINE}, "contact_id"),
    ):
        answer = _send(client, acme, body)
        assert answer.status_code == 404 and answer.json()["error"]["field"] == field
    mine = _send(client, acme, {"to": "a@example.com", **INLINE, "reference": "shared"}).json()[
        "id"
    ]
    for method in ("GET", "DELETE"):
        theirs = client.request(method, f"/v1/messages/{mine}", headers=globex.auth(globex.admin))
        nobody = client.request(method, f"/v1/messages/{10**12}", headers=globex.auth(globex.admin))
        assert theirs.status_code == 404 and theirs.json() == nobody.json()
    assert client.delete(
        "/v1/messages", params={"reference": "shared"}, headers=globex.auth(globex.admin)
    ).json() == {"cancelled": 0}
    assert client.get("/v1/messages", headers=globex.auth(globex.viewer)).json()["items"] == []
    assert _row(runtime, mine).status == "queued"


def test_a_viewer_reads_but_cannot_send_or_cancel(client: TestClient, acme: TenantKeys) -> None:
    assert (
        _send(client, acme, {"to": "a@example.com", **INLINE}, key=acme.viewer).status_code == 403
    )
    mine = _send(client, acme, {"to": "a@example.com", **INLINE, "reference": "r"}).json()["id"]
    assert client.delete(f"/v1/messages/{mine}", headers=acme.auth(acme.viewer)).status_code == 403
    assert (
        client.delete(
            "/v1/messages", params={"reference": "r"}, headers=acme.auth(acme.viewer)
        ).status_code
        == 403
    )
    assert (
        client.get(f"/v1/messages/{mine}", headers=acme.auth(acme.viewer)).json()["status"]
        == "queued"
    )


def test_an_unsubscribe_stops_categorised_mail_but_not_a_password_reset(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    with transaction(runtime.sessions) as session:
        session.add(
            Suppression(
                tenant_id=acme.tenant_id,
                email="gone@example.com",
                reason="unsubscribe",
                created_at=datetime.now(UTC),
            )
        )
    auth = acme.auth(acme.sender)
    reset = client.post(
        "/v1/messages",
        json={"to": "gone@example.com", "subject": "Reset", "text": "link"},
        headers=auth,
    )
    news = client.post(
        "/v1/messages",
        json={"to": "gone@example.com", "subject": "News", "text": "x", "category": "marketing"},
        headers=auth,
    )
    assert reset.status_code == news.status_code == 201
    assert reset.json()["status"] == "queued"
    assert news.json()["status"] == "suppressed"
