"""The dashboard over plain HTTP (no browser): sign-in and sessions, CSRF, roles, tenant isolation,
the forms' validation, the progress stream, the queue monitor, the import and the inbox.

Runs on SQLite and PostgreSQL like every database test.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from tests.acceptance.conftest import WorkerThread, wait_until
from tests.browser.dashboard_helpers import (
    csrf_of,
    field_error,
    make_contacts,
    make_template,
    sign_in,
)
from tests.conftest import TEST_SECRET, TenantKeys, create_tenant, make_settings
from tests.integration.test_domain_rates import slow_domain
from tidings.app import create_app
from tidings.db.engine import transaction
from tidings.db.models import Message
from tidings.queue import fanout
from tidings.runtime import Runtime, build_runtime
from tidings.web import security


def _campaign(client: TestClient, tenant: TenantKeys, *, start: bool = True) -> int:
    auth = tenant.auth(tenant.admin)
    template_id = make_template(client, tenant.admin)
    contact_ids = make_contacts(client, tenant.admin, ["ann@example.com", "bob@example.com"])
    created = client.post(
        "/v1/campaigns",
        json={"name": "Term", "template_id": template_id, "contact_ids": contact_ids},
        headers=auth,
    )
    assert created.status_code == 201, created.text
    campaign_id: int = created.json()["id"]
    if start:
        started = client.post(f"/v1/campaigns/{campaign_id}/start", headers=auth)
        assert started.status_code == 202, started.text
    return campaign_id


def _another_campaign(client: TestClient, tenant: TenantKeys, like: int) -> int:
    """A started campaign with the template and audience of campaign ``like``."""
    auth = tenant.auth(tenant.admin)
    model = client.get(f"/v1/campaigns/{like}", headers=auth).json()
    fields = {key: model[key] for key in ("template_id", "contact_ids")}
    created = client.post("/v1/campaigns", json={"name": "Other", **fields}, headers=auth).json()
    assert client.post(f"/v1/campaigns/{created['id']}/start", headers=auth).status_code == 202
    campaign_id: int = created["id"]
    return campaign_id


def _status(client: TestClient, tenant: TenantKeys, campaign_id: int) -> str:
    answer = client.get(f"/v1/campaigns/{campaign_id}", headers=tenant.auth(tenant.admin))
    status: str = answer.json()["status"]
    return status


# -- signing in ---------------------------------------------------------------------------------


def test_every_page_needs_a_sign_in_and_sends_the_browser_to_the_form(client: TestClient) -> None:
    for path in ("/", "/campaigns/new", "/queue", "/contacts", "/throttle", "/campaigns/1"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next=")
    assert client.get("/events/campaigns?ids=1").status_code == 401
    refused = client.post("/campaigns/1/pause", data={"csrf_token": "x"}, follow_redirects=False)
    assert refused.status_code == 303


def test_signing_in_sets_an_http_only_strict_cookie_that_names_the_key_without_holding_it(
    client: TestClient, acme: TenantKeys
) -> None:
    form = client.get("/login?next=/queue")
    answer = client.post(
        "/login",
        data={"api_key": acme.sender, "csrf_token": csrf_of(form.text), "next": "/queue"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/queue"
    cookie = next(
        c for c in answer.headers.get_list("set-cookie") if c.startswith("tidings_session=")
    )
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Secure" not in cookie  # the public URL is http:// in this test
    secret_part = acme.sender.split("_", 2)[2]
    assert secret_part not in cookie and acme.sender not in cookie
    assert client.get("/queue").status_code == 200


def test_the_session_cookie_is_secure_when_the_public_url_is_https(
    tmp_path: Path, db_url: str
) -> None:
    runtime = build_runtime(
        make_settings(tmp_path, db_url, public_url="https://mail.example.org"), migrate=True
    )
    try:
        tenant = create_tenant(runtime, "acme")
        with TestClient(create_app(runtime), base_url="https://testserver") as client:
            form = client.get("/login")
            answer = client.post(
                "/login",
                data={"api_key": tenant.admin, "csrf_token": csrf_of(form.text)},
                follow_redirects=False,
            )
            cookie = answer.headers["set-cookie"]
            assert "tidings_session=" in cookie and "Secure" in cookie
    finally:
        runtime.close()


def test_a_wrong_key_is_answered_on_the_form_and_signs_nobody_in(
    client: TestClient, acme: TenantKeys
) -> None:
    form = client.get("/login")
    answer = client.post(
        "/login", data={"api_key": acme.sender + "x", "csrf_token": csrf_of(form.text)}
    )
    assert answer.status_code == 401
    assert "not valid" in (field_error(answer.text, "api_key") or "")
    assert client.get("/", follow_redirects=False).status_code == 303


def test_redirects_after_sign_in_stay_on_this_site(client: TestClient, acme: TenantKeys) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        client.cookies.clear()
        form = client.get("/login")
        answer = client.post(
            "/login",
            data={"api_key": acme.sender, "csrf_token": csrf_of(form.text), "next": target},
            follow_redirects=False,
        )
        assert answer.headers["location"] == "/"


def test_revoking_the_key_signs_its_sessions_out(client: TestClient, acme: TenantKeys) -> None:
    sign_in(client, acme.sender)
    assert client.get("/", follow_redirects=False).status_code == 200
    prefix = acme.sender.split("_")[1]
    keys = client.get("/v1/keys", headers=acme.auth(acme.admin)).json()["items"]
    key_id = next(k["id"] for k in keys if k["prefix"] == prefix)
    assert client.delete(f"/v1/keys/{key_id}", headers=acme.auth(acme.admin)).status_code in (
        200,
        204,
    )
    answer = client.get("/", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")


def test_an_altered_or_expired_cookie_is_no_session(client: TestClient, acme: TenantKeys) -> None:
    sign_in(client, acme.sender)
    value = client.cookies["tidings_session"]
    client.cookies.clear()
    client.cookies.set("tidings_session", value)
    assert client.get("/", follow_redirects=False).status_code == 200  # the real one, re-set
    key_id, issued, nonce, signature = value.split(".")
    other_key = f"{int(key_id) + 1}.{issued}.{nonce}.{signature}"
    old = security.issue_session(
        secret=TEST_SECRET, key_id=int(key_id), now=datetime(2020, 1, 1, tzinfo=UTC)
    )
    for forged in (other_key, value[:-2] + "xx", old, "garbage"):
        client.cookies.clear()
        client.cookies.set("tidings_session", forged)
        assert client.get("/", follow_redirects=False).status_code == 303, forged


def test_signing_out_ends_the_session(client: TestClient, acme: TenantKeys) -> None:
    token = sign_in(client, acme.viewer)
    answer = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert answer.status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303


# -- CSRF, roles and tenants --------------------------------------------------------------------


def test_a_post_without_the_sessions_csrf_token_is_refused_and_changes_nothing(
    client: TestClient, acme: TenantKeys, runtime: Runtime
) -> None:
    campaign_id = _campaign(client, acme)
    sign_in(client, acme.sender)
    # Another session's token is as wrong as none: tokens are bound to one sign-in.
    with TestClient(client.app) as other:
        other_token = sign_in(other, acme.sender)
    for data in ({}, {"csrf_token": "forged"}, {"csrf_token": other_token}):
        answer = client.post(f"/campaigns/{campaign_id}/pause", data=data)
        assert answer.status_code == 403
        assert "text/html" in answer.headers["content-type"]
        assert "Reload the page" in answer.text
    assert _status(client, acme, campaign_id) == "running"
    # The sign-in form has its own token, bound to a pre-session cookie.
    with TestClient(client.app) as stranger:
        refused = stranger.post("/login", data={"api_key": acme.sender, "csrf_token": "x"})
        assert refused.status_code == 403


def test_a_viewer_sees_every_page_but_cannot_act(client: TestClient, acme: TenantKeys) -> None:
    campaign_id = _campaign(client, acme)
    token = sign_in(client, acme.viewer)
    for path in ("/", f"/campaigns/{campaign_id}", "/queue", "/throttle", "/campaigns/new"):
        assert client.get(path).status_code == 200, path
    detail = client.get(f"/campaigns/{campaign_id}").text
    assert f'action="/campaigns/{campaign_id}/pause"' not in detail
    for path, data in (
        (f"/campaigns/{campaign_id}/pause", {}),
        (f"/campaigns/{campaign_id}/cancel", {}),
        ("/throttle", {"per_second": "5", "enabled": "on"}),
        ("/campaigns/new", {"name": "x"}),
        ("/lists", {"name": "new list"}),
    ):
        answer = client.post(path, data={"csrf_token": token, **data})
        assert answer.status_code == 403, path
        assert "viewer" in answer.text
    assert _status(client, acme, campaign_id) == "running"


def test_another_tenants_campaign_is_a_404_page_like_a_missing_one(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    theirs = _campaign(client, globex)
    token = sign_in(client, acme.admin)
    for path in (f"/campaigns/{theirs}", "/campaigns/999999"):
        answer = client.get(path)
        assert answer.status_code == 404
        assert "no such campaign" in answer.text
    refused = client.post(f"/campaigns/{theirs}/pause", data={"csrf_token": token})
    assert refused.status_code == 404
    assert _status(client, globex, theirs) == "running"
    stream = client.get(f"/events/campaigns?ids={theirs}")
    assert json.loads(_events(stream.text)[0][1]) == []


def test_dashboard_routes_stay_out_of_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith(("/campaigns", "/login", "/events"))]


def test_pages_carry_a_strict_content_security_policy(client: TestClient, acme: TenantKeys) -> None:
    sign_in(client, acme.viewer)
    for path in ("/", "/login", "/campaigns/424242"):
        headers = client.get(path).headers
        assert "script-src 'self'" in headers["content-security-policy"], path
        assert headers["x-frame-options"] == "DENY"
    assert client.get("/static/htmx.min.js").status_code == 200
    assert client.get("/static/..%2Fpages.py").status_code == 404


# -- forms --------------------------------------------------------------------------------------


def test_the_throttle_form_shows_each_mistake_next_to_its_field_and_saves_nothing(
    client: TestClient, acme: TenantKeys
) -> None:
    token = sign_in(client, acme.admin)
    answer = client.post(
        "/throttle",
        data={"csrf_token": token, "enabled": "on", "per_second": "0", "per_minute": "lots"},
    )
    assert answer.status_code == 422
    assert "from 1 to" in (field_error(answer.text, "per_second") or "")
    assert "whole number" in (field_error(answer.text, "per_minute") or "")
    assert field_error(answer.text, "per_hour") is None
    assert 'id="per_second" name="per_second"' in answer.text
    assert client.get("/v1/throttle", headers=acme.auth(acme.admin)).json()["enabled"] is False

    saved = client.post(
        "/throttle",
        data={"csrf_token": token, "enabled": "on", "per_second": "5", "per_day": "1000"},
        follow_redirects=False,
    )
    assert saved.status_code == 303
    limits = client.get("/v1/throttle", headers=acme.auth(acme.admin)).json()
    assert (limits["enabled"], limits["per_second"], limits["per_minute"], limits["per_day"]) == (
        True,
        5,
        None,
        1000,
    )


def test_the_throttle_page_lists_the_tenants_domains_with_their_adaptive_rates(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    client.put(
        "/v1/throttle/domains/outlook.com", json={"per_minute": 120}, headers=acme.auth(acme.admin)
    )
    slow_domain(runtime, acme.tenant_id, "slow.test")
    slow_domain(runtime, globex.tenant_id, "globex-only.test")
    sign_in(client, acme.viewer)
    page = client.get("/throttle").text
    slow = re.search(r"<tr><td>slow\.test</td>.*?</tr>", page)
    assert slow is not None
    cells = re.findall(r"<td>(.*?)</td>", slow.group(0))
    assert cells[:6] == ["slow.test", "—", "—", "10/s", "—", "backing off"]
    assert cells[6].endswith(" UTC") and cells[7] == "—"
    outlook = re.search(r"<tr><td>outlook\.com</td>.*?</tr>", page)
    assert outlook is not None
    assert re.findall(r"<td>(.*?)</td>", outlook.group(0))[:6] == [
        "outlook.com",
        "120",
        "—",
        "—",
        "2/s",
        "steady",
    ]
    assert "globex-only.test" not in page


def test_the_new_campaign_form_starts_a_campaign_for_the_ticked_contacts(
    client: TestClient, acme: TenantKeys
) -> None:
    template_id = make_template(client, acme.admin)
    ann, bob, _cy = make_contacts(
        client, acme.admin, ["ann@example.com", "bob@example.com", "cy@example.com"]
    )
    token = sign_in(client, acme.sender)
    answer = client.post(
        "/campaigns/new",
        data={
            "csrf_token": token,
            "name": "Grades",
            "template_id": str(template_id),
            "contact_ids": [str(ann), str(bob)],
            "personal_message": "Please submit your grades.",
            "deadline": "2031-06-30",
            "when": "now",
        },
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    campaign_id = int(answer.headers["location"].split("/")[2].split("?")[0])
    campaign = client.get(f"/v1/campaigns/{campaign_id}", headers=acme.auth(acme.admin)).json()
    assert campaign["status"] == "running"
    assert campaign["recipient_count"] == 2
    assert campaign["data"] == {
        "personal_message": "Please submit your grades.",
        "deadline": "2031-06-30",
    }
    page = client.get(answer.headers["location"]).text
    assert "The campaign has started." in page


def test_the_new_campaign_form_keeps_what_was_entered_when_it_comes_back_with_errors(
    client: TestClient, acme: TenantKeys
) -> None:
    (ann,) = make_contacts(client, acme.admin, ["ann@example.com"])
    token = sign_in(client, acme.sender)
    answer = client.post(
        "/campaigns/new",
        data={
            "csrf_token": token,
            "name": "Grades",
            "contact_ids": [str(ann)],
            "when": "schedule",
            "scheduled_at": "not a time",
        },
    )
    assert answer.status_code == 422
    assert field_error(answer.text, "template_id") == "Choose a template."
    assert "date and time" in (field_error(answer.text, "scheduled_at") or "")
    assert 'value="Grades"' in answer.text
    assert re.search(rf'value="{ann}" id="contact-{ann}" checked', answer.text)
    assert client.get("/v1/campaigns", headers=acme.auth(acme.admin)).json()["items"] == []


def test_the_preview_shows_the_mail_for_one_contact_inside_a_sandboxed_frame(
    client: TestClient, acme: TenantKeys
) -> None:
    template_id = make_template(client, acme.admin)
    (ann,) = make_contacts(client, acme.admin, ["ann@example.com"])
    sign_in(client, acme.viewer)
    answer = client.get(
        "/campaigns/new/preview",
        params={
            "template_id": template_id,
            "preview_contact_id": ann,
            "personal_message": "<script>alert(1)</script>",
            "deadline": "Friday",
        },
    )
    assert answer.status_code == 200
    assert "Reminder for Ann" in answer.text
    frame = re.search(r"<iframe[^>]*>", answer.text)
    assert frame and " sandbox " in frame.group(0)
    assert "<script>" not in answer.text  # escaped twice: in the mail, then in srcdoc
    missing = client.get(
        "/campaigns/new/preview", params={"template_id": 999999, "preview_contact_id": ann}
    )
    assert "no such template" in missing.text


def test_the_dashboard_preview_shows_only_inert_links(client: TestClient, acme: TenantKeys) -> None:
    """A viewer's preview must not hand out a working unsubscribe or preferences link."""
    template_id = make_template(
        client,
        acme.admin,
        html='<p>Hi</p><a href="{{ unsubscribe_url }}">u</a> <a href="{{ preferences_url }}">p</a>',
    )
    (ann,) = make_contacts(client, acme.admin, ["ann@example.com"])
    sign_in(client, acme.viewer)
    answer = client.get(
        "/campaigns/new/preview", params={"template_id": template_id, "preview_contact_id": ann}
    )
    assert answer.status_code == 200
    links = set(re.findall(r"http://tidings\.test/[up]/[A-Za-z0-9_-]+", answer.text))
    assert links == {"http://tidings.test/u/preview", "http://tidings.test/p/preview"}


