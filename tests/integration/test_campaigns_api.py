"""/v1/campaigns: create, start, pause, resume, cancel, retry, progress; tenants and roles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TenantKeys
from tests.integration import campaign_seed as seed
from tidings.db.engine import transaction
from tidings.queue.maintenance import complete_finished_campaigns
from tidings.runtime import Runtime


@pytest.fixture
def audience(runtime: Runtime, acme: TenantKeys) -> dict[str, Any]:
    """A template, six contacts, two overlapping lists."""
    template = seed.template(runtime, acme.tenant_id)
    ids = seed.people(runtime, acme.tenant_id, 6)
    return {
        "template_id": template,
        "ids": ids,
        "lists": [
            seed.contact_list(runtime, acme.tenant_id, "staff", ids[:4]),
            seed.contact_list(runtime, acme.tenant_id, "faculty", ids[2:5]),
        ],
    }


def _create(client: TestClient, tenant: TenantKeys, key: str | None = None, **body: Any) -> Any:
    answer = client.post(
        "/v1/campaigns",
        json={"name": "Spring term", **body},
        headers=tenant.auth(key or tenant.sender),
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


def _action(client: TestClient, tenant: TenantKeys, campaign_id: int, action: str) -> Any:
    return client.post(f"/v1/campaigns/{campaign_id}/{action}", headers=tenant.auth(tenant.sender))


def _get(client: TestClient, tenant: TenantKeys, campaign_id: int) -> Any:
    answer = client.get(f"/v1/campaigns/{campaign_id}", headers=tenant.auth(tenant.viewer))
    assert answer.status_code == 200, answer.text
    return answer.json()


def _adds_up(body: dict[str, Any]) -> bool:
    parts = body["sent"] + body["failed"] + body["suppressed"] + body["cancelled"] + body["pending"]
    return bool(parts == body["recipient_count"])


def test_a_draft_is_created_with_its_fields(
    client: TestClient, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    body = _create(
        client,
        acme,
        template_id=audience["template_id"],
        list_ids=audience["lists"],
        contact_ids=[audience["ids"][5]],
        data={"personal_message": "See you", "deadline": "2030-06-01"},
        priority=8,
        category="term",
        from_address="Registrar <registrar@example.edu>",
    )
    assert body["status"] == "draft"
    assert body["data"] == {"personal_message": "See you", "deadline": "2030-06-01"}
    assert (body["priority"], body["category"], body["from_address"]) == (
        8,
        "term",
        '"Registrar" <registrar@example.edu>',
    )
    assert (body["recipient_count"], body["pending"], body["progress_percentage"]) == (0, 0, 0.0)
    assert body["started_at"] is None and body["completed_at"] is None
    assert _get(client, acme, body["id"]) == body


def test_starting_fans_out_once_per_contact_and_the_counts_add_up(
    client: TestClient, runtime: Runtime, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    seed.suppress(runtime, acme.tenant_id, "p0@example.com", "complaint")
    created = _create(
        client,
        acme,
        template_id=audience["template_id"],
        list_ids=audience["lists"],
        contact_ids=[audience["ids"][1], audience["ids"][5]],
    )
    started = _action(client, acme, created["id"], "start")
    assert started.status_code == 202
    assert started.json() == {"id": created["id"], "status": "running", "recipient_count": 6}
    body = _get(client, acme, created["id"])
    assert (body["recipient_count"], body["pending"], body["suppressed"], body["sent"]) == (
        6,
        5,
        1,
        0,
    )
    assert body["started_at"] is not None and _adds_up(body)
    rows = seed.messages_of(runtime, created["id"])
    now = datetime.now(UTC)
    seed.set_status(runtime, [rows[1].id, rows[2].id], "sent", sent_at=now)
    seed.set_status(runtime, [rows[3].id], "failed", last_error="550 5.1.1 no such user")
    seed.set_status(runtime, [rows[4].id], "dead", last_error="451 try later")
    body = _get(client, acme, created["id"])
    assert (body["sent"], body["failed"], body["dead"], body["pending"]) == (2, 2, 1, 1)
    assert body["progress_percentage"] == pytest.approx(83.33, abs=0.01)
    assert body["send_rate_per_minute"] == 2
    assert body["estimated_completion"] is not None and _adds_up(body)


def test_a_future_start_is_scheduled_and_a_past_one_runs_now(
    client: TestClient, runtime: Runtime, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    future = _create(
        client,
        acme,
        template_id=audience["template_id"],
        list_ids=audience["lists"],
        scheduled_at=later,
    )
    assert _action(client, acme, future["id"], "start").json()["status"] == "scheduled"
    assert seed.messages_of(runtime, future["id"]) == []
    earlier = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    past = _create(
        client,
        acme,
        template_id=audience["template_id"],
        list_ids=audience["lists"],
        scheduled_at=earlier,
    )
    assert _action(client, acme, past["id"], "start").json()["status"] == "running"
    assert len(seed.messages_of(runtime, past["id"])) == 5


def test_pause_holds_unclaimed_messages_and_resume_releases_exactly_them(
    client: TestClient, runtime: Runtime, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    created = _create(client, acme, template_id=audience["template_id"], list_ids=audience["lists"])
    _action(client, acme, created["id"], "start")
    rows = seed.messages_of(runtime, created["id"])
    seed.set_status(
        runtime, [rows[0].id], "sending"
    )  # claimed by a worker: it finishes its attempt
    seed.set_status(runtime, [rows[1].id], "sent", sent_at=datetime.now(UTC))
    paused = _action(client, acme, created["id"], "pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert [m.status for m in seed.messages_of(runtime, created["id"])] == [
        "sending",
        "sent",
        "paused",
        "paused",
        "paused",
    ]
    assert paused.json()["pending"] == 4 and _adds_up(paused.json())
    resumed = _action(client, acme, created["id"], "resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "running"
    after = seed.messages_of(runtime, created["id"])
    assert [m.status for m in after] == ["sending", "sent", "queued", "queued", "queued"]
    assert [m.id for m in after] == [m.id for m in rows]  # no duplicate, none skipped


def test_cancel_stops_every_unclaimed_message(
    client: TestClient, runtime: Runtime, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    created = _create(client, acme, template_id=audience["template_id"], list_ids=audience["lists"])
    _action(client, acme, created["id"], "start")
    rows = seed.messages_of(runtime, created["id"])
    seed.set_status(runtime, [rows[0].id], "sending")
    _action(client, acme, created["id"], "pause")
    seed.set_status(runtime, [rows[1].id], "queued")  # a retry written back by a worker
    cancelled = _action(client, acme, created["id"], "cancel")
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert (body["status"], body["cancelled"], body["pending"]) == ("cancelled", 4, 1)
    assert body["completed_at"] is not None and _adds_up(body)
    assert [m.status for m in seed.messages_of(runtime, created["id"])] == ["sending"] + [
        "cancelled"
    ] * 4


INVALID_TRANSITIONS: list[tuple[tuple[str, ...], str, str]] = [
    ((), "pause", "draft"),
    ((), "resume", "draft"),
    ((), "retry-failed", "draft"),
    (("start",), "start", "running"),
    (("start",), "resume", "running"),
    (("start", "pause"), "pause", "paused"),
    (("start", "cancel"), "resume", "cancelled"),
    (("start", "cancel"), "cancel", "cancelled"),
    (("start", "cancel"), "retry-failed", "cancelled"),
]


def test_an_invalid_transition_is_409_and_changes_nothing(
    client: TestClient, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    for steps, action, expected in INVALID_TRANSITIONS:
        created = _create(
            client, acme, template_id=audience["template_id"], list_ids=audience["lists"]
        )
        for step in steps:
            assert _action(client, acme, created["id"], step).status_code in (200, 202)
        answer = _action(client, acme, created["id"], action)
        assert answer.status_code == 409, (steps, action)
        error = answer.json()["error"]
        assert error["code"] == "conflict" and f"the campaign is {expected}" in error["message"]
        assert _get(client, acme, created["id"])["status"] == expected


def test_retry_failed_requeues_failed_and_dead_but_not_suppressed(
    client: TestClient, runtime: Runtime, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    seed.suppress(runtime, acme.tenant_id, "p4@example.com")
    created = _create(client, acme, template_id=audience["template_id"], list_ids=audience["lists"])
    _action(client, acme, created["id"], "start")
    rows = seed.messages_of(runtime, created["id"])
    assert rows[4].status == "suppressed"
    now = datetime.now(UTC)
    seed.set_status(runtime, [rows[0].id, rows[1].id], "sent", sent_at=now)
    seed.set_status(runtime, [rows[2].id], "failed", attempts=1, last_error="550 mailbox full")
    seed.set_status(
        runtime, [rows[3].id], "dead", attempts=6, lease_expiries=2, last_error="421 later"
    )
    with transaction(runtime.sessions) as session:
        assert complete_finished_campaigns(session=session, now=now) == [created["id"]]
    assert _get(client, acme, created["id"])["status"] == "completed"
    answer = _action(client, acme, created["id"], "retry-failed")
    assert answer.status_code == 202
    assert answer.json() == {"id": created["id"], "status": "running", "requeued": 2}
    after = seed.messages_of(runtime, created["id"])
    assert [m.status for m in after] == ["sent", "sent", "queued", "queued", "suppressed"]
    assert all(
        m.attempts == 0 and m.lease_expiries == 0 and m.last_error is None for m in after[2:4]
    )
    assert all(m.not_before >= now and m.expires_at > m.not_before for m in after[2:4])
    body = _get(client, acme, created["id"])
    assert body["completed_at"] is None and body["pending"] == 2 and _adds_up(body)
    again = _action(client, acme, created["id"], "retry-failed")
    assert again.status_code == 202 and again.json()["requeued"] == 0


def test_a_campaign_that_delivered_nothing_and_failed_ends_failed_with_a_reason(
    client: TestClient, runtime: Runtime, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    seed.suppress(runtime, acme.tenant_id, "p0@example.com")
    created = _create(
        client, acme, template_id=audience["template_id"], contact_ids=audience["ids"][:4]
    )
    _action(client, acme, created["id"], "start")
    rows = seed.messages_of(runtime, created["id"])
    assert rows[0].status == "suppressed"
    now = datetime.now(UTC)
    seed.set_status(runtime, [rows[1].id, rows[2].id], "failed", last_error="550 5.7.1 refused")
    seed.set_status(runtime, [rows[3].id], "dead", last_error="421 try later")
    with transaction(runtime.sessions) as session:
        assert complete_finished_campaigns(session=session, now=now) == [created["id"]]
    body = _get(client, acme, created["id"])
    assert body["status"] == "failed" and body["completed_at"] is not None
    assert body["status_reason"] == (
        "none of its messages was sent: 3 failed or died; "
        "the most frequent error (2 of them): 550 5.7.1 refused"
    )
    assert body["progress_percentage"] == 100.0
    # A failed campaign can be retried: it runs again, without its old reason.
    retried = _action(client, acme, created["id"], "retry-failed")
    assert retried.json() == {"id": created["id"], "status": "running", "requeued": 3}
    assert _get(client, acme, created["id"])["status_reason"] is None


def test_a_campaign_whose_audience_was_all_suppressed_completes(
    client: TestClient, runtime: Runtime, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    seed.suppress(runtime, acme.tenant_id, "p0@example.com")
    created = _create(
        client, acme, template_id=audience["template_id"], contact_ids=audience["ids"][:1]
    )
    _action(client, acme, created["id"], "start")
    with transaction(runtime.sessions) as session:
        assert complete_finished_campaigns(session=session, now=datetime.now(UTC)) == [
            created["id"]
        ]
    assert _get(client, acme, created["id"])["status"] == "completed"


def test_retry_failed_suppresses_an_address_that_bounced_since(
    client: TestClient, runtime: Runtime, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    created = _create(
        client, acme, template_id=audience["template_id"], contact_ids=audience["ids"][:2]
    )
    _action(client, acme, created["id"], "start")
    rows = seed.messages_of(runtime, created["id"])
    seed.set_status(runtime, [m.id for m in rows], "failed", last_error="550 5.1.1 unknown user")
    seed.suppress(runtime, acme.tenant_id, rows[0].to_address, "hard_bounce")
    assert _action(client, acme, created["id"], "retry-failed").json()["requeued"] == 1
    after = seed.messages_of(runtime, created["id"])
    assert [m.status for m in after] == ["suppressed", "queued"]
    assert after[0].last_error == "address is on the suppression list (hard_bounce)"


def test_failed_recipients_are_listed_with_the_servers_reply_page_by_page(
    client: TestClient, runtime: Runtime, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    created = _create(
        client,
        acme,
        template_id=audience["template_id"],
        list_ids=audience["lists"],
        contact_ids=[audience["ids"][5]],
    )
    _action(client, acme, created["id"], "start")
    rows = seed.messages_of(runtime, created["id"])
    for i, row in enumerate(rows[:5]):
        seed.set_status(
            runtime,
            [row.id],
            "failed" if i % 2 == 0 else "dead",
            attempts=i + 1,
            last_error=f"550 reason {i}",
        )
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get(
            f"/v1/campaigns/{created['id']}/failed-recipients",
            params=params,
            headers=acme.auth(acme.viewer),
        ).json()
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and [r["message_id"] for r in seen] == sorted(m.id for m in rows[:5])
    assert next(r for r in seen if r["message_id"] == rows[1].id) == {
        "message_id": rows[1].id,
        "contact_id": rows[1].contact_id,
        "email": rows[1].to_address,
        "status": "dead",
        "attempts": 2,
        "reason": "550 reason 1",
    }


def test_campaigns_are_listed_newest_first(
    client: TestClient, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    ids = [
        _create(
            client,
            acme,
            name=f"c{i}",
            template_id=audience["template_id"],
            list_ids=audience["lists"],
        )["id"]
        for i in range(3)
    ]
    first = client.get("/v1/campaigns", params={"limit": 2}, headers=acme.auth(acme.viewer)).json()
    assert [c["id"] for c in first["items"]] == [ids[2], ids[1]]
    rest = client.get(
        "/v1/campaigns",
        params={"limit": 2, "cursor": first["next_cursor"]},
        headers=acme.auth(acme.viewer),
    ).json()
    assert [c["id"] for c in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    too_many = client.get("/v1/campaigns", params={"limit": 10_000}, headers=acme.auth(acme.viewer))
    assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "limit"


BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"name": ""}, "name"),
    ({"name": "two\nlines"}, "name"),
    ({"template_id": 0}, "template_id"),
    ({"template_id": 2**70}, "template_id"),
    ({"list_ids": ["x"]}, "list_ids.0"),
    ({"list_ids": [], "contact_ids": []}, "list_ids"),
    ({"contact_ids": [999_999]}, "contact_ids"),
    ({"list_ids": [999_999]}, "list_ids"),
    ({"priority": 10}, "priority"),
    ({"priority": -1}, "priority"),
    ({"priority": "high"}, "priority"),
    ({"scheduled_at": "2030-01-01T09:00:00"}, "scheduled_at"),
    ({"scheduled_at": "next tuesday"}, "scheduled_at"),
    ({"scheduled_at": "2999-01-01T09:00:00Z"}, "scheduled_at"),
    ({"scheduled_at": "0001-01-01T00:00:00+14:00"}, "scheduled_at"),
    ({"from_address": "Evil <a@example.com>\r\nBcc: all@example.com"}, "from_address"),
    ({"from_address": "not an address"}, "from_address"),
    ({"category": "x" * 65}, "category"),
    ({"category": "a\r\nb"}, "category"),
    ({"data": ["not", "an", "object"]}, "data"),
    ({"colour": "blue"}, "colour"),
]


def test_a_bad_field_is_422_naming_it(
    client: TestClient, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    for change, field in BAD_FIELDS:
        body = {
            "name": "ok",
            "template_id": audience["template_id"],
            "list_ids": audience["lists"],
            **change,
        }
        answer = client.post("/v1/campaigns", json=body, headers=acme.auth(acme.sender))
        expected = (
            404 if field in ("contact_ids", "list_ids") and change.get("list_ids") != [] else 422
        )
        assert answer.status_code == expected, (change, answer.text)
        assert answer.json()["error"]["field"] == field, (change, answer.json())
    assert client.get("/v1/campaigns", headers=acme.auth(acme.viewer)).json()["items"] == []


def test_another_tenants_template_list_and_contacts_are_not_found(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    globex: TenantKeys,
    audience: dict[str, Any],
) -> None:
    theirs_template = seed.template(runtime, globex.tenant_id)
    [theirs_contact] = seed.people(runtime, globex.tenant_id, 1, prefix="g")
    theirs_list = seed.contact_list(runtime, globex.tenant_id, "theirs", [theirs_contact])
    base = {"name": "x", "template_id": audience["template_id"], "list_ids": audience["lists"]}
    for change, field in (
        ({"template_id": theirs_template}, "template_id"),
        ({"list_ids": [audience["lists"][0], theirs_list]}, "list_ids"),
        ({"contact_ids": [theirs_contact]}, "contact_ids"),
    ):
        answer = client.post(
            "/v1/campaigns", json={**base, **change}, headers=acme.auth(acme.sender)
        )
        assert answer.status_code == 404
        assert answer.json()["error"]["field"] == field


def test_another_tenants_campaign_answers_404_everywhere(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    globex: TenantKeys,
    audience: dict[str, Any],
) -> None:
    created = _create(client, acme, template_id=audience["template_id"], list_ids=audience["lists"])
    _action(client, acme, created["id"], "start")
    missing = 10**12
    for method, suffix in (
        ("GET", ""),
        ("GET", "/failed-recipients"),
        ("POST", "/start"),
        ("POST", "/pause"),
        ("POST", "/resume"),
        ("POST", "/cancel"),
        ("POST", "/retry-failed"),
        ("PATCH", ""),
        ("DELETE", ""),
    ):
        body = {"name": "Mine now"} if method == "PATCH" else None
        theirs = client.request(
            method,
            f"/v1/campaigns/{created['id']}{suffix}",
            json=body,
            headers=globex.auth(globex.admin),
        )
        nobody = client.request(
            method, f"/v1/campaigns/{missing}{suffix}", json=body, headers=globex.auth(globex.admin)
        )
        assert theirs.status_code == 404, (method, suffix)
        assert theirs.json() == nobody.json()
    assert client.get("/v1/campaigns", headers=globex.auth(globex.viewer)).json()["items"] == []
    assert _get(client, acme, created["id"])["status"] == "running"


def test_a_viewer_reads_but_cannot_write(
    client: TestClient, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    answer = client.post(
        "/v1/campaigns",
        json={"name": "x", "template_id": audience["template_id"], "list_ids": audience["lists"]},
        headers=acme.auth(acme.viewer),
    )
    assert answer.status_code == 403
    created = _create(client, acme, template_id=audience["template_id"], list_ids=audience["lists"])
    for action in ("start", "pause", "resume", "cancel", "retry-failed"):
        denied = client.post(
            f"/v1/campaigns/{created['id']}/{action}", headers=acme.auth(acme.viewer)
        )
        assert denied.status_code == 403, action
    path = f"/v1/campaigns/{created['id']}"
    assert client.patch(path, json={"name": "x"}, headers=acme.auth(acme.viewer)).status_code == 403
    assert client.delete(path, headers=acme.auth(acme.viewer)).status_code == 403
    assert _get(client, acme, created["id"])["status"] == "draft"
    assert (
        client.get(
            f"/v1/campaigns/{created['id']}/failed-recipients", headers=acme.auth(acme.viewer)
        ).status_code
        == 200
    )


def _patch(client: TestClient, tenant: TenantKeys, campaign_id: int, **body: Any) -> Any:
    return client.patch(
        f"/v1/campaigns/{campaign_id}", json=body, headers=tenant.auth(tenant.sender)
    )


def test_a_draft_is_changed_field_by_field_with_the_checks_of_creation(
    client: TestClient, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    created = _create(
        client,
        acme,
        template_id=audience["template_id"],
        list_ids=audience["lists"][:1],
        data={"deadline": "2030-06-01"},
        category="term",
        send_window={"start": "09:00", "end": "17:00"},
    )
    answer = _patch(
        client,
        acme,
        created["id"],
        name="Spring term (fixed)",
        list_ids=audience["lists"],
        data={"deadline": "2030-06-08"},
        category=None,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["name"] == "Spring term (fixed)" and body["list_ids"] == audience["lists"]
    assert body["data"] == {"deadline": "2030-06-08"}
    assert body["category"] is None  # cleared: the template has none
    assert body["send_window"]["start"] == "09:00"  # left out: kept
    assert body["status"] == "draft"
    # Every mistake is a 4xx naming its field, and changes nothing.
    for change, status, field in (
        ({"name": None}, 422, "name"),
        ({"name": "a\nb"}, 422, "name"),
        ({"list_ids": [10**12]}, 404, "list_ids"),
        ({"list_ids": [], "contact_ids": []}, 422, "list_ids"),
        ({"priority": 10}, 422, "priority"),
        ({"status": "running"}, 422, "status"),
        ({"send_window": {"start": "25:00", "end": "17:00"}}, 422, "send_window.start"),
    ):
        refused = _patch(client, acme, created["id"], **change)
        assert refused.status_code == status, (change, refused.text)
        assert field in (refused.json()["error"].get("field") or ""), (change, refused.json())
    assert _get(client, acme, created["id"])["name"] == "Spring term (fixed)"


def test_a_scheduled_campaign_is_rescheduled_or_unscheduled_but_a_started_one_is_not_changed(
    client: TestClient, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    later = datetime.now(UTC) + timedelta(days=3)
    created = _create(
        client,
        acme,
        template_id=audience["template_id"],
        list_ids=audience["lists"],
        scheduled_at=later.isoformat(),
    )
    assert _action(client, acme, created["id"], "start").json()["status"] == "scheduled"
    moved = later + timedelta(days=1)
    body = _patch(client, acme, created["id"], scheduled_at=moved.isoformat()).json()
    assert body["status"] == "scheduled"
    assert datetime.fromisoformat(body["scheduled_at"]) == moved
    body = _patch(client, acme, created["id"], scheduled_at=None).json()
    assert (body["status"], body["scheduled_at"]) == ("draft", None)
    assert _action(client, acme, created["id"], "start").json()["status"] == "running"
    refused = _patch(client, acme, created["id"], name="Too late")
    assert refused.status_code == 409
    assert "only a draft or scheduled campaign can be changed" in refused.json()["error"]["message"]
    assert _get(client, acme, created["id"])["name"] == "Spring term"


def test_only_a_draft_is_deleted(
    client: TestClient, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    draft = _create(client, acme, template_id=audience["template_id"], list_ids=audience["lists"])
    started = _create(client, acme, template_id=audience["template_id"], list_ids=audience["lists"])
    _action(client, acme, started["id"], "start")
    refused = client.delete(f"/v1/campaigns/{started['id']}", headers=acme.auth(acme.sender))
    assert refused.status_code == 409
    assert _get(client, acme, started["id"])["status"] == "running"
    deleted = client.delete(f"/v1/campaigns/{draft['id']}", headers=acme.auth(acme.sender))
    assert deleted.status_code == 204
    gone = client.get(f"/v1/campaigns/{draft['id']}", headers=acme.auth(acme.viewer))
    assert gone.status_code == 404
    listed = client.get("/v1/campaigns", headers=acme.auth(acme.viewer)).json()["items"]
    assert [c["id"] for c in listed] == [started["id"]]


def test_a_drafts_sender_reply_to_headers_and_files_change_part_by_part(
    client: TestClient, acme: TenantKeys, audience: dict[str, Any]
) -> None:
    syllabus = {
        "filename": "syllabus.pdf",
        "content_type": "application/pdf",
        "content": "JVBERi0xLjQK",  # "%PDF-1.4\n"
    }
    created = _create(
        client,
        acme,
        template_id=audience["template_id"],
        list_ids=audience["lists"],
        reply_to="office@example.edu",
        attachments=[syllabus],
    )
    answer = _patch(
        client,
        acme,
        created["id"],
        **{"from": {"name": "Registrar", "address": "registrar@example.edu"}},
        headers={"X-Term": "spring"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["from_address"] == '"Registrar" <registrar@example.edu>'
    assert body["headers"] == {"X-Term": "spring"}
    # Parts left out keep their value.
    assert body["reply_to"] == "office@example.edu"
    assert [a["filename"] for a in body["attachments"]] == ["syllabus.pdf"]
    cleared = _patch(client, acme, created["id"], attachments=[], reply_to=None).json()
    assert (cleared["attachments"], cleared["reply_to"]) == ([], None)
    assert cleared["headers"] == {"X-Term": "spring"}
    refused = _patch(client, acme, created["id"], headers={"Bcc": "x@example.com"})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "headers.Bcc"
