"""The dashboard's contact page, GDPR download and erasure, preferences form, contacts export and
segment rename/delete, over plain HTTP (no browser), on SQLite and PostgreSQL.

Each action is checked with the roles of the API (viewer reads, sender changes, admin erases), the
CSRF token, and another tenant's ids, which answer the 404 page.
"""

from __future__ import annotations

import csv
import io
import json

from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.browser.dashboard_helpers import make_contacts, sign_in
from tests.conftest import TenantKeys
from tidings.db.models import Contact, Preference
from tidings.runtime import Runtime


def _as(client: TestClient, key: str) -> str:
    """Signed in afresh with ``key`` (a sign-in form is tied to no session); the CSRF token."""
    client.cookies.clear()
    return sign_in(client, key)


def _category(client: TestClient, tenant: TenantKeys, name: str) -> None:
    made = client.post("/v1/categories", json={"name": name}, headers=tenant.auth(tenant.admin))
    assert made.status_code == 201, made.text


def _contact_with_list(client: TestClient, tenant: TenantKeys, email: str) -> tuple[int, int]:
    auth = tenant.auth(tenant.admin)
    made = client.post("/v1/lists", json={"name": "staff"}, headers=auth)
    list_id: int = made.json()["id"] if made.status_code == 201 else 0
    if not list_id:
        list_id = client.get("/v1/lists", headers=auth).json()["items"][0]["id"]
    contact = client.post(
        "/v1/contacts", json={"email": email, "list_ids": [list_id]}, headers=auth
    )
    assert contact.status_code == 201, contact.text
    contact_id: int = contact.json()["id"]
    return contact_id, list_id


def _choices(client: TestClient, tenant: TenantKeys, contact_id: int) -> dict[str, bool]:
    answer = client.get(
        f"/v1/contacts/{contact_id}/preferences", headers=tenant.auth(tenant.viewer)
    )
    choices: dict[str, bool] = answer.json()["categories"]
    return choices


def test_the_contact_page_shows_the_contact_its_lists_preferences_and_messages(
    client: TestClient, acme: TenantKeys
) -> None:
    _category(client, acme, "news")
    ann, _ = _contact_with_list(client, acme, "ann@example.com")
    sent = client.post(
        "/v1/messages",
        json={"contact_id": ann, "subject": "Hello there", "text": "Hi"},
        headers=acme.auth(acme.sender),
    )
    assert sent.status_code in (201, 202), sent.text
    _as(client, acme.viewer)
    listing = client.get("/contacts")
    assert f'href="/contacts/{ann}"' in listing.text
    assert 'id="export-contacts"' in listing.text
    page = client.get(f"/contacts/{ann}")
    assert page.status_code == 200
    for shown in ("ann@example.com", "staff", "news", "Hello there", "Download data (GDPR)"):
        assert shown in page.text, shown
    # A viewer sees the choices but gets no form, and no erase action.
    assert 'id="preferences-form"' not in page.text and 'id="preferences-list"' in page.text
    assert f"/contacts/{ann}/erase" not in page.text
    _as(client, acme.admin)
    page = client.get(f"/contacts/{ann}")
    assert 'id="preferences-form"' in page.text and f"/contacts/{ann}/erase" in page.text


