"""The dashboard's lists page: a list's public sign-up URL, and the toggles that change it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.browser.dashboard_helpers import sign_in
from tests.conftest import TenantKeys


def test_the_lists_page_shows_the_sign_up_url_and_toggles_it(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    auth = acme.auth(acme.admin)
    made = client.post("/v1/lists", json={"name": "Staff"}, headers=auth).json()
    token = sign_in(client, acme.sender)
    page = client.get("/lists").text
    assert f"/s/{made['public_id']}" not in page and "Not public" in page
    saved = client.post(
        f"/lists/{made['id']}/signup",
        data={"csrf_token": token, "public": "on", "double_opt_in": "on"},
        follow_redirects=False,
    )
    assert saved.status_code == 303
    now = client.get(f"/v1/lists/{made['id']}", headers=auth).json()
    assert now["public"] is True and now["double_opt_in"] is True
    page = client.get("/lists").text
    assert f"/s/{made['public_id']}</a>" in page and "double opt-in" in page
    # Unticked boxes are not sent: both flags go off.
    client.post(f"/lists/{made['id']}/signup", data={"csrf_token": token})
    now = client.get(f"/v1/lists/{made['id']}", headers=auth).json()
    assert now["public"] is False and now["double_opt_in"] is False
    # Another tenant's list answers like a missing one.
    theirs = client.post(
        "/v1/lists", json={"name": "Theirs"}, headers=globex.auth(globex.admin)
    ).json()
    refused = client.post(
        f"/lists/{theirs['id']}/signup", data={"csrf_token": token, "public": "on"}
    )
    assert refused.status_code == 404
    assert (
        client.get(f"/v1/lists/{theirs['id']}", headers=globex.auth(globex.admin)).json()["public"]
        is False
    )


def test_a_viewer_cannot_toggle_a_lists_sign_up(client: TestClient, acme: TenantKeys) -> None:
    made = client.post("/v1/lists", json={"name": "Staff"}, headers=acme.auth(acme.admin)).json()
    token = sign_in(client, acme.viewer)
    refused = client.post(f"/lists/{made['id']}/signup", data={"csrf_token": token, "public": "on"})
    assert refused.status_code == 403
