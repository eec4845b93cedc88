"""A contact's page in Chromium (SQLite; the HTTP tests cover both databases): an operator finds a
contact from the list, changes its category preferences, downloads its data and erases it behind
the typed confirmation, once with scripts on (the strict page fixture: no script error, no CSP
violation) and once with JavaScript disabled, where the erasure must work all the same."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.browser.conftest import TIMEOUT_MS, LiveServer
from tests.conftest import TenantKeys

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _people(client: TestClient, tenant: TenantKeys) -> int:
    auth = tenant.auth(tenant.admin)
    for name in ("news", "offers"):
        assert client.post("/v1/categories", json={"name": name}, headers=auth).status_code == 201
    staff = client.post("/v1/lists", json={"name": "staff"}, headers=auth).json()["id"]
    ann = client.post(
        "/v1/contacts", json={"email": "ann@example.com", "list_ids": [staff]}, headers=auth
    ).json()["id"]
    client.post("/v1/contacts", json={"email": "bob@example.com"}, headers=auth)
    contact_id: int = ann
    return contact_id


def _sign_in(page: Any, key: str) -> None:
    page.goto("/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()


def test_an_admin_sets_preferences_downloads_the_data_and_erases_a_contact(
    page: Any, client: TestClient, acme: TenantKeys, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    ann = _people(client, acme)
    _sign_in(page, acme.admin)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Contacts").click()
    page.get_by_role("link", name="ann@example.com").click()
    expect(page).to_have_url(re.compile(rf"/contacts/{ann}$"))
    expect(page.get_by_role("heading", name="ann@example.com")).to_be_visible()
    expect(page.get_by_role("link", name="staff")).to_be_visible()

    page.get_by_label("news").uncheck()
    page.get_by_role("button", name="Save preferences").click()
    expect(page.get_by_role("status")).to_contain_text("preferences were saved")
    expect(page.get_by_label("news")).not_to_be_checked()
    expect(page.get_by_label("offers")).to_be_checked()
    page.screenshot(path=str(screenshots / "30-contact-page.png"), full_page=True)
    choices = client.get(f"/v1/contacts/{ann}/preferences", headers=acme.auth(acme.viewer)).json()
    assert choices == {"categories": {"news": False, "offers": True}}

    with page.expect_download() as download:
        page.get_by_role("link", name="Download data (GDPR)").click()
    document = json.loads(Path(download.value.path()).read_text())
    assert document["contact"]["email"] == "ann@example.com"
    assert {p["category"]: p["subscribed"] for p in document["preferences"]} == {
        "news": False,
        "offers": True,
    }

    page.get_by_role("link", name="Erase…").click()
    expect(page.get_by_role("heading", name="Erase this contact?")).to_be_visible()
    page.get_by_label("Type ann@example.com to confirm").fill("bob@example.com")
    page.get_by_role("button", name="Erase for good").click()
    expect(page.locator("#confirm-error")).to_contain_text("Type the contact's address exactly")
    page.screenshot(path=str(screenshots / "31-contact-erase-confirm.png"), full_page=True)
    assert client.get(f"/v1/contacts/{ann}", headers=acme.auth(acme.viewer)).status_code == 200

    page.get_by_label("Type ann@example.com to confirm").fill("ann@example.com")
    page.get_by_role("button", name="Erase for good").click()
    expect(page).to_have_url(re.compile(r"/contacts\?done=contact-erased$"))
    expect(page.get_by_role("status")).to_contain_text("The contact was erased")
    expect(page.get_by_role("link", name="ann@example.com")).to_have_count(0)
    expect(page.get_by_role("link", name="bob@example.com")).to_be_visible()
    assert client.get(f"/v1/contacts/{ann}", headers=acme.auth(acme.viewer)).status_code == 404


@pytest.fixture
def page_without_scripts(browser: Any, live: LiveServer) -> Iterator[Any]:
    context = browser.new_context(base_url=live.url, java_script_enabled=False)
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


def test_erasure_and_preferences_work_without_javascript(
    page_without_scripts: Any, client: TestClient, acme: TenantKeys
) -> None:
    from playwright.sync_api import expect

    page = page_without_scripts
    ann = _people(client, acme)
    _sign_in(page, acme.admin)
    page.goto(f"/contacts/{ann}")
    page.get_by_label("offers").uncheck()
    page.get_by_role("button", name="Save preferences").click()
    expect(page.get_by_role("status")).to_contain_text("preferences were saved")
    expect(page.get_by_label("offers")).not_to_be_checked()

    page.get_by_role("link", name="Erase…").click()
    page.get_by_label("Type ann@example.com to confirm").fill("ANN@example.com")
    page.get_by_role("button", name="Erase for good").click()
    expect(page.get_by_role("status")).to_contain_text("The contact was erased")
    assert client.get(f"/v1/contacts/{ann}", headers=acme.auth(acme.viewer)).status_code == 404


def test_a_viewer_sees_the_contact_but_no_form_and_no_erase(
    page: Any, client: TestClient, acme: TenantKeys
) -> None:
    from playwright.sync_api import expect

    ann = _people(client, acme)
    _sign_in(page, acme.viewer)
    page.goto(f"/contacts/{ann}")
    expect(page.get_by_text("news: receives")).to_be_visible()
    expect(page.get_by_role("button", name="Save preferences")).to_have_count(0)
    expect(page.get_by_role("link", name="Erase…")).to_have_count(0)
    page.goto(f"/contacts/{ann}/erase")
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
