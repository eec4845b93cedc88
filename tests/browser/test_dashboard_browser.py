"""The dashboard in a real browser: Playwright driving Debian's Chromium against the real app (uvicorn),
with a real delivery worker sending to the real SMTP test server.

One walk through what an operator does: sign in with a key, set a throttle (and see a mistake
reported next to its field), create a campaign by searching and ticking contacts (with the
template's preview), start it, pause and resume it, and watch the progress bar reach 100 %, live,
while the SMTP server receives every message; then the queue monitor and the other pages. Each page
is photographed into ``artifacts/screenshots/``.

SQLite only: what these tests add is the browser; both databases are covered by the HTTP-level
dashboard tests and the acceptance tests underneath.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.acceptance.conftest import FAST, WorkerThread
from tests.browser.conftest import TIMEOUT_MS
from tests.browser.dashboard_helpers import make_contacts, make_template
from tests.conftest import TenantKeys, create_tenant, make_settings
from tests.smtp_server import SmtpTestServer, smtp_server  # noqa: F401 - a fixture
from tidings.app import create_app
from tidings.config import Settings
from tidings.runtime import Runtime

STUDENTS = [f"student{n:02d}@example.com" for n in range(1, 21)]
STAFF = ["dean@example.com", "registrar@example.com"]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tidings.db'}"


@pytest.fixture
def settings(tmp_path: Path, db_url: str, smtp_server: SmtpTestServer) -> Settings:  # noqa: F811
    return make_settings(tmp_path, db_url, transport_url=smtp_server.url, **FAST)


@pytest.fixture
def worker(runtime: Runtime) -> Iterator[WorkerThread]:
    thread = WorkerThread(runtime).start()
    yield thread
    thread.stop()


@pytest.fixture
def tenant(runtime: Runtime) -> TenantKeys:
    return create_tenant(runtime, "Northfield College")


def _shoot(page: Any, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def _sent(client: TestClient, tenant: TenantKeys, campaign_id: int) -> dict[str, Any]:
    answer = client.get(f"/v1/campaigns/{campaign_id}", headers=tenant.auth(tenant.admin))
    figures: dict[str, Any] = answer.json()
    return figures


def _progress_value(page: Any) -> float:
    value = page.locator("section [role=progressbar]").get_attribute("aria-valuenow")
    return float(value or 0)


def test_an_operator_runs_a_campaign_from_the_dashboard(
    page: Any,
    runtime: Runtime,
    tenant: TenantKeys,
    smtp_server: SmtpTestServer,  # noqa: F811
    screenshots: Path,
    worker: WorkerThread,
) -> None:
    from playwright.sync_api import expect

    api = TestClient(create_app(runtime))
    make_template(
        api,
        tenant.admin,
        html="<h1>Hello {{ first_name }}</h1><p>{{ personal_message }}</p><p>Due: {{ deadline }}</p>",
    )
    make_contacts(api, tenant.admin, STUDENTS + STAFF)

    # Signing in: every page sends a visitor without a session to the form first.
    page.goto("/queue")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.keyboard.press("Tab")
    expect(page.locator(".skip-link")).to_be_focused()
    page.get_by_label("API key").fill(tenant.admin)
    _shoot(page, screenshots, "01-sign-in")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/queue$"))
    expect(page.get_by_text("Northfield College")).to_be_visible()

    # The throttle: a mistake is reported next to its field, then a valid limit is saved.
    page.get_by_role("link", name="Throttle").click()
    page.get_by_label("Limits are on").check()
    page.get_by_label("Per second").fill("0")
    page.get_by_role("button", name="Save limits").click()
    error = page.locator("#per_second-error")
    expect(error).to_contain_text("from 1 to")
    expect(page.get_by_label("Per second")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Per second")).to_have_attribute(
        "aria-describedby", "per_second-error"
    )
    _shoot(page, screenshots, "02-throttle-error")
    page.get_by_label("Per second").fill("4")
    page.get_by_role("button", name="Save limits").click()
    expect(page.get_by_role("status")).to_contain_text("Saved.")
    expect(page.get_by_label("Per second")).to_have_value("4")
    _shoot(page, screenshots, "03-throttle-saved")

    # A new campaign: the template's preview, and contacts found by search and ticked.
    page.get_by_role("link", name="New campaign").click()
    page.get_by_label("Name").fill("End of term reminder")
    page.get_by_label("Template").select_option(label="reminder")
    page.get_by_label("Personal message").fill("Please hand in your thesis.")
    page.get_by_label("Deadline").fill("2031-06-30")
    page.get_by_label("Name").focus()  # leaving the date field refreshes the preview too
    frame = page.frame_locator("#preview iframe")
    expect(frame.locator("h1")).to_have_text(re.compile(r"Hello \w+"))
    expect(frame.locator("body")).to_contain_text("Please hand in your thesis.")
    page.get_by_label("Find contacts to tick").fill("student")
    expect(page.locator("#contact-rows tbody tr")).to_have_count(len(STUDENTS))
    page.get_by_role("button", name="Select all shown").click()
    expect(page.locator("#picked-count")).to_have_text(f"{len(STUDENTS)} selected")
    page.get_by_label("Find contacts to tick").fill("dean")
    expect(page.locator("#contact-rows tbody tr")).to_have_count(1)
    expect(page.locator("#picked-count")).to_have_text(f"{len(STUDENTS)} selected")
    page.get_by_label("dean@example.com").check()
    page.get_by_label("dean@example.com").uncheck()  # changed my mind: students only
    expect(page.locator("#picked-count")).to_have_text(f"{len(STUDENTS)} selected")
    expect(page.locator("#preview.htmx-request")).to_have_count(0)
    expect(frame.locator("body")).to_contain_text("Please hand in your thesis.")
    _shoot(page, screenshots, "04-new-campaign")
    page.get_by_role("button", name="Create campaign").click()

    # Its page: the campaign runs under the throttle; pause, then resume.
    expect(page).to_have_url(re.compile(r"/campaigns/\d+\?done=started"))
    campaign_id = int(re.search(r"/campaigns/(\d+)", page.url).group(1))  # type: ignore[union-attr]
    assert _sent(api, tenant, campaign_id)["recipient_count"] == len(STUDENTS)
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("[data-field=status] [data-text]")).to_have_text("paused")
    page.wait_for_timeout(800)  # attempts already in flight when the pause came finish
    held = _sent(api, tenant, campaign_id)["sent"]
    assert held < len(STUDENTS), "the throttle should leave time to pause"
    page.wait_for_timeout(1500)
    assert _sent(api, tenant, campaign_id)["sent"] == held  # nothing is sent while paused
    assert len(smtp_server.messages) == held
    _shoot(page, screenshots, "05-campaign-paused")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("[data-field=status] [data-text]")).to_have_text(
        re.compile("running|completed")
    )

    # The bar moves by itself (Server-Sent Events), without reloading the page, up to 100 %.
    bar = page.locator("section [role=progressbar]")
    assert _progress_value(page) < 100
    page.evaluate("() => { window.stillTheSamePage = true; }")
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=TIMEOUT_MS)
    assert page.evaluate("() => window.stillTheSamePage") is True
    expect(page.locator("[data-field=percentage_text]").first).to_have_text("100\u202f%")
    expect(page.locator("[data-field=status] [data-text]")).to_have_text("completed")
    expect(page.locator("dd[data-field=sent]")).to_have_text(str(len(STUDENTS)))
    expect(page.get_by_role("button", name="Pause")).to_be_hidden()
    expect(page.get_by_role("button", name="Cancel campaign")).to_be_hidden()
    expect(page.get_by_role("button", name="Retry failed")).to_be_hidden()  # none failed
    _shoot(page, screenshots, "06-campaign-completed")

    # The SMTP server received every message, once, and only the ticked contacts.
    smtp_server.wait_for(len(STUDENTS))
    received = sorted(r for message in smtp_server.messages for r in message.rcpt_tos)
    assert received == STUDENTS

    # The chart of sends per minute is drawn once the page is loaded again.
    page.reload()
    expect(page.locator("svg[role=img] rect.bar").first).to_be_attached()
    _shoot(page, screenshots, "07-campaign-detail")

    # The campaign list and the queue monitor agree.
    page.get_by_role("link", name="Campaigns").click()
    row = page.locator(f"tr[data-campaign='{campaign_id}']")
    expect(row.locator("[data-field=percentage_text]")).to_have_text("100\u202f%")
    _shoot(page, screenshots, "08-campaigns")
    page.get_by_role("link", name="Queue").click()
    expect(page.locator("tr[data-status-row=sent] td.num")).to_have_text(str(len(STUDENTS)))
    expect(page.locator("tr[data-status-row=queued] td.num")).to_have_text("0")
    _shoot(page, screenshots, "09-queue")

    for name, path in (
        ("10-contacts", "/contacts"),
        ("11-lists", "/lists"),
        ("12-suppressions", "/suppressions"),
        ("13-inbox", "/inbox"),
    ):
        page.goto(path)
        expect(page.locator("h1")).to_be_visible()
        _shoot(page, screenshots, name)

    # Narrow screens: the campaign's page reflows instead of scrolling sideways.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"/campaigns/{campaign_id}")
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
    _shoot(page, screenshots, "14-campaign-phone")

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login"))
    _shoot(page, screenshots, "15-signed-out")
    api.close()
