"""/v1/reminders: one message per offset before an event, idempotent per (tenant, reference,
offset), moved with the event without touching what a worker has claimed; tenants and bad input."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from tests.conftest import TenantKeys
from tests.integration import campaign_seed as seed
from tidings.db.engine import transaction
from tidings.db.models import Event, Message
from tidings.domain import TRANSACTIONAL_PRIORITY_BOOST
from tidings.queue.claim import claim_batch
from tidings.runtime import Runtime
from tidings.services import messages, reminders

INLINE = {
    "subject": "Meeting at {{ event_at|localtime('HH:mm') }}",
    "text": "See you {{ event_at|localtime('EEEE d MMMM, HH:mm') }}, {{ who }}.",
    "data": {"who": "Ann"},
}
DAY, HOUR = timedelta(days=1), timedelta(hours=1)


def _later(delta: timedelta) -> datetime:
    """A time ``delta`` from now, on whole seconds (as a caller would write it)."""
    return (datetime.now(UTC) + delta).replace(microsecond=0)


def _remind(client: TestClient, tenant: TenantKeys, key: str | None = None, **body: Any) -> Any:
    payload = {
        "reference": "meeting-42",
        "event_at": _later(3 * DAY).isoformat(),
        "offsets": ["24h", "2h"],
        "to": "ann@example.com",
        **INLINE,
        **body,
    }
    return client.post("/v1/reminders", json=payload, headers=tenant.auth(key or tenant.sender))


def _move(client: TestClient, tenant: TenantKeys, reference: str, event_at: datetime) -> Any:
    return client.put(
        f"/v1/reminders/{reference}",
        json={"event_at": event_at.isoformat()},
        headers=tenant.auth(tenant.sender),
    )


def _row(runtime: Runtime, message_id: int) -> Message:
    with runtime.sessions() as session:
        return session.get_one(Message, message_id)


def _count(runtime: Runtime) -> int:
    with runtime.sessions() as session:
        return session.scalar(select(func.count()).select_from(Message)) or 0


def _by_offset(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["offset"]: item for item in items}


# -- creating ------------------------------------------------------------------------------------


def test_each_offset_is_one_message_at_the_event_time_minus_the_offset(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    event = _later(3 * DAY)
    answer = _remind(
        client,
        acme,
        event_at=event.astimezone(UTC).isoformat(),
        offsets=["1d12h", "2h", "0m"],
        category="meetings",
        priority=7,
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["reference"], body["existing"], body["skipped"]) == ("meeting-42", [], [])
    made = _by_offset(body["created"])
    assert list(made) == ["1d12h", "2h", "0m"]  # the request's order
    ttl = timedelta(seconds=runtime.settings.message_ttl_seconds)
    for offset, seconds in (("1d12h", 129_600), ("2h", 7_200), ("0m", 0)):
        item = made[offset]
        assert (item["offset_seconds"], item["status"]) == (seconds, "queued")
        row = _row(runtime, item["message_id"])
        send_at = event - timedelta(seconds=seconds)
        assert (row.not_before, row.event_at, row.reminder_offset) == (send_at, event, seconds)
        assert (row.reference, row.category, row.to_address) == (
            "meeting-42",
            "meetings",
            "ann@example.com",
        )
        assert row.priority == 7 + TRANSACTIONAL_PRIORITY_BOOST
        # Retried until the event, never after it (at least the grace, at most the TTL).
        assert row.expires_at == min(send_at + ttl, max(event, send_at + reminders.REMINDER_GRACE))
        assert item["send_at"] == send_at.isoformat().replace("+00:00", "Z")
    # A reminder is a message like any other.
    shown = client.get(f"/v1/messages/{made['2h']['message_id']}", headers=acme.auth(acme.viewer))
    assert shown.json()["reference"] == "meeting-42"
    assert [e["type"] for e in shown.json()["events"]] == ["queued"]


def test_a_send_window_moves_each_reminder_to_its_next_opening_and_never_past_the_event(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    berlin = timezone(timedelta(hours=1))  # winter time in Europe/Berlin
    event = datetime(2027, 3, 3, 10, 0, tzinfo=berlin)  # a Wednesday, 10:00 in Berlin
    window = {"start": "09:00", "end": "17:00", "timezone": "Europe/Berlin"}
    answer = _remind(
        client, acme, event_at=event.isoformat(), offsets=["24h", "2h", "12h"], send_window=window
    )
    assert answer.status_code == 201, answer.text
    made = _by_offset(answer.json()["created"])
    sends = {offset: _row(runtime, item["message_id"]).not_before for offset, item in made.items()}
    assert sends == {
        "24h": datetime(2027, 3, 2, 9, 0, tzinfo=berlin).astimezone(UTC) + HOUR,  # inside: as is
        "2h": datetime(2027, 3, 3, 9, 0, tzinfo=berlin).astimezone(UTC),  # 08:00 waits for 09:00
        "12h": datetime(2027, 3, 3, 9, 0, tzinfo=berlin).astimezone(UTC),  # 22:00 the night before
    }
    # Open on Tuesdays only: the 2h reminder (Wednesday 08:00) has no opening before the event.
    answer = _remind(
        client,
        acme,
        reference="meeting-43",
        event_at=event.isoformat(),
        offsets=["24h", "2h"],
        send_window={**window, "days": ["tue"]},
    )
    assert answer.status_code == 201, answer.text
    assert list(_by_offset(answer.json()["created"])) == ["24h"]
    [skipped] = answer.json()["skipped"]
    assert (skipped["offset"], skipped["reason"]) == ("2h", reminders.NO_OPENING)


def test_the_same_request_again_returns_the_same_messages_and_makes_none(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    event = _later(3 * DAY).isoformat()
    first = _remind(client, acme, event_at=event)
    again = _remind(client, acme, event_at=event)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["existing"] == first.json()["created"]
    assert again.json()["created"] == []
    # "1d" is "24h": the same reminder; a new offset is the only new message.
    more = _remind(client, acme, event_at=event, offsets=["1d", "30m"])
    assert more.status_code == 201
    assert [i["offset"] for i in more.json()["existing"]] == ["1d"]
    assert more.json()["existing"][0]["message_id"] == first.json()["created"][0]["message_id"]
    assert [i["offset"] for i in more.json()["created"]] == ["30m"]
    assert _count(runtime) == 3


def test_offsets_whose_time_has_passed_are_skipped_and_reported(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    event = _later(3 * HOUR)
    answer = _remind(client, acme, event_at=event.isoformat(), offsets=["1w", "1d", "2h"])
    assert answer.status_code == 201
    assert [i["offset"] for i in answer.json()["created"]] == ["2h"]
    skipped = _by_offset(answer.json()["skipped"])
    assert list(skipped) == ["1w", "1d"]
    assert skipped["1d"] == {
        "offset": "1d",
        "offset_seconds": 86_400,
        "send_at": (event - DAY).isoformat().replace("+00:00", "Z"),
        "reason": "its time has passed",
        "message_id": None,
    }
    assert _count(runtime) == 1
    # Every offset passed: nothing is made, and the request is still checked whole.
    none = _remind(client, acme, reference="call-1", event_at=event.isoformat(), offsets=["1d"])
    assert none.status_code == 200 and none.json()["created"] == []
    bad = _remind(client, acme, reference="call-2", event_at=event.isoformat(), offsets=["1d"],
                  to="not-an-address")  # fmt: skip
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "to"


def test_more_reminders_for_another_time_of_the_same_event_are_refused(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    assert _remind(client, acme, event_at=_later(3 * DAY).isoformat()).status_code == 201
    other = _remind(client, acme, event_at=_later(4 * DAY).isoformat(), offsets=["30m"])
    assert other.status_code == 409 and other.json()["error"]["field"] == "event_at"
    assert _count(runtime) == 2


def test_a_suppressed_address_gets_suppressed_reminders_with_the_reason(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    seed.suppress(runtime, acme.tenant_id, "ann@example.com")
    answer = _remind(client, acme)
    assert answer.status_code == 201
    assert {(i["status"], i["last_error"] is not None) for i in answer.json()["created"]} == {
        ("suppressed", True)
    }


def test_a_template_reminder_is_checked_with_the_event_at_accept_time(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    template = seed.template(
        runtime,
        acme.tenant_id,
        subject="Soon: {{ event_at|localtime('d MMMM') }}",
        html="<p>{{ event_at|localtime('EEEE HH:mm') }} {{ room }}</p>",
    )
    fields = {"subject": None, "text": None, "template_id": template}
    missing = _remind(client, acme, **fields, data={})
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "data"
    assert "'room' is undefined" in missing.json()["error"]["message"]
    made = _remind(client, acme, **fields, data={"room": "B2"})
    assert made.status_code == 201, made.text
    row = _row(runtime, made.json()["created"][0]["message_id"])
    assert (row.template_id, row.subject, row.data) == (template, None, {"room": "B2"})


def test_concurrent_identical_requests_make_one_set(runtime: Runtime, acme: TenantKeys) -> None:
    """Both requests read "none yet" before either commits; the unique index decides, nobody fails."""
    request = reminders.ReminderRequest(
        reference="race",
        event_at=_later(3 * DAY),
        offsets=["2d", "1d", "2h"],
        message=messages.MessageRequest(to="a@example.com", subject="s", text="t"),
    )
    results: list[reminders.Created] = []
    errors: list[BaseException] = []

    def create(hold: threading.Event | None, release: threading.Event | None) -> None:
        try:
            with transaction(runtime.sessions) as session:
                results.append(
                    reminders.create_reminders(
                        session=session,
                        tenant_id=acme.tenant_id,
                        request=request,
                        renderer=runtime.renderer,
                        default_ttl_seconds=86_400,
                        now=datetime.now(UTC),
                    )
                )
                if hold is not None and release is not None:
                    hold.set()
                    release.wait(5)
        except BaseException as exc:
            errors.append(exc)

    inserted, release = threading.Event(), threading.Event()
    first = threading.Thread(target=create, args=(inserted, release))
    first.start()
    assert inserted.wait(10)
    second = threading.Thread(target=create, args=(None, None))
    second.start()
    second.join(0.3)
    assert second.is_alive()  # waiting: on the unique index (PostgreSQL) or the write lock (SQLite)
    release.set()
    first.join(10)
    second.join(10)
    assert not errors, errors
    assert sorted(len(r.created) for r in results) == [0, 3]
    ids = [{p.reminder.message_id for p in r.created + r.existing} for r in results]
    assert ids[0] == ids[1] and len(ids[0]) == 3
    assert _count(runtime) == 3


# -- moving --------------------------------------------------------------------------------------


def test_a_move_moves_the_unsent_reminders_and_reports_those_gone(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    made = _by_offset(_remind(client, acme, offsets=["2d", "1d", "2h", "1h"]).json()["created"])
    ids = {offset: item["message_id"] for offset, item in made.items()}
    before = {offset: _row(runtime, i) for offset, i in ids.items()}
    seed.set_status(runtime, [ids["2d"]], "sent", sent_at=datetime.now(UTC))
    seed.set_status(runtime, [ids["1d"]], "sending")
    seed.set_status(runtime, [ids["1h"]], "failed")
    new_event = _later(5 * DAY)
    answer = _move(client, acme, "meeting-42", new_event)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [(i["offset"], i["message_id"]) for i in body["moved"]] == [("2h", ids["2h"])]
    assert [(i["offset"], i["status"]) for i in body["gone"]] == [
        ("2d", "sent"),
        ("1d", "sending"),
        ("1h", "failed"),
    ]
    assert body["skipped"] == []
    moved = _row(runtime, ids["2h"])
    assert (moved.not_before, moved.event_at, moved.status) == (
        new_event - 2 * HOUR,
        new_event,
        "queued",
    )
    assert moved.expires_at == max(new_event, moved.not_before + reminders.REMINDER_GRACE)
    for offset in ("2d", "1d", "1h"):  # what had gone keeps the time it was sent for
        row = _row(runtime, ids[offset])
        assert (row.not_before, row.event_at) == (
            before[offset].not_before,
            before[offset].event_at,
        )
    # Creating again for the new time returns the same messages (the event is the new one now).
    again = _remind(client, acme, event_at=new_event.isoformat(), offsets=["2h"])
    assert again.status_code == 200 and again.json()["existing"][0]["message_id"] == ids["2h"]


def test_a_reminder_whose_new_time_has_passed_is_cancelled_and_a_later_move_brings_it_back(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    made = _by_offset(_remind(client, acme, offsets=["1d", "2h"]).json()["created"])
    soon = _later(5 * HOUR)
    early = _move(client, acme, "meeting-42", soon).json()
    assert [i["offset"] for i in early["moved"]] == ["2h"]
    assert early["skipped"] == [
        {
            "offset": "1d",
            "offset_seconds": 86_400,
            "send_at": (soon - DAY).isoformat().replace("+00:00", "Z"),
            "reason": "its time has passed",
            "message_id": made["1d"]["message_id"],
        }
    ]
    cancelled = _row(runtime, made["1d"]["message_id"])
    assert (cancelled.status, cancelled.last_error) == (
        "cancelled",
        "its time had passed when its event moved",
    )
    back = _later(4 * DAY)
    late = _move(client, acme, "meeting-42", back).json()
    assert [i["offset"] for i in late["moved"]] == ["1d", "2h"]
    revived = _row(runtime, made["1d"]["message_id"])
    assert (revived.status, revived.last_error, revived.not_before) == ("queued", None, back - DAY)
    with runtime.sessions() as session:
        history = session.scalars(
            select(Event.type)
            .where(Event.message_id == made["1d"]["message_id"])
            .order_by(Event.id)
        ).all()
    assert history == ["queued", "cancelled", "queued"]


def test_a_reminder_a_worker_is_claiming_is_never_moved(runtime: Runtime, acme: TenantKeys) -> None:
    """The move waits for the claim (PostgreSQL: its row lock; SQLite: the write lock), then finds
    the reminder ``sending`` and leaves it: it goes out at the time it was claimed for."""
    with transaction(runtime.sessions) as session:
        made = reminders.create_reminders(
            session=session,
            tenant_id=acme.tenant_id,
            request=reminders.ReminderRequest(
                reference="claimed",
                event_at=_later(3 * DAY),
                offsets=["1d", "2h"],
                message=messages.MessageRequest(to="a@example.com", subject="s", text="t"),
            ),
            renderer=runtime.renderer,
            default_ttl_seconds=86_400,
            now=datetime.now(UTC),
        )
    due, later = (p.reminder.message_id for p in made.created)
    with transaction(runtime.sessions) as session:  # its time has come
        session.execute(
            update(Message).where(Message.id == due).values(not_before=datetime.now(UTC) - HOUR)
        )
    claimed, release = threading.Event(), threading.Event()
    outcome: list[Any] = []

    def claim() -> None:
        with transaction(runtime.sessions) as session:
            batch = claim_batch(session=session, owner="w1", limit=10, lease_seconds=30)
            outcome.append([m.id for m in batch.messages])
            claimed.set()
            release.wait(5)

    def move() -> None:
        with transaction(runtime.sessions) as session:
            outcome.append(
                reminders.move_reminders(
                    session=session,
                    tenant_id=acme.tenant_id,
                    reference="claimed",
                    event_at=_later(6 * DAY),
                    default_ttl_seconds=86_400,
                    now=datetime.now(UTC),
                )
            )

    claimer = threading.Thread(target=claim)
    claimer.start()
    assert claimed.wait(10)
    mover = threading.Thread(target=move)
    mover.start()
    mover.join(0.3)
    assert mover.is_alive()  # waiting for the claim to commit
    release.set()
    claimer.join(10)
    mover.join(10)
    assert outcome[0] == [due]
    done = outcome[1]
    assert [r.message_id for r in done.moved] == [later]
    assert [(r.message_id, r.status.value) for r in done.gone] == [(due, "sending")]
    assert _row(runtime, due).not_before < datetime.now(UTC)


def test_deleting_by_reference_cancels_reminders_for_good(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    made = _remind(client, acme, offsets=["1d", "2h"]).json()["created"]
    seed.set_status(runtime, [made[0]["message_id"]], "sending")
    cancelled = client.delete(
        "/v1/messages", params={"reference": "meeting-42"}, headers=acme.auth(acme.sender)
    )
    assert cancelled.json() == {"cancelled": 1}
    assert _row(runtime, made[1]["message_id"]).status == "cancelled"
    # A move does not bring back what the tenant cancelled: it has gone.
    moved = _move(client, acme, "meeting-42", _later(4 * DAY)).json()
    assert moved["moved"] == []
    assert [(i["offset"], i["status"]) for i in moved["gone"]] == [
        ("1d", "sending"),
        ("2h", "cancelled"),
    ]


def test_get_lists_a_references_reminders(client: TestClient, acme: TenantKeys) -> None:
    made = _remind(client, acme, reference="team/weekly", offsets=["2h", "1d"]).json()
    answer = client.get("/v1/reminders/team/weekly", headers=acme.auth(acme.viewer))
    assert answer.status_code == 200
    assert answer.json()["reference"] == "team/weekly"
    assert [(i["offset"], i["status"]) for i in answer.json()["reminders"]] == [
        ("1d", "queued"),
        ("2h", "queued"),
    ]
    assert {i["message_id"] for i in answer.json()["reminders"]} == {
        i["message_id"] for i in made["created"]
    }


# -- tenants, roles and bad input ----------------------------------------------------------------


def test_another_tenants_reference_is_not_found(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    mine = _remind(client, acme).json()["created"]
    for method, body in (("PUT", {"event_at": _later(4 * DAY).isoformat()}), ("GET", None)):
        theirs = client.request(
            method, "/v1/reminders/meeting-42", json=body, headers=globex.auth(globex.admin)
        )
        nobody = client.request(
            method, "/v1/reminders/no-such", json=body, headers=globex.auth(globex.admin)
        )
        assert theirs.status_code == 404 and theirs.json() == {
            **nobody.json(),
        }
    # The same reference is another event in another tenant.
    theirs = _remind(client, globex, event_at=_later(5 * DAY).isoformat())
    assert theirs.status_code == 201 and len(theirs.json()["created"]) == 2
    assert [_row(runtime, i["message_id"]).status for i in mine] == ["queued", "queued"]
    assert _count(runtime) == 4


def test_a_viewer_reads_reminders_but_cannot_make_or_move_them(
    client: TestClient, acme: TenantKeys
) -> None:
    assert _remind(client, acme).status_code == 201
    assert _remind(client, acme, key=acme.viewer).status_code == 403
    moved = client.put(
        "/v1/reminders/meeting-42",
        json={"event_at": _later(4 * DAY).isoformat()},
        headers=acme.auth(acme.viewer),
    )
    assert moved.status_code == 403
    assert client.get("/v1/reminders/meeting-42", headers=acme.auth(acme.viewer)).status_code == 200


BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"offsets": ["24h", "2 hours"]}, "offsets.1"),
    ({"offsets": ["24h", "2H"]}, "offsets.1"),
    ({"offsets": ["24h", "-2h"]}, "offsets.1"),
    ({"offsets": ["24h", "2h30"]}, "offsets.1"),
    ({"offsets": ["24h", "1d"]}, "offsets.1"),  # the same offset twice
    ({"offsets": ["24h", "367d"]}, "offsets.1"),
    ({"offsets": ["24h", 2]}, "offsets.1"),
    ({"offsets": ["24h", ""]}, "offsets.1"),
    ({"offsets": []}, "offsets"),
    ({"offsets": [f"{n}m" for n in range(1, 22)]}, "offsets"),
    ({"offsets": "24h"}, "offsets"),
    ({"event_at": "2030-03-01T15:00:00"}, "event_at"),  # no zone
    ({"event_at": "2001-03-01T15:00:00Z"}, "event_at"),  # past
    ({"event_at": "2999-03-01T15:00:00Z"}, "event_at"),  # too far
    ({"event_at": None}, "event_at"),
    ({"reference": None}, "reference"),
    ({"reference": ""}, "reference"),
    ({"reference": "x" * 201}, "reference"),
    ({"reference": "a\r\nb"}, "reference"),
    ({"to": "not-an-address"}, "to"),
    ({"contact_id": 1}, "to"),  # both to and contact_id
    ({"template_id": 1}, "subject"),  # both a template and inline content
    ({"subject": None}, "subject"),
    ({"text": "{{ event_at|localtime('EEEEEEEEE') }}"}, "text"),
    ({"priority": 10}, "priority"),
    ({"category": "a\nb"}, "category"),
    ({"send_window": "9-17"}, "send_window"),
    ({"send_at": "2030-01-01T09:00:00Z"}, "send_at"),  # the offsets decide
    ({"ttl_seconds": 600}, "ttl_seconds"),
]


def test_a_bad_field_is_422_naming_it(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    seed.template(runtime, acme.tenant_id)
    for change, field in BAD_FIELDS:
        answer = _remind(client, acme, **change)
        assert answer.status_code == 422, (change, answer.text)
        assert answer.json()["error"]["field"] == field, (change, answer.json())
    assert _count(runtime) == 0
    assert _remind(client, acme).status_code == 201
    for body, field in (
        ({"event_at": "2030-03-01T15:00:00"}, "event_at"),
        ({"event_at": "2001-03-01T15:00:00Z"}, "event_at"),
        ({"event_at": _later(4 * DAY).isoformat(), "offsets": ["1h"]}, "offsets"),
        ({}, "event_at"),
    ):
        answer = client.put("/v1/reminders/meeting-42", json=body, headers=acme.auth(acme.sender))
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["error"]["field"] == field, (body, answer.json())