def test_searching_contacts_keeps_the_ticked_ones_that_the_search_hides(
    client: TestClient, acme: TenantKeys
) -> None:
    ann, bob = make_contacts(client, acme.admin, ["ann@example.com", "bob@example.com"])
    sign_in(client, acme.sender)
    answer = client.get("/campaigns/new/contacts", params={"q": "bob", "contact_ids": [ann, bob]})
    assert "bob@example.com" in answer.text and "ann@example.com" not in answer.text
    assert f'<input type="hidden" name="contact_ids" value="{ann}">' in answer.text
    assert re.search(rf'value="{bob}" id="contact-{bob}" checked', answer.text)


def test_a_campaign_can_be_paused_resumed_and_cancelled_from_its_page(
    client: TestClient, acme: TenantKeys
) -> None:
    campaign_id = _campaign(client, acme)
    token = sign_in(client, acme.sender)
    for action, status in (("pause", "paused"), ("resume", "running"), ("cancel", "cancelled")):
        answer = client.post(
            f"/campaigns/{campaign_id}/{action}", data={"csrf_token": token}, follow_redirects=False
        )
        assert answer.status_code == 303, answer.text
        assert _status(client, acme, campaign_id) == status
    again = client.post(f"/campaigns/{campaign_id}/pause", data={"csrf_token": token})
    assert again.status_code == 409
    assert "cancelled" in again.text