def test_another_tenants_contact_is_the_not_found_page_everywhere(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    theirs, their_list = _contact_with_list(client, globex, "gail@globex.example")
    token = _as(client, acme.admin)
    for path in ("", "/data", "/erase"):
        answer = client.get(f"/contacts/{theirs}{path}", follow_redirects=False)
        assert answer.status_code == 404, path
        assert "Not found" in answer.text
    for path, form in (
        ("/erase", {"confirm_email": "gail@globex.example"}),
        ("/preferences", {}),
    ):
        answer = client.post(
            f"/contacts/{theirs}{path}", data={"csrf_token": token, **form}, follow_redirects=False
        )
        assert answer.status_code == 404, path
    assert client.get(f"/contacts/export?list_id={their_list}").status_code == 404
    assert client.get(f"/contacts?list_id={their_list}").status_code == 404
    still = client.get(f"/v1/contacts/{theirs}", headers=globex.auth(globex.viewer))
    assert still.status_code == 200


def test_preferences_are_set_from_the_form_with_the_apis_checks_and_roles(
    client: TestClient, acme: TenantKeys, runtime: Runtime
) -> None:
    _category(client, acme, "news")
    _category(client, acme, "offers")
    ann, _ = _contact_with_list(client, acme, "ann@example.com")
    token = _as(client, acme.sender)
    saved = client.post(
        f"/contacts/{ann}/preferences",
        data={"csrf_token": token, "shown": ["news", "offers"], "category": ["offers"]},
        follow_redirects=False,
    )
    assert saved.status_code == 303
    assert saved.headers["location"] == f"/contacts/{ann}?done=preferences-saved"
    assert _choices(client, acme, ann) == {"news": False, "offers": True}
    assert "preferences were saved" in client.get(saved.headers["location"]).text

    # An unknown category is refused as PUT refuses it, and nothing changes.
    unknown = client.post(
        f"/contacts/{ann}/preferences",
        data={"csrf_token": token, "shown": ["news", "offers"], "category": ["news", "gossip"]},
        follow_redirects=False,
    )
    assert unknown.status_code == 422 and "no category named &#39;gossip&#39;" in unknown.text
    assert _choices(client, acme, ann) == {"news": False, "offers": True}

    no_token = client.post(
        f"/contacts/{ann}/preferences",
        data={"shown": ["news"], "category": ["news"]},
        follow_redirects=False,
    )
    assert no_token.status_code == 403
    token = _as(client, acme.viewer)
    viewer = client.post(
        f"/contacts/{ann}/preferences",
        data={"csrf_token": token, "shown": ["news"], "category": ["news"]},
        follow_redirects=False,
    )
    assert viewer.status_code == 403 and "needs sender" in viewer.text
    assert _choices(client, acme, ann) == {"news": False, "offers": True}
    with runtime.sessions() as session:
        rows = session.scalars(select(Preference).where(Preference.contact_id == ann)).all()
        assert {(p.category, p.subscribed) for p in rows} == {("news", False), ("offers", True)}


def test_the_gdpr_download_is_the_apis_access_document(
    client: TestClient, acme: TenantKeys
) -> None:
    ann, list_id = _contact_with_list(client, acme, "ann@example.com")
    _as(client, acme.viewer)
    answer = client.get(f"/contacts/{ann}/data")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    assert "attachment" in answer.headers["content-disposition"]
    assert answer.headers["cache-control"] == "no-store"
    document = answer.json()
    assert document["contact"]["email"] == "ann@example.com"
    assert [x["id"] for x in document["lists"]] == [list_id]
    api = client.get(f"/v1/contacts/{ann}/data", headers=acme.auth(acme.viewer)).json()
    assert document == api


def test_erasure_needs_an_admin_the_typed_address_and_ends_with_a_notice(
    client: TestClient, acme: TenantKeys, runtime: Runtime
) -> None:
    ann, _ = _contact_with_list(client, acme, "ann@example.com")
    token = _as(client, acme.sender)
    assert client.get(f"/contacts/{ann}/erase").status_code == 403
    refused = client.post(
        f"/contacts/{ann}/erase",
        data={"csrf_token": token, "confirm_email": "ann@example.com"},
        follow_redirects=False,
    )
    assert refused.status_code == 403 and "needs admin" in refused.text

    token = _as(client, acme.admin)
    confirm = client.get(f"/contacts/{ann}/erase")
    assert confirm.status_code == 200 and "cannot be undone" in confirm.text
    for typed in ("", "someone@example.com"):
        wrong = client.post(
            f"/contacts/{ann}/erase",
            data={"csrf_token": token, "confirm_email": typed},
            follow_redirects=False,
        )
        assert wrong.status_code == 422 and "Type the contact" in wrong.text
    forged = client.post(
        f"/contacts/{ann}/erase", data={"confirm_email": "ann@example.com"}, follow_redirects=False
    )
    assert forged.status_code == 403
    with runtime.sessions() as session:
        assert session.get(Contact, ann) is not None

    erased = client.post(
        f"/contacts/{ann}/erase",
        data={"csrf_token": token, "confirm_email": " ANN@example.com "},
        follow_redirects=False,
    )
    assert erased.status_code == 303
    assert erased.headers["location"] == "/contacts?done=contact-erased"
    assert "The contact was erased" in client.get(erased.headers["location"]).text
    with runtime.sessions() as session:
        assert session.get(Contact, ann) is None
    assert client.get(f"/contacts/{ann}").status_code == 404
    client.post("/v1/contacts", json={"email": "ann@example.com"}, headers=acme.auth(acme.admin))
    listed = client.get("/v1/suppressions", headers=acme.auth(acme.viewer)).json()["items"]
    assert [s["email"] for s in listed] == ["ann@example.com"]  # the hashed entry still holds


def test_the_export_button_streams_the_csv_with_the_pages_filters(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    ann, list_id = _contact_with_list(client, acme, "ann@example.com")
    make_contacts(client, acme.admin, ["bob@example.com"])
    make_contacts(client, globex.admin, ["gail@globex.example"])
    client.patch(
        f"/v1/contacts/{ann}", json={"status": "unsubscribed"}, headers=acme.auth(acme.admin)
    )
    _as(client, acme.viewer)
    page = client.get(f"/contacts?status=unsubscribed&list_id={list_id}")
    assert f'href="/contacts/export?status=unsubscribed&amp;list_id={list_id}"' in page.text

    def emails(query: str) -> list[str]:
        answer = client.get(f"/contacts/export{query}")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/csv")
        assert 'filename="contacts.csv"' in answer.headers["content-disposition"]
        return [row["email"] for row in csv.DictReader(io.StringIO(answer.text))]

    assert emails("") == ["ann@example.com", "bob@example.com"]
    assert emails(f"?list_id={list_id}") == ["ann@example.com"]
    assert emails("?status=active") == ["bob@example.com"]
    assert emails("?status=unsubscribed&list_id=") == ["ann@example.com"]


def _segment(client: TestClient, tenant: TenantKeys, name: str) -> int:
    made = client.post(
        "/v1/segments",
        json={"name": name, "filter": {"field": "email", "op": "contains", "value": "@"}},
        headers=tenant.auth(tenant.admin),
    )
    assert made.status_code == 201, made.text
    segment_id: int = made.json()["id"]
    return segment_id


def test_segments_are_renamed_and_deleted_unless_a_waiting_campaign_uses_them(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    auth = acme.auth(acme.admin)
    used = _segment(client, acme, "used")
    spare = _segment(client, acme, "spare")
    theirs = _segment(client, globex, "theirs")
    template = client.post(
        "/v1/templates", json={"name": "t", "subject": "s", "html": "<p>x</p>"}, headers=auth
    ).json()["id"]
    draft = client.post(
        "/v1/campaigns",
        json={"name": "Draft", "template_id": template, "segment_ids": [used]},
        headers=auth,
    )
    assert draft.status_code == 201, draft.text

    token = _as(client, acme.sender)
    page = client.get("/segments")
    assert f'action="/segments/{used}/delete"' in page.text
    renamed = client.post(
        f"/segments/{spare}/rename",
        data={"csrf_token": token, "name": "extra"},
        follow_redirects=False,
    )
    assert renamed.status_code == 303 and renamed.headers["location"].endswith("segment-renamed")
    assert client.get(f"/v1/segments/{spare}", headers=auth).json()["name"] == "extra"
    taken = client.post(
        f"/segments/{spare}/rename",
        data={"csrf_token": token, "name": "used"},
        follow_redirects=False,
    )
    assert taken.status_code == 409 and "already exists" in taken.text
    assert f'id="segment-{spare}-error"' in taken.text

    refused = client.post(
        f"/segments/{used}/delete", data={"csrf_token": token}, follow_redirects=False
    )
    assert refused.status_code == 409
    assert f"campaign {draft.json()['id']} has not started yet" in refused.text
    assert client.get(f"/v1/segments/{used}", headers=auth).status_code == 200
    deleted = client.post(
        f"/segments/{spare}/delete", data={"csrf_token": token}, follow_redirects=False
    )
    assert deleted.status_code == 303 and deleted.headers["location"].endswith("segment-deleted")
    assert client.get(f"/v1/segments/{spare}", headers=auth).status_code == 404

    for path, form in (("rename", {"name": "mine"}), ("delete", {})):
        other = client.post(
            f"/segments/{theirs}/{path}", data={"csrf_token": token, **form}, follow_redirects=False
        )
        assert other.status_code == 404, path
    token = _as(client, acme.viewer)
    assert f'action="/segments/{used}/delete"' not in client.get("/segments").text
    viewer = client.post(
        f"/segments/{used}/rename", data={"csrf_token": token, "name": "x"}, follow_redirects=False
    )
    assert viewer.status_code == 403
    assert json.loads(client.get(f"/v1/segments/{used}", headers=auth).text)["name"] == "used"
