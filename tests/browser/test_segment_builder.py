"""The campaign form's segment builder: rows of field, operator and value, a live count, and a
campaign sent to the segment it saves. Over plain HTTP on both databases, then in Chromium."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.browser.dashboard_helpers import field_error, make_template, sign_in
from tests.conftest import TenantKeys

PEOPLE = [
    ("ann@example.com", {"city": "Paris", "plan": "pro", "age": "34"}),
    ("bob@example.com", {"city": "Paris", "plan": "free", "age": 51}),
    ("cy@example.com", {"city": "Lyon", "plan": "pro"}),
]


def _people(client: TestClient, tenant: TenantKeys) -> list[int]:
    ids = []
    for email, attributes in PEOPLE:
        answer = client.post(
            "/v1/contacts",
            json={"email": email, "attributes": attributes},
            headers=tenant.auth(tenant.admin),
        )
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    return ids


def _count(client: TestClient, **query: Any) -> str:
    answer = client.get("/campaigns/new/segment-count", params=query)
    assert answer.status_code == 200, answer.text
    return re.sub(r"<[^>]+>|\u2139", "", answer.text).strip()


def test_the_builder_counts_rows_and_names_the_row_that_is_wrong(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    _people(client, acme)
    _people(client, globex)  # never counted for acme
    sign_in(client, acme.viewer)
    assert _count(client) == "Add a condition to count the contacts it matches."
    paris = {
        "seg_field": ["attribute"],
        "seg_key": ["city"],
        "seg_op": ["eq"],
        "seg_value": ["Paris"],
    }
    assert _count(client, **paris) == "2 contacts match now"
    # "34" (text) and 51 (a number) are both found by a typed-in number.
    assert _count(client, seg_field=["attribute", "attribute"], seg_key=["age", "plan"],
                  seg_op=["gte", "ne"], seg_value=["30", "free"]) == "0 contacts match now"  # fmt: skip
    assert _count(client, seg_field=["attribute"], seg_key=["age"], seg_op=["in"],
                  seg_value=["34, 51"]) == "2 contacts match now"  # fmt: skip
    assert _count(client, seg_match="any", seg_field=["attribute", "email"],
                  seg_key=["plan", ""], seg_op=["eq", "starts_with"],
                  seg_value=["pro", "bob"]) == "3 contacts match now"  # fmt: skip
    assert _count(client, seg_field=["", "status"], seg_key=["", ""], seg_op=["eq", "eq"],
                  seg_value=["", "gone"]) == "Row 2: status is one of active, pending, unsubscribed, bounced, complained"  # fmt: skip
    assert _count(client, seg_field=["attribute"], seg_key=[""], seg_op=["eq"],
                  seg_value=["x"]) == "Row 1: name the attribute"  # fmt: skip


def test_a_campaign_from_the_form_saves_the_built_segment_and_sends_to_it(
    client: TestClient, acme: TenantKeys
) -> None:
    ann, bob, _cy = _people(client, acme)
    template_id = make_template(client, acme.admin)
    csrf = sign_in(client, acme.sender)
    form = {
        "csrf_token": csrf,
        "name": "Paris",
        "template_id": str(template_id),
        "seg_field": ["attribute", ""],
        "seg_key": ["city", ""],
        "seg_op": ["eq", "eq"],
        "seg_value": ["Paris", ""],
        "seg_name": "",
    }
    wrong = client.post("/campaigns/new", data={**form, "seg_op": ["gt", "eq"], "seg_field":
                        ["status", ""], "seg_value": ["x", ""]}, follow_redirects=False)  # fmt: skip
    assert wrong.status_code == 422
    assert field_error(wrong.text, "segment") == "Row 1: status does not take gt"
    answer = client.post("/campaigns/new", data=form, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    campaign_id = int(answer.headers["location"].split("/")[2].split("?")[0])
    campaign = client.get(f"/v1/campaigns/{campaign_id}", headers=acme.auth(acme.viewer)).json()
    assert campaign["recipient_count"] == 2
    (segment,) = client.get("/v1/segments", headers=acme.auth(acme.viewer)).json()["items"]
    assert segment["name"] == "Paris audience" and campaign["segment_ids"] == [segment["id"]]
    assert segment["filter"] == {
        "all": [{"field": "attributes.city", "op": "eq", "value": "Paris"}]
    }
    page = client.get("/segments")
    assert page.status_code == 200 and "Paris audience" in page.text
    assert client.get(f"/segments/{segment['id']}/count").text.count("2") == 1
    again = client.post("/campaigns/new", data={**form, "seg_name": "Paris audience"},
                        follow_redirects=False)  # fmt: skip
    assert again.status_code == 422 and "already exists" in (
        field_error(again.text, "seg_name") or ""
    )
    assert {ann, bob}  # the two Parisians


# -- in Chromium --------------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the HTTP tests cover both
def test_an_operator_builds_a_segment_and_watches_its_count_change(
    page: Any, client: TestClient, acme: TenantKeys, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    _people(client, acme)
    make_template(client, acme.admin)
    page.goto("/login")
    page.get_by_label("API key").fill(acme.sender)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="New campaign").click()
    page.get_by_label("Name").fill("Paris pros")
    page.get_by_label("Template").select_option(label="reminder")

    count = page.locator("#segment-count")
    expect(count).to_have_text(re.compile("Add a condition"))
    page.get_by_label("Field of condition 1").select_option(label="Attribute…")
    page.get_by_label("Attribute of condition 1").fill("city")
    page.get_by_label("Value of condition 1").fill("Paris")
    expect(count).to_have_text("2 contacts match now")
    page.get_by_label("Field of condition 2").select_option(label="Attribute…")
    page.get_by_label("Attribute of condition 2").fill("plan")
    page.get_by_label("Value of condition 2").fill("pro")
    expect(count).to_have_text("1 contact matches now")
    page.get_by_label("Match", exact=True).select_option(label="any of these conditions")
    expect(count).to_have_text("3 contacts match now")
    page.get_by_label("Match", exact=True).select_option(label="all of these conditions")
    expect(count).to_have_text("1 contact matches now")
    page.get_by_role("button", name="Add a condition").click()
    page.get_by_label("Field of condition 4").select_option(label="Status")
    page.get_by_label("Operator of condition 4").select_option(label="contains")
    page.get_by_label("Value of condition 4").fill("act")
    expect(count).to_have_text(re.compile("Row 4: status does not take contains"))
    page.get_by_role("button", name="Remove condition 4").click()
    expect(count).to_have_text("1 contact matches now")
    page.screenshot(path=str(screenshots / "30-segment-builder.png"), full_page=True)

    page.get_by_role("button", name="Create campaign").click()
    expect(page).to_have_url(re.compile(r"/campaigns/\d+\?done=started"))
    campaign_id = int(re.search(r"/campaigns/(\d+)", page.url).group(1))  # type: ignore[union-attr]
    body = client.get(f"/v1/campaigns/{campaign_id}", headers=acme.auth(acme.viewer)).json()
    assert body["recipient_count"] == 1 and len(body["segment_ids"]) == 1
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Segments").click()
    expect(page.get_by_role("row", name=re.compile("Paris pros audience"))).to_contain_text("1")