def test_a_preparing_campaign_can_be_paused_and_resumed_from_its_page(
    client: TestClient, acme: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "FANOUT_CHUNK", 1)  # two contacts: the second is written later
    campaign_id = _campaign(client, acme)
    assert _status(client, acme, campaign_id) == "preparing"
    token = sign_in(client, acme.sender)
    detail = client.get(f"/campaigns/{campaign_id}").text
    pause_form = re.search(
        rf'<form method="post" action="/campaigns/{campaign_id}/pause"[^>]*>', detail
    )
    assert pause_form is not None and " hidden" not in pause_form.group(0)
    assert 'data-when="preparing running"' in pause_form.group(0)  # the live script agrees
    for action, status in (("pause", "paused"), ("resume", "preparing")):
        answer = client.post(
            f"/campaigns/{campaign_id}/{action}", data={"csrf_token": token}, follow_redirects=False
        )
        assert answer.status_code == 303, answer.text
        assert _status(client, acme, campaign_id) == status
        detail = client.get(f"/campaigns/{campaign_id}").text
        assert ("still being written" in detail) == (status == "paused")


def test_a_draft_is_edited_from_its_page_then_scheduled_and_a_running_one_cannot_be(
    client: TestClient, acme: TenantKeys
) -> None:
    campaign_id = _campaign(client, acme, start=False)
    auth = acme.auth(acme.admin)
    client.patch(f"/v1/campaigns/{campaign_id}", json={"data": {"keep": "me"}}, headers=auth)
    token = sign_in(client, acme.sender)
    page = client.get(f"/campaigns/{campaign_id}").text
    assert f'action="/campaigns/{campaign_id}/edit"' in page and "Delete draft" in page
    form = client.get(f"/campaigns/{campaign_id}/edit")
    assert form.status_code == 200 and 'value="Term"' in form.text
    assert f'action="/campaigns/{campaign_id}/edit"' in form.text
    current = client.get(f"/v1/campaigns/{campaign_id}", headers=auth).json()
    when = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M")
    fields = {
        "csrf_token": token,
        "name": "Term (fixed)",
        "template_id": str(current["template_id"]),
        "contact_ids": [str(i) for i in current["contact_ids"]],
        "personal_message": "See you",
        "deadline": "2031-06-30",
        "when": "schedule",
        "scheduled_at": when,
    }
    refused = client.post(f"/campaigns/{campaign_id}/edit", data={**fields, "name": ""})
    assert refused.status_code == 422 and field_error(refused.text, "name")
    saved = client.post(f"/campaigns/{campaign_id}/edit", data=fields, follow_redirects=False)
    assert saved.status_code == 303, saved.text
    after = client.get(f"/v1/campaigns/{campaign_id}", headers=auth).json()
    assert (after["name"], after["status"]) == ("Term (fixed)", "scheduled")
    assert after["scheduled_at"].startswith(when)  # the tenant's zone is UTC
    assert after["data"] == {"keep": "me", "personal_message": "See you", "deadline": "2031-06-30"}
    assert "Delete draft" not in client.get(f"/campaigns/{campaign_id}").text.split("hidden>")[0]
    unscheduled = client.post(
        f"/campaigns/{campaign_id}/edit", data={**fields, "when": "draft"}, follow_redirects=False
    )
    assert unscheduled.status_code == 303
    assert _status(client, acme, campaign_id) == "draft"
    started = _another_campaign(client, acme, campaign_id)
    assert client.get(f"/campaigns/{started}/edit").status_code == 409
    assert client.post(f"/campaigns/{started}/edit", data=fields).status_code == 409


