"""Per-recipient results: a person's first open and click kept on the message by the tracking
flush (never a machine's, and kept when the hits are purged), and
``GET /v1/campaigns/{id}/recipients`` (CSV or a JSON array, streamed by keyset pages), also
downloaded from the dashboard."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, update

from tests.browser.dashboard_helpers import sign_in
from tests.conftest import TenantKeys
from tests.integration.test_campaign_stats import SENT, hit, seed_campaign
from tests.integration.test_tracking_routes import statements
from tidings.db.engine import transaction
from tidings.db.models import Contact, Event, Message, TrackingHit
from tidings.runtime import Runtime
from tidings.services import campaign_results
from tidings.tracking.hits import flush


def firsts(runtime: Runtime, ids: list[int]) -> list[tuple[Any, Any]]:
    with transaction(runtime.sessions) as session:
        found = {
            row.id: (row.first_opened_at, row.first_clicked_at)
            for row in session.execute(
                select(Message.id, Message.first_opened_at, Message.first_clicked_at).where(
                    Message.id.in_(ids)
                )
            )
        }
    return [found[i] for i in ids]


def at(seconds: float) -> Any:
    return SENT + timedelta(seconds=seconds)


def recipients(client: TestClient, keys: TenantKeys, campaign_id: int, **query: Any) -> Any:
    return client.get(
        f"/v1/campaigns/{campaign_id}/recipients",
        params=query,
        headers=keys.auth(keys.viewer),
    )


def rows(body: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body)))


def test_the_flush_keeps_a_persons_first_open_and_click_on_the_message(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    t = acme.tenant_id
    campaign_id, (m1, m2, m3, m4) = seed_campaign(runtime, t, ["sent"] * 4)
    with statements(runtime) as seen:
        flush(
            runtime,
            [
                hit(t, m1, "open", 3600),  # out of order: the earliest is kept
                hit(t, m1, "open", 600),
                hit(t, m1, "click", 610, link=1),
                hit(t, m2, "open", 300, agent="Mozilla/5.0", network="17.58.1.0/24"),  # Apple
                hit(t, m3, "click", 20, link=1),  # a scanner's burst, and the honeypot
                hit(t, m3, "click", 20.3, link=2),
                hit(t, m3, "honeypot", 20.5),
                hit(t, m4, "open", 1),  # fetched on delivery
            ],
        )
    updates = [s for s in seen if s.lstrip().upper().startswith("UPDATE MESSAGES")]
    assert len(updates) == 1, updates  # one statement for the whole flush
    assert firsts(runtime, [m1, m2, m3, m4]) == [
        (at(600), at(610)),
        (None, None),  # machines never count
        (None, None),
        (None, None),
    ]
    # A later flush: m2's person opens, m1's first times stay.
    flush(runtime, [hit(t, m2, "open", 7200), hit(t, m1, "click", 9000, link=2)])
    assert firsts(runtime, [m1, m2]) == [(at(600), at(610)), (at(7200), None)]

    # The retention purge takes the hits: the firsts stay, and m1's next open is no new one.
    with transaction(runtime.sessions) as session:
        session.execute(delete(TrackingHit))
    flush(runtime, [hit(t, m1, "open", 20_000)])
    assert firsts(runtime, [m1]) == [(at(600), at(610))]
    stats = client.get(f"/v1/campaigns/{campaign_id}/stats", headers=acme.auth(acme.viewer))
    assert stats.json()["opens_unique"] == 2  # m1 and m2, m1 not counted twice
    assert stats.json()["opens_total"] == 4


def seed_results(runtime: Runtime, t: int) -> tuple[int, list[int]]:
    """A campaign of five: opened and clicked, opened, sent, failed, and one whose contact was
    deleted; with events, and a name that looks like a formula."""
    campaign_id, ids = seed_campaign(runtime, t, ["sent", "sent", "sent", "failed", "sent"])
    m1, m2, _m3, m4, m5 = ids
    flush(
        runtime,
        [hit(t, m1, "open", 600), hit(t, m1, "click", 700, link=1), hit(t, m2, "open", 800)],
    )
    with transaction(runtime.sessions) as session:
        for message_id, kind, seconds in ((m1, "sent", 1), (m4, "deferred", 1), (m4, "failed", 9)):
            session.add(
                Event(
                    tenant_id=t,
                    message_id=message_id,
                    campaign_id=campaign_id,
                    type=kind,
                    created_at=at(seconds),
                )
            )
        session.execute(
            update(Message).where(Message.id == m4).values(last_error="550 5.1.1 no such user")
        )
        first = session.scalar(select(Message.contact_id).where(Message.id == m1))
        session.execute(update(Contact).where(Contact.id == first).values(name="=HYPERLINK(1)"))
        session.execute(update(Message).where(Message.id == m5).values(contact_id=None))
    return campaign_id, ids


def test_csv_lists_every_recipient_with_its_results(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    campaign_id, (m1, m2, m3, m4, m5) = seed_results(runtime, acme.tenant_id)
    answer = recipients(client, acme, campaign_id)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert "attachment" in answer.headers["content-disposition"]
    assert answer.text.splitlines()[0] == ",".join(campaign_results.CSV_HEADER)
    found = rows(answer.text)
    # By contact, then the message whose contact is gone.
    assert [int(r["message_id"]) for r in found] == [m1, m2, m3, m4, m5]
    one, two, three, four, five = found
    assert one["name"] == "'=HYPERLINK(1)"  # defused
    assert one["email"] == "r0@example.com" and one["status"] == "sent"
    assert one["last_event"] == "sent" and one["last_event_at"] == at(1).isoformat()
    assert one["first_opened_at"] == at(600).isoformat()
    assert one["first_clicked_at"] == at(700).isoformat()
    assert one["sent_at"] == SENT.isoformat() and one["error"] == ""
    assert two["first_opened_at"] == at(800).isoformat() and two["first_clicked_at"] == ""
    assert three["first_opened_at"] == "" and three["last_event"] == ""
    assert four["status"] == "failed" and four["last_event"] == "failed"
    assert four["error"] == "550 5.1.1 no such user"
    assert five["contact_id"] == "" and five["email"] == "r4@example.com"


def test_json_is_one_array_and_the_filters_narrow_it(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    campaign_id, (m1, m2, m3, m4, m5) = seed_results(runtime, acme.tenant_id)
    answer = recipients(client, acme, campaign_id, format="json")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    every = json.loads(answer.text)
    assert [r["message_id"] for r in every] == [m1, m2, m3, m4, m5]
    assert every[0]["first_clicked_at"] == at(700).isoformat()
    assert every[4]["contact_id"] is None and every[3]["error"] == "550 5.1.1 no such user"

    def ids(**query: Any) -> list[int]:
        found = recipients(client, acme, campaign_id, format="json", **query)
        assert found.status_code == 200, found.text
        return [r["message_id"] for r in json.loads(found.text)]

    assert ids(opened="true") == [m1, m2]
    assert ids(opened="false") == [m3, m4, m5]
    assert ids(clicked="true") == [m1]
    assert ids(opened="true", clicked="false") == [m2]
    assert ids(status="failed") == [m4]
    assert ids(status="queued") == []
    assert recipients(client, acme, campaign_id, status="queued").text.count("\n") == 1


def test_pages_are_read_by_keyset_never_offset(
    client: TestClient, runtime: Runtime, acme: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(campaign_results, "RESULTS_PAGE", 2)
    campaign_id, ids = seed_campaign(runtime, acme.tenant_id, ["sent"] * 7)
    with transaction(runtime.sessions) as session:
        session.execute(update(Message).where(Message.id.in_(ids[4:])).values(contact_id=None))
    with statements(runtime) as seen:
        answer = recipients(client, acme, campaign_id, format="json")
    assert [r["message_id"] for r in json.loads(answer.text)] == ids
    pages = [s for s in seen if "FROM messages" in s and "LIMIT" in s]
    assert len(pages) == 5  # 2 + 2 + 0 by contact, then 2 + 1 without
    for sql in pages:
        assert "messages.contact_id >" in sql or "messages.id >" in sql, sql
        # SQLAlchemy's SQLite dialect writes LIMIT ? OFFSET ? with 0; PostgreSQL no OFFSET.
        assert "OFFSET" not in sql or "OFFSET ?" in sql, sql


def test_bad_values_are_422s_and_another_tenants_campaign_a_404(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    campaign_id, _ = seed_campaign(runtime, acme.tenant_id, ["sent"])
    for field, value in (("format", "xml"), ("status", "gone"), ("opened", "maybe")):
        answer = recipients(client, acme, campaign_id, **{field: value})
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["field"] == field
    theirs, _ = seed_campaign(runtime, globex.tenant_id, ["sent"])
    missing = recipients(client, acme, theirs)
    assert missing.status_code == 404
    assert missing.json() == recipients(client, acme, 10**12).json()
    assert client.get(f"/v1/campaigns/{campaign_id}/recipients").status_code == 401
    for key in (acme.viewer, acme.sender, acme.admin):  # any key reads
        answer = client.get(
            f"/v1/campaigns/{campaign_id}/recipients", headers={"Authorization": f"Bearer {key}"}
        )
        assert answer.status_code == 200


def test_the_dashboard_downloads_the_same_csv(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    campaign_id, _ = seed_results(runtime, acme.tenant_id)
    theirs, _ = seed_campaign(runtime, globex.tenant_id, ["sent"])
    signed_out = client.get(f"/campaigns/{campaign_id}/recipients.csv", follow_redirects=False)
    assert signed_out.status_code in (302, 303)
    sign_in(client, acme.viewer)
    answer = client.get(f"/campaigns/{campaign_id}/recipients.csv")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert answer.text == recipients(client, acme, campaign_id).text
    assert client.get(f"/campaigns/{theirs}/recipients.csv").status_code == 404
