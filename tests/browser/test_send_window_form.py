"""The new-campaign form in the tenant's time zone: "Start at" is read and labelled in it, and the
optional sending window (hours, days, zone) reaches the campaign. Over plain HTTP on both databases,
then once in Chromium (SQLite), where the fields are filled as a person fills them.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.browser.dashboard_helpers import field_error, make_contacts, make_template, sign_in
from tests.conftest import TenantKeys


def _next(month: int, day: int) -> date:
    """The next ``month``/``day`` after today: within a year, as scheduling allows."""
    today = date.today()
    this_year = date(today.year, month, day)
    return this_year if this_year > today else date(today.year + 1, month, day)


def _last_sunday_of_march() -> date:
    """The next day Europe's clocks go forward."""
    end = _next(3, 31)
    return end - timedelta(days=(end.weekday() + 1) % 7)


def _berlin(client: TestClient, tenant: TenantKeys) -> None:
    answer = client.put(
        "/v1/settings", json={"timezone": "Europe/Berlin"}, headers=tenant.auth(tenant.admin)
    )
    assert answer.status_code == 200, answer.text


@pytest.fixture
def form(client: TestClient, acme: TenantKeys) -> dict[str, Any]:
    """The fields every post carries: signed in as a sender, a template, one contact ticked."""
    template_id = make_template(client, acme.admin)
    (ann,) = make_contacts(client, acme.admin, ["ann@example.com"])
    return {
        "csrf_token": sign_in(client, acme.sender),
        "name": "Office hours",
        "template_id": str(template_id),
        "contact_ids": [str(ann)],
    }


def _post(client: TestClient, form: dict[str, Any], **fields: Any) -> Any:
    return client.post("/campaigns/new", data={**form, **fields}, follow_redirects=False)


def _campaign(client: TestClient, tenant: TenantKeys, answer: Any) -> dict[str, Any]:
    assert answer.status_code == 303, answer.text
    campaign_id = int(answer.headers["location"].split("/")[2].split("?")[0])
    body: dict[str, Any] = client.get(
        f"/v1/campaigns/{campaign_id}", headers=tenant.auth(tenant.admin)
    ).json()
    return body


def test_start_at_is_labelled_and_read_in_the_tenants_time_zone(
    client: TestClient, acme: TenantKeys, form: dict[str, Any]
) -> None:
    assert "Start at (UTC)" in client.get("/campaigns/new").text
    _berlin(client, acme)
    assert "Start at (Europe/Berlin)" in client.get("/campaigns/new").text
    day = _next(1, 15)
    winter = _campaign(
        client, acme, _post(client, form, when="schedule", scheduled_at=f"{day}T09:30")
    )
    assert datetime.fromisoformat(winter["scheduled_at"]) == datetime(
        day.year, 1, 15, 8, 30, tzinfo=UTC
    )
    assert winter["status"] == "scheduled"
    page = client.get(f"/campaigns/{winter['id']}").text
    assert f"{day} 09:30 Europe/Berlin" in page


def test_a_start_in_the_skipped_spring_hour_is_the_moment_the_clock_jumps(
    client: TestClient, acme: TenantKeys, form: dict[str, Any]
) -> None:
    _berlin(client, acme)
    # The last Sunday of March: Berlin's clocks go from 02:00 to 03:00 at 01:00 UTC.
    day = _last_sunday_of_march()
    spring = _campaign(
        client, acme, _post(client, form, when="schedule", scheduled_at=f"{day}T02:30")
    )
    assert datetime.fromisoformat(spring["scheduled_at"]) == datetime(
        day.year, 3, day.day, 1, 0, tzinfo=UTC
    )


def test_the_sending_window_reaches_the_campaign_and_its_page(
    client: TestClient, acme: TenantKeys, form: dict[str, Any]
) -> None:
    answer = _post(
        client,
        form,
        when="draft",
        window_start="09:00",
        window_end="17:30",
        window_days=["mon", "tue", "wed", "thu", "fri"],
        window_timezone="contact",
    )
    campaign = _campaign(client, acme, answer)
    assert campaign["send_window"] == {
        "start": "09:00",
        "end": "17:30",
        "days": ["mon", "tue", "wed", "thu", "fri"],
        "timezone": "contact",
    }
    page = client.get(f"/campaigns/{campaign['id']}").text
    assert "09:00-17:30 mon, tue, wed, thu, fri (contact)" in page