def test_only_a_draft_is_deleted_from_its_page(client: TestClient, acme: TenantKeys) -> None:
    draft = _campaign(client, acme, start=False)
    started = _another_campaign(client, acme, draft)
    token = sign_in(client, acme.sender)
    refused = client.post(f"/campaigns/{started}/delete", data={"csrf_token": token})
    assert refused.status_code == 409 and _status(client, acme, started) == "running"
    deleted = client.post(
        f"/campaigns/{draft}/delete", data={"csrf_token": token}, follow_redirects=False
    )
    assert deleted.status_code == 303
    assert "The draft was deleted." in client.get(deleted.headers["location"]).text
    assert client.get(f"/campaigns/{draft}").status_code == 404


# -- live progress ------------------------------------------------------------------------------


def _events(stream: str) -> list[tuple[str, str]]:
    found = re.findall(r"event: (\w+)\ndata: (.*)\n", stream)
    return [(name, data) for name, data in found]


def test_progress_streams_as_server_sent_events_until_the_campaign_ends(
    client: TestClient, acme: TenantKeys
) -> None:
    campaign_id = _campaign(client, acme)
    client.post(f"/v1/campaigns/{campaign_id}/cancel", headers=acme.auth(acme.admin))
    sign_in(client, acme.viewer)
    answer = client.get(f"/events/campaigns?ids={campaign_id}")
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = _events(answer.text)
    assert [name for name, _ in events] == ["progress", "done"]
    (figures,) = json.loads(events[0][1])
    assert figures["id"] == campaign_id
    assert figures["status"] == "cancelled" and figures["final"] is True
    assert figures["recipients"] == 2 and figures["cancelled"] == 2


