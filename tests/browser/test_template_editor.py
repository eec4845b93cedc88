"""The dashboard's template editor: create and change templates, a live preview of the unsaved
text as one contact gets it, syntax errors at their line, and the variables read. Over plain HTTP
on both databases, then once in Chromium (SQLite), typing as a person types."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.browser.conftest import LiveServer
from tests.browser.dashboard_helpers import field_error, make_contacts, make_template, sign_in
from tests.conftest import TenantKeys
from tidings.api.app import create_app
from tidings.runtime import Runtime

TIMEOUT_MS = 30_000
FIELDS = {
    "name": "welcome",
    "category": "",
    "subject": "Welcome {{ first_name }}",
    "html": "<p>Hello {{ first_name }} from {{ attributes.city }}</p>",
    "text": "",
}


def _template(client: TestClient, tenant: TenantKeys, template_id: int) -> dict[str, Any]:
    body: dict[str, Any] = client.get(
        f"/v1/templates/{template_id}", headers=tenant.auth(tenant.admin)
    ).json()
    return body


def test_a_template_is_created_changed_and_deleted_in_the_dashboard(
    client: TestClient, acme: TenantKeys
) -> None:
    token = sign_in(client, acme.sender)
    assert "New template" in client.get("/templates").text
    created = client.post(
        "/templates/new", data={"csrf_token": token, **FIELDS}, follow_redirects=False
    )
    assert created.status_code == 303, created.text
    template_id = int(created.headers["location"].split("/")[2].split("?")[0])
    assert "The template was saved." in client.get(created.headers["location"]).text
    assert _template(client, acme, template_id)["subject"] == "Welcome {{ first_name }}"
    changed = client.post(
        f"/templates/{template_id}",
        data={"csrf_token": token, **FIELDS, "subject": "Hi {{ first_name }}"},
        follow_redirects=False,
    )
    assert changed.status_code == 303
    assert _template(client, acme, template_id)["subject"] == "Hi {{ first_name }}"
    listed = client.get("/templates").text
    assert f'href="/templates/{template_id}"' in listed and "Hi {{ first_name }}" in listed
    deleted = client.post(
        f"/templates/{template_id}/delete", data={"csrf_token": token}, follow_redirects=False
    )
    assert deleted.status_code == 303
    assert client.get(f"/templates/{template_id}").status_code == 404


def test_a_syntax_error_is_shown_at_its_line_and_nothing_is_saved(
    client: TestClient, acme: TenantKeys
) -> None:
    token = sign_in(client, acme.sender)
    broken = {**FIELDS, "html": "<p>fine</p>\n<p>{{ first_name }</p>"}
    answer = client.post("/templates/new", data={"csrf_token": token, **broken})
    assert answer.status_code == 422
    assert (field_error(answer.text, "html") or "").startswith("Line 2:")
    assert "{{ first_name }&lt;/p&gt;" in answer.text or "{{ first_name }</p>" in answer.text
    assert client.get("/v1/templates", headers=acme.auth(acme.viewer)).json()["items"] == []
    taken = make_template(client, acme.admin, name="taken")
    assert taken
    clash = client.post("/templates/new", data={"csrf_token": token, **FIELDS, "name": "taken"})
    assert clash.status_code == 422 and "already exists" in (field_error(clash.text, "name") or "")


def test_the_preview_renders_the_unsaved_text_for_a_contact_and_lists_its_variables(
    client: TestClient, acme: TenantKeys
) -> None:
    (ann,) = make_contacts(client, acme.admin, ["ann@example.com"])
    client.patch(
        f"/v1/contacts/{ann}", json={"attributes": {"city": "Lyon"}}, headers=acme.auth(acme.admin)
    )
    token = sign_in(client, acme.viewer)  # previewing changes nothing: a viewer may
    answer = client.post(
        "/templates/preview",
        data={"csrf_token": token, **FIELDS, "preview_contact_id": str(ann)},
    )
    assert answer.status_code == 200, answer.text
    assert "Welcome Ann" in answer.text and "from Lyon" in answer.text
    for name in ("attributes.city", "first_name"):
        assert f"<code>{name}</code>" in answer.text
    broken = client.post(
        "/templates/preview",
        data={
            "csrf_token": token,
            **FIELDS,
            "html": "<p>\n{% if x %}",
            "preview_contact_id": str(ann),
        },
    )
    assert "html: Line 2:" in broken.text and "data-problem" in broken.text
    forged = client.post("/templates/preview", data={**FIELDS, "preview_contact_id": str(ann)})
    assert forged.status_code == 403  # no CSRF token


def test_another_tenants_template_is_a_404_in_the_editor(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    theirs = make_template(client, globex.admin)
    token = sign_in(client, acme.admin)
    assert client.get(f"/templates/{theirs}").status_code == 404
    post = client.post(f"/templates/{theirs}", data={"csrf_token": token, **FIELDS})
    assert post.status_code == 404
    assert client.post(f"/templates/{theirs}/delete", data={"csrf_token": token}).status_code == 404


@pytest.fixture
def live(runtime: Runtime) -> Iterator[LiveServer]:
    server = LiveServer(create_app(runtime, embedded_workers=0)).start()
    yield server
    server.stop()


@pytest.fixture
def page(browser: Any, live: LiveServer) -> Iterator[Any]:
    context = browser.new_context(base_url=live.url, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    yield tab
    context.close()
    assert not problems, problems


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the HTTP tests cover both
def test_an_operator_writes_a_template_watching_the_preview(
    page: Any, client: TestClient, acme: TenantKeys, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    make_contacts(client, acme.admin, ["ann@example.com"])
    page.goto("/login")
    page.get_by_label("API key").fill(acme.sender)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Templates").click()
    page.get_by_role("link", name="New template").click()
    page.get_by_label("Name").fill("welcome")
    page.get_by_label("Subject").fill("Welcome {{ first_name }}")
    html = page.get_by_label("HTML", exact=True)
    html.fill("<p>Hello {{ first_name }}</p>")
    preview = page.locator("#preview")
    expect(preview.locator("[data-variables]")).to_contain_text("first_name")
    expect(preview.locator("iframe")).to_be_visible()
    expect(preview).to_contain_text("Welcome Ann")
    # A mistake typed on the second line is reported there, as you type, after a pause.
    html.press("End")
    html.type("\n<p>{{ deadline }</p>")
    expect(preview.locator("[data-problem]")).to_contain_text("html: Line 2:")
    page.screenshot(path=str(screenshots / "template-editor-error.png"), full_page=True)
    html.fill("<p>Hello {{ first_name }}</p>\n<p>Due {{ deadline }}</p>")
    expect(preview.locator("[data-variables]")).to_contain_text("deadline")
    expect(preview.locator("iframe")).to_be_visible()
    page.get_by_role("button", name="Create template").click()
    expect(page.get_by_role("status").first).to_contain_text("The template was saved.")
    [saved] = client.get("/v1/templates", headers=acme.auth(acme.viewer)).json()["items"]
    body = _template(client, acme, saved["id"])
    assert body["html"] == "<p>Hello {{ first_name }}</p>\n<p>Due {{ deadline }}</p>"
