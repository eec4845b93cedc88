"""``/v1/categories``: the tenant's kinds of mail, shown in the preference centre."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import TenantKeys
from tests.integration.campaign_seed import contacts, opt_out
from tidings.db.models import Preference
from tidings.runtime import Runtime


def create(client: TestClient, tenant: TenantKeys, name: str, **fields: object) -> dict:  # type: ignore[type-arg]
    answer = client.post(
        "/v1/categories", json={"name": name, **fields}, headers=tenant.auth(tenant.sender)
    )
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def names(client: TestClient, tenant: TenantKeys) -> list[str]:
    answer = client.get("/v1/categories", headers=tenant.auth(tenant.viewer))
    assert answer.status_code == 200
    return [item["name"] for item in answer.json()["items"]]


def test_create_list_and_delete(client: TestClient, acme: TenantKeys) -> None:
    reminders = create(client, acme, "reminders", description="Before each deadline")
    assert reminders["description"] == "Before each deadline"
    create(client, acme, "marketing_2024-q1")
    assert names(client, acme) == ["reminders", "marketing_2024-q1"]
    auth = acme.auth(acme.sender)
    assert client.delete(f"/v1/categories/{reminders['id']}", headers=auth).status_code == 204
    assert client.delete(f"/v1/categories/{reminders['id']}", headers=auth).status_code == 404
    assert names(client, acme) == ["marketing_2024-q1"]


def test_names_are_slugs_and_unique(client: TestClient, acme: TenantKeys) -> None:
    create(client, acme, "news")
    auth = acme.auth(acme.sender)
    duplicate = client.post("/v1/categories", json={"name": "news"}, headers=auth)
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["field"] == "name"
    for bad in ("", "News", "with space", "x" * 65, "é", "a/b"):
        answer = client.post("/v1/categories", json={"name": bad}, headers=auth)
        assert answer.status_code == 422, bad
        assert answer.json()["error"]["field"] == "name"
    long = client.post(
        "/v1/categories", json={"name": "ok", "description": "d" * 501}, headers=auth
    )
    assert long.status_code == 422


def test_deleting_a_category_keeps_the_contacts_choices(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    category = create(client, acme, "marketing")
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    opt_out(runtime, acme.tenant_id, ann, "marketing")
    client.delete(f"/v1/categories/{category['id']}", headers=acme.auth(acme.sender))
    create(client, acme, "marketing")
    with runtime.sessions() as session:  # the opt-out survived deletion and re-creation
        assert (
            session.scalar(select(Preference.subscribed).where(Preference.contact_id == ann))
            is False
        )


def test_tenants_are_isolated_and_viewers_cannot_write(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    category = create(client, acme, "reminders")
    create(client, globex, "reminders")  # the same name in another tenant is fine
    assert names(client, globex) == ["reminders"]
    gone = client.delete(f"/v1/categories/{category['id']}", headers=globex.auth(globex.admin))
    assert gone.status_code == 404
    assert names(client, acme) == ["reminders"]
    viewer = acme.auth(acme.viewer)
    assert client.post("/v1/categories", json={"name": "x"}, headers=viewer).status_code == 403
    assert client.delete(f"/v1/categories/{category['id']}", headers=viewer).status_code == 403


def test_a_contacts_choices_are_read_and_set_through_the_api_and_honoured_like_the_centres(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    create(client, acme, "news")
    create(client, acme, "events")
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    path = f"/v1/contacts/{ann}/preferences"
    read = client.get(path, headers=acme.auth(acme.viewer))
    assert read.json() == {"categories": {"events": True, "news": True}}
    put = client.put(path, json={"categories": {"news": False}}, headers=acme.auth(acme.sender))
    assert put.status_code == 200, put.text
    assert put.json() == {"categories": {"events": True, "news": False}}
    with runtime.sessions() as session:
        stored = session.execute(select(Preference.category, Preference.subscribed)).all()
    assert stored == [("news", False)]  # what compliance reads at send time
    unknown = client.put(path, json={"categories": {"nope": False}}, headers=acme.auth(acme.sender))
    assert unknown.status_code == 422
    assert unknown.json()["error"]["field"] == "categories.nope"
    for bad in ({"categories": {"news": "no"}}, {"news": False}):
        refused = client.put(path, json=bad, headers=acme.auth(acme.sender))
        assert refused.status_code == 422, bad
    assert (
        client.put(path, json={"categories": {}}, headers=acme.auth(acme.viewer)).status_code == 403
    )
    theirs = client.get(path, headers=globex.auth(globex.admin))
    nobody = client.get("/v1/contacts/999999/preferences", headers=globex.auth(globex.admin))
    assert theirs.status_code == nobody.status_code == 404
    assert theirs.json() == nobody.json()