def test_a_revoked_key_ends_its_progress_stream(client: TestClient, acme: TenantKeys) -> None:
    campaign_id = _campaign(client, acme)
    sign_in(client, acme.viewer)
    prefix = acme.viewer.split("_")[1]
    keys = client.get("/v1/keys", headers=acme.auth(acme.admin)).json()["items"]
    key_id = next(k["id"] for k in keys if k["prefix"] == prefix)
    # The stream starts with the session valid, then finds the key revoked on its next read.
    with client.stream("GET", f"/events/campaigns?ids={campaign_id}") as stream:
        lines = stream.iter_lines()
        while "event: progress" not in next(lines):
            pass
        client.delete(f"/v1/keys/{key_id}", headers=acme.auth(acme.admin))
        assert "event: signout" in "\n".join(lines)


# -- queue, lists, suppressions, inbox ----------------------------------------------------------


def test_the_queue_monitor_retries_dead_letters(
    client: TestClient, acme: TenantKeys, runtime: Runtime
) -> None:
    auth = acme.auth(acme.admin)
    sent = client.post(
        "/v1/messages",
        json={"to": "zed@example.com", "subject": "Hi", "text": "Hello"},
        headers=auth,
    )
    message_id = sent.json()["id"]
    campaign_id = _campaign(client, acme)
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Message)
            .where(Message.tenant_id == acme.tenant_id)
            .values(status="dead", last_error="451 4.3.0 try later")
        )
    token = sign_in(client, acme.sender)
    page = client.get("/queue").text
    assert re.search(r'data-status-row="dead">.*?<td class="num">3</td>', page, re.S)
    assert "451 4.3.0 try later" in page
    one = client.post(
        f"/queue/messages/{message_id}/retry", data={"csrf_token": token}, follow_redirects=False
    )
    assert one.status_code == 303
    assert client.get(f"/v1/messages/{message_id}", headers=auth).json()["status"] == "queued"
    campaign_message = client.get(f"/v1/campaigns/{campaign_id}/failed-recipients", headers=auth)
    first = campaign_message.json()["items"][0]["message_id"]
    client.post(f"/queue/messages/{first}/retry", data={"csrf_token": token})
    progress = client.get(f"/v1/campaigns/{campaign_id}", headers=auth).json()
    assert progress["failed"] == 0 and progress["pending"] == 2


