"""A campaign's results in a real browser: Playwright driving Debian's Chromium against the real app
(uvicorn), with mail really sent by a delivery worker to the SMTP test server, and opens and clicks
made by requesting the pixel and the links of those very messages from the live server.

What is watched: the funnel, the machines counted apart (an open by Apple's proxy is a machine's,
not a person's), the timeline chart and the links table filling in live while the hits arrive
(no reload), the export link, and the open and click rates on the campaigns list. The page is
photographed into ``artifacts/screenshots/``.

SQLite only: what these tests add is the browser; both databases are covered by
``test_campaign_results_http.py`` underneath.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.acceptance.conftest import (
    FAST,
    WorkerThread,
    api_setup,
    start_campaign,
    wait_for_completion,
)
from tests.acceptance.test_tracking import LINK, parts
from tests.browser.conftest import TIMEOUT_MS, LiveServer
from tests.conftest import TenantKeys, create_tenant, make_settings
from tests.smtp_server import SmtpTestServer, smtp_server  # noqa: F401 - a fixture
from tidings.app import create_app
from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import Message
from tidings.runtime import Runtime

PERSON = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Version/17.0 Safari/605.1.15"
)
APPLE_PROXY = "Mozilla/5.0"  # Apple Mail Privacy Protection fetches images with this alone
SCANNER = "Mozilla/5.0 (compatible; Proofpoint URL Defense)"
LONG_URL = (
    "https://shop.example.com/autumn/" + "sale-" * 20 + "?utm_source=tidings&utm_medium=email"
)
TEMPLATE = {
    "name": "news",
    "subject": "News for {{ first_name }}",
    "html": "<html><body><p>Hi {{ first_name }},</p>"
    f'<p><a href="{LONG_URL}">The sale</a> <a href="https://blog.example.com/post">Post</a></p>'
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>',
}
#: How long a hidden page is watched for updates that must not come: the flush (about a
#: second, tracking/hits.py) and two reads of the stream (a second each), with room to spare.
HIDDEN_MS = 5_000
PEOPLE = [("ann@example.edu", "Ann"), ("bob@example.edu", "Bob"), ("cy@example.edu", "Cy")]


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


def _tracked_links(smtp_server: SmtpTestServer) -> dict[str, dict[str, str]]:  # noqa: F811
    """Each recipient's pixel and link tokens, from the mail as it was received: ``open``,
    ``shop``, ``blog`` (the honeypot, third link, is left alone)."""
    found = {}
    for received in smtp_server.wait_for(len(PEOPLE), timeout=15):
        html, _ = parts(received.message)
        tokens = LINK.findall(html)
        assert [kind for kind, _ in tokens] == ["c", "c", "c", "o"], html
        found[received.rcpt_tos[0]] = {
            "shop": tokens[0][1],
            "blog": tokens[1][1],
            "open": tokens[3][1],
        }
    return found


def _set_hidden(page: Any, hidden: bool) -> None:
    """As if the tab went to the background (or came back): what the page's script listens to."""
    page.evaluate(
        """(hidden) => {
            Object.defineProperty(document, "hidden", {value: hidden, configurable: true});
            document.dispatchEvent(new Event("visibilitychange"));
        }""",
        hidden,
    )


def _hit(live: LiveServer, path: str, agent: str) -> None:
    """A request a mail client (or a machine) makes: the pixel, or a link's redirect."""
    answer = httpx.get(f"{live.url}{path}", headers={"User-Agent": agent}, follow_redirects=False)
    assert answer.status_code in (200, 302), answer.text


