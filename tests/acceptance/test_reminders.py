"""End to end: a reminder made through the API is rendered by a worker with the event's time in
the contact's zone and language, reaches a real SMTP server, and a move afterwards reports it gone;
on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from fastapi.testclient import TestClient

from tests.acceptance.conftest import WorkerThread
from tests.conftest import TenantKeys
from tests.smtp_server import SmtpTestServer

#: German names, written here rather than asked of Babel: the mail is checked against an oracle
#: that shares no code with the filter.
GERMAN_DAYS = ("Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag")
GERMAN_MONTHS = ("Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August",
                 "September", "Oktober", "November", "Dezember")  # fmt: skip
LEAD = timedelta(seconds=3)  # how soon the first reminder is due


def german(moment: datetime) -> str:
    """``EEEE d MMMM, HH:mm`` in German, in Berlin."""
    local = moment.astimezone(ZoneInfo("Europe/Berlin"))
    return (
        f"{GERMAN_DAYS[local.weekday()]} {local.day} {GERMAN_MONTHS[local.month - 1]},"
        f" {local:%H:%M}"
    )


def test_a_reminder_arrives_with_the_event_in_the_contacts_time_and_language(
    client: TestClient,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    auth = acme.auth(acme.admin)
    contact = client.post(
        "/v1/contacts",
        json={
            "email": "anna@example.de",
            "first_name": "Anna",
            "timezone": "Europe/Berlin",
            "locale": "de",
        },
        headers=auth,
    )
    assert contact.status_code == 201, contact.text
    template = client.post(
        "/v1/templates",
        json={
            "name": "meeting",
            "subject": "Erinnerung: {{ event_at|localtime('EEEE d MMMM, HH:mm') }}",
            "html": "<p>Hallo {{ first_name }}, wir sehen uns"
            " {{ event_at|localtime('EEEE d MMMM, HH:mm') }} in {{ room }}.</p>",
        },
        headers=auth,
    )
    assert template.status_code == 201, template.text
    event = (datetime.now(UTC) + timedelta(hours=1) + LEAD).replace(microsecond=0)
    made = client.post(
        "/v1/reminders",
        json={
            "reference": "meeting-42",
            "event_at": event.isoformat(),
            "offsets": ["1h", "30m"],
            "contact_id": contact.json()["id"],
            "template_id": template.json()["id"],
            "data": {"room": "Raum B2"},
        },
        headers=acme.auth(acme.sender),
    )
    assert made.status_code == 201, made.text
    first, second = made.json()["created"]
    started = time.monotonic()
    worker()
    [received] = smtp_server.wait_for(1, timeout=LEAD.total_seconds() + 15)
    assert time.monotonic() - started >= 1.0  # not before its time (send_at = event - 1h)
    shown = german(event)
    assert received.message["Subject"] == f"Erinnerung: {shown}"
    assert received.rcpt_tos == ("anna@example.de",)
    html = received.message.get_body(("html",))
    text = received.message.get_body(("plain",))
    assert html is not None and text is not None
    assert f"Hallo Anna, wir sehen uns {shown} in Raum B2." in html.get_content()
    assert f"Hallo Anna, wir sehen uns {shown} in Raum B2." in " ".join(text.get_content().split())

    # The meeting moves a day: the reminder that went is reported gone, the other moves.
    deadline = time.monotonic() + 10
    while True:
        status = client.get(
            f"/v1/messages/{first['message_id']}", headers=acme.auth(acme.viewer)
        ).json()["status"]
        if status == "sent" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    moved = client.put(
        "/v1/reminders/meeting-42",
        json={"event_at": (event + timedelta(days=1)).isoformat()},
        headers=acme.auth(acme.sender),
    )
    assert moved.status_code == 200, moved.text
    assert [(i["offset"], i["status"]) for i in moved.json()["gone"]] == [("1h", "sent")]
    assert [(i["offset"], i["message_id"]) for i in moved.json()["moved"]] == [
        ("30m", second["message_id"])
    ]
    assert len(smtp_server.messages) == 1