def test_the_import_form_shows_the_report(client: TestClient, acme: TenantKeys) -> None:
    token = sign_in(client, acme.sender)
    created = client.post(
        "/lists", data={"csrf_token": token, "name": "Staff"}, follow_redirects=False
    )
    assert created.status_code == 303
    list_id = client.get("/v1/lists", headers=acme.auth(acme.admin)).json()["items"][0]["id"]
    csv = b"email,first_name\nann@example.com,Ann\nnot-an-address,Bob\nann@example.com,Again\n"
    answer = client.post(
        f"/lists/{list_id}/import",
        data={"csrf_token": token},
        files={"file": ("staff.csv", csv, "text/csv")},
    )
    assert answer.status_code == 200, answer.text
    assert re.search(r'data-report="created">1<', answer.text)
    assert re.search(r'data-report="skipped">2<', answer.text)
    assert "duplicate of line 2" in answer.text
    wrong = client.post(
        f"/lists/{list_id}/import",
        data={"csrf_token": token},
        files={"file": ("staff.pdf", b"%PDF", "application/pdf")},
    )
    assert wrong.status_code == 422
    assert ".csv" in (field_error(wrong.text, f"file-{list_id}") or "")


def test_the_suppression_list_is_shown(client: TestClient, acme: TenantKeys) -> None:
    client.post(
        "/v1/suppressions",
        json={"email": "gone@example.com", "reason": "complaint"},
        headers=acme.auth(acme.admin),
    )
    sign_in(client, acme.viewer)
    page = client.get("/suppressions?q=gone").text
    assert "gone@example.com" in page and "complaint" in page