def test_a_campaigns_results_fill_in_live_with_machines_apart(
    page: Any,
    live: LiveServer,
    runtime: Runtime,
    tenant: TenantKeys,
    smtp_server: SmtpTestServer,  # noqa: F811
    screenshots: Path,
    worker: WorkerThread,
) -> None:
    from playwright.sync_api import expect

    api = TestClient(create_app(runtime))
    ids = api_setup(api, tenant, PEOPLE, **TEMPLATE)
    campaign_id = start_campaign(api, tenant, ids, track_opens=True, track_clicks=True)
    wait_for_completion(api, tenant, campaign_id)
    links = _tracked_links(smtp_server)
    # As if the mail went out ten minutes ago: a hit seconds after the send is a server's
    # prefetch (tracking/classify.py), and these stand for people reading it later.
    with transaction(runtime.sessions) as session:
        for message in session.scalars(select(Message).where(Message.campaign_id == campaign_id)):
            assert message.sent_at is not None
            message.sent_at -= timedelta(minutes=10)

    page.goto("/login")
    page.get_by_label("API key").fill(tenant.viewer)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Campaigns")).to_be_visible()
    page.goto(f"/campaigns/{campaign_id}")
    results = page.locator("#engagement")

    def figure(key: str) -> Any:
        return results.locator(f'[data-stat="{key}"] [data-value]')

    expect(figure("sent")).to_have_text("3")
    expect(figure("opens_unique")).to_have_text("0")
    expect(results.get_by_text("No opens or clicks yet.")).to_be_visible()
    export = page.get_by_role("link", name="Export recipients (CSV)")
    expect(export).to_have_attribute("href", f"/campaigns/{campaign_id}/recipients.csv")
    expect(export).to_have_attribute("download", re.compile(r"\.csv$"))
    page.evaluate("window.notReloaded = true")

    # Ann opens and clicks the sale; Bob's mail is opened by Apple's proxy, not by Bob.
    _hit(live, f"/o/{links['ann@example.edu']['open']}", PERSON)
    _hit(live, f"/o/{links['bob@example.edu']['open']}", APPLE_PROXY)
    _hit(live, f"/c/{links['ann@example.edu']['shop']}", PERSON)
    expect(figure("opens_unique")).to_have_text("1", timeout=TIMEOUT_MS)
    expect(figure("opens_machine")).to_have_text("1", timeout=TIMEOUT_MS)
    expect(figure("clicks_unique")).to_have_text("1", timeout=TIMEOUT_MS)
    expect(results.locator('[data-stat="opens_unique"] [data-rate]')).to_contain_text(
        "33.3", timeout=TIMEOUT_MS
    )
    chart = results.get_by_role("img", name=re.compile(r"^Opens and clicks per minute"))
    expect(chart).to_be_visible(timeout=TIMEOUT_MS)
    expect(results.locator('[data-series-total="opens"]')).to_have_text("1", timeout=TIMEOUT_MS)
    expect(results.locator('[data-series-total="opens_machine"]')).to_have_text(
        "1", timeout=TIMEOUT_MS
    )

    # The reader opens the figures' table; what arrives next keeps it open and focused.
    summary = results.get_by_text("The same figures as a table")
    summary.click()
    expect(summary).to_be_focused()
    # A link scanner follows Cy's links; Ann comes back to the blog.
    _hit(live, f"/c/{links['cy@example.edu']['blog']}", SCANNER)
    _hit(live, f"/c/{links['ann@example.edu']['blog']}", PERSON)
    expect(figure("clicks_machine")).to_have_text("1", timeout=TIMEOUT_MS)
    expect(figure("clicks_unique")).to_have_text("1")  # still Ann alone
    rows = results.locator("table.links tbody tr")
    expect(rows).to_have_count(2, timeout=TIMEOUT_MS)
    shown_url = rows.nth(0).locator("td.url span")
    expect(shown_url).to_have_attribute("title", LONG_URL)
    expect(shown_url).to_have_text(
        re.compile(r"^https://shop\.example\.com/autumn/sale-.*…$"), timeout=TIMEOUT_MS
    )
    expect(rows.nth(1).locator("td")).to_have_text(
        ["https://blog.example.com/post", "1", "1", "1"], timeout=TIMEOUT_MS
    )
    assert page.evaluate("window.notReloaded") is True  # all of it without a reload

    expect(results.locator("details")).to_have_attribute("open", "")

    # A page in a background tab stops listening; back in view, it shows what came meanwhile.
    _set_hidden(page, True)
    _hit(live, f"/o/{links['cy@example.edu']['open']}", PERSON)
    page.wait_for_timeout(HIDDEN_MS)
    expect(figure("opens_unique")).to_have_text("1")
    _set_hidden(page, False)
    expect(figure("opens_unique")).to_have_text("2", timeout=TIMEOUT_MS)
    expect(results.get_by_text("The same figures as a table")).to_be_focused()
    page.screenshot(path=str(screenshots / "campaign-results.png"), full_page=True)

    # The list: people's rates (Ann and Cy opened, Ann clicked), of the three delivered.
    page.get_by_role("link", name="Campaigns").first.click()
    row = page.locator(f'tr[data-campaign="{campaign_id}"]')
    expect(row.locator('[data-rate="open"]')).to_have_text("66.7\u202f%", timeout=TIMEOUT_MS)
    expect(row.locator('[data-rate="click"]')).to_have_text("33.3\u202f%", timeout=TIMEOUT_MS)
    expect(row.locator('[data-rate="open"]')).to_have_attribute("title", "2 of 3 delivered")
    page.screenshot(path=str(screenshots / "campaigns-list.png"), full_page=True)
