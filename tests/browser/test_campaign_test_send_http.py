"""The campaign page's "Send a test" form over plain HTTP, on both databases: it queues the test
(not counted in the campaign) and says so, shows what was wrong in place, and only a sender of the
campaign's own tenant can use it."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.browser.dashboard_helpers import make_contacts, make_template, sign_in
from tests.conftest import TenantKeys
from tidings.db.models import Message
from tidings.runtime import Runtime


def _draft(client: TestClient, tenant: TenantKeys) -> tuple[int, int]:
    template_id = make_template(client, tenant.admin)
    [ann] = make_contacts(client, tenant.admin, ["ann@example.com"])
    created = client.post(
        "/v1/campaigns",
        json={"name": "Term", "template_id": template_id, "contact_ids": [ann],
              "data": {"personal_message": "Hi.", "deadline": "Friday"}},
        headers=tenant.auth(tenant.admin),
    )  # fmt: skip
    assert created.status_code == 201, created.text
    return created.json()["id"], ann


def _tests(runtime: Runtime, tenant_id: int) -> list[tuple[str, int | None, dict | None]]:
    with runtime.sessions() as session:
        rows = session.execute(
            select(Message.to_address, Message.campaign_id, Message.features)
            .where(Message.tenant_id == tenant_id)
            .order_by(Message.id)
        )
        return [(to, campaign_id, features) for to, campaign_id, features in rows]


def test_the_form_queues_a_test_as_the_contact_and_the_page_says_so(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    campaign_id, ann = _draft(client, acme)
    token = sign_in(client, acme.sender)
    page = client.get(f"/campaigns/{campaign_id}").text
    assert "Send a test" in page and f'action="/campaigns/{campaign_id}/test"' in page

    answer = client.post(
        f"/campaigns/{campaign_id}/test",
        data={
            "csrf_token": token,
            "to": "me@example.com,\nboss@example.com",
            "contact_id": str(ann),
        },
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/campaigns/{campaign_id}?done=test-sent"
    shown = client.get(answer.headers["location"]).text
    assert "The test is on its way" in shown
    queued = _tests(runtime, acme.tenant_id)
    assert [(to, c) for to, c, _ in queued] == [
        ("me@example.com", None),
        ("boss@example.com", None),
    ]
    assert all(
        f and f["test"] == {"campaign_id": campaign_id, "contact_id": ann} for _, _, f in queued
    )
    assert 'data-field="recipients">0<' in shown


def test_a_wrong_address_or_contact_is_shown_on_the_page_and_nothing_is_queued(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    campaign_id, _ = _draft(client, acme)
    _, their_contact = _draft(client, globex)
    token = sign_in(client, acme.sender)
    for data, message in (
        ({"to": "not an address"}, "to[0] is not a valid email address"),
        ({"to": ""}, "to must hold 1 to 10 addresses"),
        ({"to": " ".join(f"m{i}@example.com" for i in range(11))}, "to must hold 1 to 10"),
        ({"to": "me@example.com", "contact_id": "abc"}, "must be a contact id"),
        ({"to": "me@example.com", "contact_id": str(their_contact)}, "no such contact"),
    ):
        answer = client.post(f"/campaigns/{campaign_id}/test", data={"csrf_token": token, **data})
        assert answer.status_code == 422, data
        assert 'id="test-error"' in answer.text and message in answer.text, data
        assert f'value="{data["to"]}"' in answer.text  # what was typed stays
    assert _tests(runtime, acme.tenant_id) == []


def test_only_a_sender_of_the_campaigns_tenant_can_send_a_test(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    campaign_id, _ = _draft(client, acme)
    theirs, _ = _draft(client, globex)
    token = sign_in(client, acme.viewer)
    assert "Send a test" not in client.get(f"/campaigns/{campaign_id}").text
    refused = client.post(
        f"/campaigns/{campaign_id}/test", data={"csrf_token": token, "to": "me@example.com"}
    )
    assert refused.status_code == 403
    with TestClient(client.app) as sender:
        token = sign_in(sender, acme.sender)
        other = sender.post(
            f"/campaigns/{theirs}/test", data={"csrf_token": token, "to": "me@example.com"}
        )
        assert other.status_code == 404
    assert _tests(runtime, acme.tenant_id) == [] and _tests(runtime, globex.tenant_id) == []