def test_the_inbox_shows_the_tenants_sent_mail_in_a_sandboxed_frame(
    client: TestClient, acme: TenantKeys, globex: TenantKeys, runtime: Runtime
) -> None:
    sent = client.post(
        "/v1/messages",
        json={
            "to": "ann@example.com",
            "subject": "Your code",
            "html": '<p onclick="alert(1)">Code <b>1234</b></p>',
        },
        headers=acme.auth(acme.admin),
    )
    message_id = sent.json()["id"]
    worker = WorkerThread(runtime).start()
    try:
        wait_until(
            lambda: (
                client.get(f"/v1/messages/{message_id}", headers=acme.auth(acme.admin)).json()[
                    "status"
                ]
                == "sent"
            )
        )
    finally:
        worker.stop()
    sign_in(client, acme.viewer)
    listing = client.get("/inbox").text
    assert "Your code" in listing and f'href="/inbox/{message_id}"' in listing
    shown = client.get(f"/inbox/{message_id}").text
    frame = re.search(r"<iframe[^>]*>", shown)
    assert frame and " sandbox " in frame.group(0) and "srcdoc=" in frame.group(0)
    assert "<b>1234</b>" not in shown  # the mail's HTML exists only inside the frame's srcdoc
    with TestClient(client.app) as other:
        sign_in(other, globex.viewer)
        assert "Your code" not in other.get("/inbox").text
        assert other.get(f"/inbox/{message_id}").status_code == 404