def test_midnight_as_the_end_is_the_end_of_the_day_and_no_hours_is_no_window(
    client: TestClient, acme: TenantKeys, form: dict[str, Any]
) -> None:
    evening = _campaign(
        client,
        acme,
        _post(
            client,
            form,
            when="draft",
            window_start="18:00",
            window_end="00:00",
            window_days=["sat"],
            window_timezone="Asia/Tokyo",
        ),
    )
    assert evening["send_window"]["end"] == "24:00"
    assert evening["send_window"]["timezone"] == "Asia/Tokyo"
    anytime = _campaign(client, acme, _post(client, form, when="draft", window_days=["mon"]))
    assert anytime["send_window"] is None


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"window_start": "09:00", "window_end": "09:00"}, "window_end", "not the same"),
        ({"window_start": "09:00"}, "window_end", "when sending stops"),
        ({"window_end": "17:00"}, "window_start", "when sending may start"),
        (
            {"window_start": "09:00", "window_end": "17:00", "window_days": []},
            "window_days",
            "at least one day",
        ),
        (
            {"window_start": "09:00", "window_end": "17:00", "window_timezone": "Nowhere/Town"},
            "window_timezone",
            "from the list",
        ),
    ],
)
def test_a_wrong_window_is_shown_next_to_its_field_and_nothing_is_saved(
    client: TestClient,
    acme: TenantKeys,
    form: dict[str, Any],
    fields: dict[str, Any],
    field: str,
    message: str,
) -> None:
    answer = _post(client, form, when="draft", **{"window_days": ["mon"], **fields})
    assert answer.status_code == 422, answer.text
    assert message in (field_error(answer.text, field) or "")
    assert re.search(rf'id="{field}"[^>]*aria-invalid="true"', answer.text)
    assert client.get("/v1/campaigns", headers=acme.auth(acme.admin)).json()["items"] == []


# -- in Chromium --------------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the HTTP tests cover both
def test_an_operator_schedules_a_campaign_in_office_hours_from_the_form(
    page: Any, client: TestClient, acme: TenantKeys, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    _berlin(client, acme)
    make_template(client, acme.admin)
    make_contacts(client, acme.admin, ["ann@example.com", "bob@example.com"])
    page.goto("/login")
    page.get_by_label("API key").fill(acme.sender)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="New campaign").click()

    page.get_by_label("Name").fill("Office hours")
    page.get_by_label("Template").select_option(label="reminder")
    page.get_by_label("Find contacts to tick").fill("ann")
    page.get_by_label("ann@example.com").check()
    page.get_by_label("Start at a set time").check()
    expect(page.get_by_text("Start at (Europe/Berlin)")).to_be_visible()
    day = _next(1, 15)
    page.get_by_label("Start at (Europe/Berlin)").fill(f"{day}T09:30")
    # A window whose end equals its start is refused next to the field, the rest kept.
    page.get_by_label("Send from").fill("09:00")
    page.get_by_label("Until").fill("09:00")
    page.get_by_label("Sat").uncheck()
    page.get_by_label("Sun").uncheck()
    page.get_by_role("button", name="Create campaign").click()
    expect(page.locator("#window_end-error")).to_contain_text("not the same as the start")
    expect(page.get_by_label("Until")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Sat")).not_to_be_checked()
    expect(page.get_by_label("Start at (Europe/Berlin)")).to_have_value(f"{day}T09:30")
    page.screenshot(path=str(screenshots / "20-send-window-error.png"), full_page=True)

    page.get_by_label("Until").fill("17:00")
    page.get_by_label("In the time zone of").select_option(value="contact")
    page.get_by_role("button", name="Create campaign").click()
    expect(page).to_have_url(re.compile(r"/campaigns/\d+\?done=scheduled"))
    expect(page.locator("[data-field=send_window]")).to_have_text(
        "09:00-17:00 mon, tue, wed, thu, fri (contact)"
    )
    expect(page.get_by_text(f"{day} 09:30 Europe/Berlin")).to_be_visible()
    page.screenshot(path=str(screenshots / "21-send-window-campaign.png"), full_page=True)
    campaign_id = int(re.search(r"/campaigns/(\d+)", page.url).group(1))  # type: ignore[union-attr]
    body = client.get(f"/v1/campaigns/{campaign_id}", headers=acme.auth(acme.viewer)).json()
    assert datetime.fromisoformat(body["scheduled_at"]) == datetime(
        day.year, 1, 15, 8, 30, tzinfo=UTC
    )
    assert body["send_window"]["days"] == ["mon", "tue", "wed", "thu", "fri"]
