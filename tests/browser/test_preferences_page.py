"""The preference centre and the unsubscribe page in a real browser (Playwright + Debian's Chromium).

The real app runs under uvicorn on a free local port; the browser runs with JavaScript off, as the
pages must work without it, and every choice is checked in the database afterwards. Screenshots go
to ``artifacts/`` (not committed).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import uvicorn
from sqlalchemy import select

from tests.conftest import TenantKeys
from tests.integration.campaign_seed import contacts
from tests.integration.sent_mail import sent_link
from tidings import tokens
from tidings.app import create_app
from tidings.db.engine import transaction
from tidings.db.models import Category, Contact, Preference, Suppression
from tidings.runtime import Runtime

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CATEGORIES = {
    "reminders": "Before each deadline",
    "notifications": "When something changes in your account",
    "marketing": "News and offers, at most monthly",
}


def _unavailable() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (scripts/install-browser installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the browser tests to run: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def base_url(runtime: Runtime) -> Iterator[str]:
    """The real app under uvicorn in a thread, on a socket bound before it starts (no port race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(runtime), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(java_script_enabled=False)
    opened = context.new_page()
    problems: list[str] = []
    opened.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    yield opened
    context.close()
    assert problems == []  # e.g. a style the Content-Security-Policy blocked


def link(runtime: Runtime, tenant_id: int, contact_id: int, kind: tokens.TokenKind) -> str:
    """The link of a mail sent to the contact."""
    token = sent_link(runtime, tenant_id, contact_id=contact_id, kind=kind)
    return f"/{'p' if kind == 'preferences' else 'u'}/{token}"


def seed(runtime: Runtime, tenant_id: int) -> int:
    [ann] = contacts(runtime, tenant_id, ["ann@example.com"])
    with transaction(runtime.sessions) as session:
        session.add_all(
            Category(
                tenant_id=tenant_id,
                name=name,
                description=description,
                created_at=datetime.now(UTC),
            )
            for name, description in CATEGORIES.items()
        )
    return ann


def choices(runtime: Runtime, contact_id: int) -> dict[str, bool]:
    with runtime.sessions() as session:
        return dict(
            session.execute(
                select(Preference.category, Preference.subscribed).where(
                    Preference.contact_id == contact_id
                )
            ).all()
        )


def contact_state(runtime: Runtime, contact_id: int) -> tuple[str, str | None]:
    with runtime.sessions() as session:
        status = session.scalar(select(Contact.status).where(Contact.id == contact_id))
        reason = session.scalar(
            select(Suppression.reason).where(Suppression.email == "ann@example.com")
        )
        assert status is not None
        return status, reason


def test_a_recipient_turns_a_category_off_then_unsubscribes_from_everything(
    page: Page, base_url: str, runtime: Runtime, acme: TenantKeys
) -> None:
    from playwright.sync_api import expect

    ann = seed(runtime, acme.tenant_id)
    page.goto(base_url + link(runtime, acme.tenant_id, ann, "preferences"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Email preferences")
    group = page.get_by_role("group", name="Send me these emails")
    for name in ("Reminders", "Notifications", "Marketing"):
        expect(group.get_by_role("checkbox", name=name)).to_be_checked()
    marketing = page.get_by_label("Marketing")
    expect(marketing).to_have_accessible_description("News and offers, at most monthly")

    # The keyboard alone is enough: focus the box, toggle it with the space bar.
    marketing.focus()
    page.keyboard.press("Space")
    expect(marketing).not_to_be_checked()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "preferences-page.png"), full_page=True)
    page.get_by_role("button", name="Save preferences").click()

    expect(page.get_by_role("status")).to_contain_text("Your preferences are saved.")
    expect(page.get_by_label("Marketing")).not_to_be_checked()
    expect(page.get_by_label("Reminders")).to_be_checked()
    assert choices(runtime, ann) == {"marketing": False, "notifications": True, "reminders": True}
    assert contact_state(runtime, ann) == ("active", None)

    page.get_by_role("button", name="Unsubscribe from everything").click()
    expect(page.get_by_role("status")).to_contain_text(
        "You are unsubscribed from all email from acme."
    )
    expect(page.get_by_role("button", name="Subscribe again")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "preferences-unsubscribed.png"), full_page=True)
    assert contact_state(runtime, ann) == ("unsubscribed", "unsubscribe")


def test_the_unsubscribe_link_asks_first_and_unsubscribes_on_the_button(
    page: Page, base_url: str, runtime: Runtime, acme: TenantKeys
) -> None:
    from playwright.sync_api import expect

    ann = seed(runtime, acme.tenant_id)
    page.goto(base_url + link(runtime, acme.tenant_id, ann, "unsubscribe"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Unsubscribe?")
    assert contact_state(runtime, ann) == ("active", None)  # opening the link changed nothing
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("You are unsubscribed")
    assert contact_state(runtime, ann) == ("unsubscribed", "unsubscribe")
    page.get_by_role("link", name="Choose which emails you receive instead").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Email preferences")
    page.get_by_role("button", name="Subscribe again").click()
    expect(page.get_by_role("status")).to_contain_text("You are subscribed again.")
    assert contact_state(runtime, ann) == ("active", None)