def test_the_inbox_shows_a_sent_mails_links_only_as_inert_placeholders(
    client: TestClient, acme: TenantKeys, runtime: Runtime
) -> None:
    """The outbox holds working links; a viewer reading it must not get one (tokens.py)."""
    (ann,) = make_contacts(client, acme.admin, ["ann@example.com"])
    sent = client.post(
        "/v1/messages",
        json={
            "contact_id": ann,
            "subject": "Your code",
            "html": '<p>1234</p><a href="{{ unsubscribe_url }}">u</a>',
            "text": "1234 {{ preferences_url }}",
        },
        headers=acme.auth(acme.admin),
    )
    message_id = sent.json()["id"]
    worker = WorkerThread(runtime).start()
    try:
        wait_until(
            lambda: (
                client.get(f"/v1/messages/{message_id}", headers=acme.auth(acme.admin)).json()[
                    "status"
                ]
                == "sent"
            )
        )
    finally:
        worker.stop()
    outbox = runtime.settings.resolved_transport_url().removeprefix("outbox://")
    [stored] = [p.read_text() for p in Path(outbox, "new").iterdir()]
    assert re.search(r"/u/[A-Za-z0-9_-]{30,}", stored)  # the mail itself carries a real link
    sign_in(client, acme.viewer)
    shown = client.get(f"/inbox/{message_id}").text
    links = set(re.findall(r"http://tidings\.test/[up]/[A-Za-z0-9_-]+", shown))
    assert links == {"http://tidings.test/u/preview", "http://tidings.test/p/preview"}


@pytest.mark.parametrize("path", ["/contacts", "/lists", "/suppressions", "/inbox", "/queue"])
def test_list_pages_render_when_empty(client: TestClient, acme: TenantKeys, path: str) -> None:
    sign_in(client, acme.viewer)
    answer = client.get(path)
    assert answer.status_code == 200
    assert '<a class="skip-link" href="#main">' in answer.text


def test_a_campaigns_page_still_shows_after_its_list_was_deleted(
    client: TestClient, acme: TenantKeys
) -> None:
    auth = acme.auth(acme.admin)
    template_id = make_template(client, acme.admin)
    make_contacts(client, acme.admin, ["ann@example.com"])
    list_id = client.post("/v1/lists", json={"name": "Old list"}, headers=auth).json()["id"]
    kept_id = client.post("/v1/lists", json={"name": "Kept list"}, headers=auth).json()["id"]
    created = client.post(
        "/v1/campaigns",
        json={"name": "Old", "template_id": template_id, "list_ids": [list_id, kept_id]},
        headers=auth,
    )
    campaign_id = created.json()["id"]
    assert client.delete(f"/v1/lists/{list_id}", headers=auth).status_code == 204
    sign_in(client, acme.viewer)
    page = client.get(f"/campaigns/{campaign_id}")
    assert page.status_code == 200
    assert "Kept list" in page.text and "Old list" not in page.text
