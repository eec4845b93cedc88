"""The public sign-up form and the confirmation page in a real browser, JavaScript off."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from tests.browser.test_preferences_page import (  # noqa: F401 - fixtures
    CATEGORIES,
    base_url,
    browser,
    page,
    seed,
)
from tests.conftest import TenantKeys
from tests.integration.test_signup import confirm_token
from tidings.db.engine import transaction
from tidings.db.models import Contact, ListMember, Preference
from tidings.runtime import Runtime
from tidings.services import lists

if TYPE_CHECKING:
    from playwright.sync_api import Page


def public_list(runtime: Runtime, tenant_id: int) -> tuple[int, str]:
    with transaction(runtime.sessions) as session:
        made = lists.create_list(
            session=session,
            tenant_id=tenant_id,
            name="Course news",
            description=None,
            now=datetime.now(UTC),
            double_opt_in=True,
            public=True,
        )
        assert made.public_id is not None
        return made.id, made.public_id


def test_sign_up_then_confirm_in_a_browser(
    page: Page,  # noqa: F811
    base_url: str,  # noqa: F811
    runtime: Runtime,
    acme: TenantKeys,
) -> None:
    seed(runtime, acme.tenant_id)
    list_id, public_id = public_list(runtime, acme.tenant_id)
    page.goto(f"{base_url}/s/{public_id}")
    assert page.get_by_role("heading", name="Sign up to Course news").is_visible()
    box = page.locator("#website").bounding_box()  # the honeypot stays out of sight
    assert box is not None and box["x"] + box["width"] <= 0
    page.get_by_label("Email address").fill("zoe@example.com")
    page.get_by_label("Name").fill("Zoe")
    page.get_by_label("reminders").check()
    page.get_by_role("button", name="Sign up").click()
    assert page.get_by_text("Please check your inbox.").is_visible()

    token = confirm_token(runtime, acme.tenant_id, "zoe@example.com")
    page.goto(f"{base_url}/s/confirm/{token}")
    assert page.get_by_role("heading", name="Confirm your subscription").is_visible()
    with runtime.sessions() as session:
        zoe = session.scalar(select(Contact).where(Contact.email == "zoe@example.com"))
        assert zoe is not None and zoe.status == "pending"
    page.get_by_role("button", name="Confirm").click()
    assert page.get_by_role("heading", name="You are subscribed").is_visible()
    with runtime.sessions() as session:
        zoe = session.scalar(select(Contact).where(Contact.email == "zoe@example.com"))
        assert zoe is not None and zoe.status == "active" and zoe.name == "Zoe"
        assert session.get(ListMember, (list_id, zoe.id)) is not None
        chosen = dict(
            session.execute(
                select(Preference.category, Preference.subscribed).where(
                    Preference.contact_id == zoe.id
                )
            ).all()
        )
    assert chosen == {name: name == "reminders" for name in CATEGORIES}
