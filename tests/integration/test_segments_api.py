"""``/v1/segments``: saved filters, their checks (with the path of what is wrong), tenant isolation,
and campaigns whose audience is lists + segments + contact ids, each contact once."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import TenantKeys
from tests.integration import campaign_seed as seed
from tidings.db.engine import transaction
from tidings.db.models import Campaign
from tidings.queue.fanout import fan_out_campaign, prepare_campaign
from tidings.runtime import Runtime

CITY_PARIS = {"field": "attributes.city", "op": "eq", "value": "Paris"}


def _segment(
    client: TestClient, tenant: TenantKeys, name: str, raw: dict[str, Any]
) -> dict[str, Any]:
    answer = client.post(
        "/v1/segments", json={"name": name, "filter": raw}, headers=tenant.auth(tenant.sender)
    )
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _error(answer: Any) -> tuple[int, str | None, str]:
    error = answer.json()["error"]
    return answer.status_code, error["field"], error["message"]


def test_create_read_list_rename_refilter_and_delete_a_segment(
    client: TestClient, acme: TenantKeys
) -> None:
    created = _segment(client, acme, " Parisians ", CITY_PARIS)
    assert created["name"] == "Parisians" and created["filter"] == CITY_PARIS
    url = f"/v1/segments/{created['id']}"
    assert client.get(url, headers=acme.auth(acme.viewer)).json() == created
    listed = client.get("/v1/segments", headers=acme.auth(acme.viewer)).json()
    assert [s["id"] for s in listed["items"]] == [created["id"]]

    other = {"not": CITY_PARIS}
    patched = client.patch(
        url, json={"name": "Elsewhere", "filter": other}, headers=acme.auth(acme.sender)
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Elsewhere" and patched.json()["filter"] == other
    bad = client.patch(
        url, json={"filter": {"any": [{"field": "x"}]}}, headers=acme.auth(acme.sender)
    )
    assert _error(bad)[:2] == (422, "filter.any[0].field")
    assert client.get(url, headers=acme.auth(acme.viewer)).json()["filter"] == other

    assert (
        client.post(
            "/v1/segments",
            json={"name": "Elsewhere", "filter": {"all": []}},
            headers=acme.auth(acme.sender),
        ).status_code
        == 409
    )
    assert (
        client.post(
            "/v1/segments",
            json={"name": "v", "filter": {"all": []}},
            headers=acme.auth(acme.viewer),
        ).status_code
        == 403
    )
    assert client.delete(url, headers=acme.auth(acme.sender)).status_code == 204
    assert client.get(url, headers=acme.auth(acme.viewer)).status_code == 404


INVALID: list[tuple[Any, str, str]] = [
    (
        {"all": [CITY_PARIS, CITY_PARIS, {"field": "email", "op": "bogus", "value": "x"}]},
        "filter.all[2].op",
        "op must be one of",
    ),
    ({"field": "phone", "op": "eq", "value": "1"}, "filter.field", "field must be one of"),
    ({"field": "attributes.", "op": "eq", "value": "1"}, "filter.field", "attribute name"),
    ({"field": 'attributes.a"b', "op": "eq", "value": "1"}, "filter.field", "quotes"),
    ({"field": "attributes.city", "op": "gt", "value": True}, "filter.value", "number or a string"),
    ({"field": "attributes.city", "op": "eq", "value": None}, "filter.value", "string, a number"),
    ({"field": "attributes.city", "op": "eq", "value": {"a": 1}}, "filter.value", "string"),
    ({"field": "attributes.n", "op": "gt", "value": 2**70}, "filter.value", "too large"),
    ({"field": "attributes.city", "op": "eq", "value": "a\x00b"}, "filter.value", "NUL"),
    ({"field": "attributes.city", "op": "eq", "value": "x" * 501}, "filter.value", "at most"),
    ({"field": "status", "op": "eq", "value": "gone"}, "filter.value", "status is one of"),
    ({"field": "status", "op": "contains", "value": "a"}, "filter.op", "does not take"),
    ({"field": "created_at", "op": "in", "value": ["2026-01-01"]}, "filter.op", "does not take"),
    ({"field": "created_at", "op": "gt", "value": "yesterday"}, "filter.value", "ISO 8601"),
    ({"field": "name", "op": "gt", "value": 3}, "filter.value", "takes a string"),
    ({"field": "email", "op": "contains", "value": ""}, "filter.value", "non-empty"),
    ({"field": "email", "op": "in", "value": []}, "filter.value", "list of 1 to"),
    ({"field": "email", "op": "in", "value": ["a", 2]}, "filter.value[1]", "strings"),
    ({"field": "email", "op": "exists", "value": "yes"}, "filter.value", "true or false"),
    (
        {"any": [{"not": {"field": "email", "op": "eq"}}]},
        "filter.any[0].not.value",
        "needs a value",
    ),
    ({"field": "email", "op": "eq", "value": "a", "extra": 1}, "filter.extra", "unknown key"),
    ({"all": {"field": "email"}}, "filter.all", "list of conditions"),
    ({"some": []}, "filter.some", "unknown condition"),
    ({"all": [], "any": []}, "filter", "a condition is"),
    ([CITY_PARIS], "filter", "JSON object"),
    ({"opened_campaign": 999_999}, "filter.opened_campaign", "no such campaign"),
    (
        {"all": [{"clicked_campaign": 999_999}]},
        "filter.all[0].clicked_campaign",
        "no such campaign",
    ),
    ({"opened_campaign": "spring"}, "filter.opened_campaign", "takes a campaign id"),
    ({"clicked_campaign": 0}, "filter.clicked_campaign", "takes a campaign id"),
    ({"in_list": "news"}, "filter.in_list", "takes a list id"),
    ({"in_list": True}, "filter.in_list", "takes a list id"),
    ({"all": [{"in_list": 999_999}]}, "filter.all[0].in_list", "no such list"),
]


def test_a_wrong_filter_is_a_422_naming_the_path(client: TestClient, acme: TenantKeys) -> None:
    wrong = []
    for raw, field, message in INVALID:
        for url, body in (
            ("/v1/segments/preview", {"filter": raw}),
            ("/v1/segments", {"name": "s", "filter": raw}),
        ):
            answer = client.post(url, json=body, headers=acme.auth(acme.sender))
            status, where, said = _error(answer) if answer.status_code >= 400 else (200, "", "")
            if (status, where) != (422, field) or message not in said:
                wrong.append((url, field, status, where, said))
    assert wrong == []


def test_huge_and_deep_filters_are_refused_at_once(client: TestClient, acme: TenantKeys) -> None:
    leaf = json.dumps(CITY_PARIS)
    wide = '{"filter": {"all": [' + ", ".join([leaf] * 10_000) + "]}}"
    deep = '{"filter": ' + '{"not": ' * 50 + leaf + "}" * 50 + "}"
    # Deeper than the JSON parser's own limit: a 400 before any of our code runs.
    deeper = '{"filter": ' + '{"not": ' * 1_000 + leaf + "}" * 1_000 + "}"
    deepest = '{"filter": ' + '{"not": ' * 100_000 + leaf + "}" * 100_000 + "}"
    two_halves = json.dumps({"filter": {"any": [{"all": [CITY_PARIS] * 150}] * 2}})
    for body, field, message in (
        (wide, "filter.all", "at most 200 conditions"),
        (deep, "filter" + ".not" * 9, "nest at most 8"),
        (deeper, None, ""),
        (deepest, None, ""),
        (two_halves, "filter.any[1].all", "at most 200 conditions"),
    ):
        started = time.perf_counter()
        answer = client.post(
            "/v1/segments/preview",
            content=body,
            headers={**acme.auth(acme.viewer), "Content-Type": "application/json"},
        )
        elapsed = time.perf_counter() - started
        assert 400 <= answer.status_code < 500, answer.text[:300]
        if field is not None:
            assert _error(answer)[:2] == (422, field) and message in _error(answer)[2]
        assert elapsed < 1.0  # refused while walking, never compiled (generous on a busy machine)


def test_another_tenants_segments_and_lists_are_absent(
    runtime: Runtime, client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    theirs = _segment(client, globex, "theirs", CITY_PARIS)
    their_list = seed.contact_list(runtime, globex.tenant_id, "theirs", [])
    url = f"/v1/segments/{theirs['id']}"
    assert client.get(url, headers=acme.auth(acme.viewer)).status_code == 404
    assert client.patch(url, json={"name": "x"}, headers=acme.auth(acme.sender)).status_code == 404
    assert client.delete(url, headers=acme.auth(acme.sender)).status_code == 404
    assert client.get("/v1/segments", headers=acme.auth(acme.viewer)).json()["items"] == []
    answer = client.post(
        "/v1/segments/preview",
        json={"filter": {"all": [CITY_PARIS, {"in_list": their_list}]}},
        headers=acme.auth(acme.viewer),
    )
    assert _error(answer)[:2] == (422, "filter.all[1].in_list")
    assert _error(answer)[2] == f"no such list {their_list}"  # as for a list that never was
    their_campaign = client.post(
        "/v1/campaigns",
        json={
            "name": "theirs",
            "template_id": seed.template(runtime, globex.tenant_id),
            "contact_ids": seed.people(runtime, globex.tenant_id, 1),
        },
        headers=globex.auth(globex.sender),
    ).json()["id"]
    for kind in ("opened_campaign", "clicked_campaign"):
        answer = client.post(
            "/v1/segments",
            json={"name": "s", "filter": {"not": {kind: their_campaign}}},
            headers=acme.auth(acme.sender),
        )
        assert _error(answer) == (
            422,
            f"filter.not.{kind}",
            f"no such campaign {their_campaign}",
        )
    template = seed.template(runtime, acme.tenant_id)
    campaign = client.post(
        "/v1/campaigns",
        json={"name": "c", "template_id": template, "segment_ids": [theirs["id"]]},
        headers=acme.auth(acme.sender),
    )
    assert _error(campaign)[:2] == (404, "segment_ids")
    assert client.get(url, headers=globex.auth(globex.viewer)).status_code == 200


def test_a_campaign_from_a_list_a_segment_and_contact_ids_sends_each_contact_once(
    runtime: Runtime, client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    ids = seed.people(runtime, acme.tenant_id, 12)
    seed.people(runtime, globex.tenant_id, 12)  # the same addresses, another tenant
    _set_attributes(runtime, {ids[i]: {"city": "Paris"} for i in (2, 3, 4, 9)})
    news = seed.contact_list(runtime, acme.tenant_id, "news", ids[0:4])
    parisians = _segment(client, acme, "parisians", CITY_PARIS)
    in_news = _segment(client, acme, "news again", {"in_list": news})
    template = seed.template(runtime, acme.tenant_id)
    created = client.post(
        "/v1/campaigns",
        json={
            "name": "spring",
            "template_id": template,
            "list_ids": [news],
            "segment_ids": [parisians["id"], in_news["id"], parisians["id"]],
            "contact_ids": [ids[4], ids[10]],
        },
        headers=acme.auth(acme.sender),
    )
    assert created.status_code == 201, created.text
    assert created.json()["segment_ids"] == [parisians["id"], in_news["id"]]
    campaign_id = created.json()["id"]
    started = client.post(f"/v1/campaigns/{campaign_id}/start", headers=acme.auth(acme.sender))
    assert started.status_code == 202, started.text
    messages = seed.messages_of(runtime, campaign_id)
    expected = [ids[i] for i in (0, 1, 2, 3, 4, 9, 10)]
    assert [m.contact_id for m in messages] == expected  # sorted, each exactly once
    assert started.json()["recipient_count"] == len(expected)


def test_a_segment_is_read_at_start_and_kept_for_every_chunk(
    runtime: Runtime, client: TestClient, acme: TenantKeys
) -> None:
    """The start copies the filters: a segment edited while workers write the remaining chunks
    does not change who gets the campaign; chunks by contact id cover everyone once."""
    ids = seed.people(runtime, acme.tenant_id, 9)
    _set_attributes(runtime, {cid: {"plan": "pro"} for cid in ids[1::2]})
    small = seed.contact_list(runtime, acme.tenant_id, "small", [ids[0], ids[1]])
    pro = _segment(
        client,
        acme,
        "pro",
        {"any": [{"field": "attributes.plan", "op": "eq", "value": "pro"}, {"in_list": small}]},
    )
    template = seed.template(runtime, acme.tenant_id)
    campaign_id = client.post(
        "/v1/campaigns",
        json={
            "name": "c",
            "template_id": template,
            "segment_ids": [pro["id"]],
            "contact_ids": [ids[8]],
        },
        headers=acme.auth(acme.sender),
    ).json()["id"]
    with transaction(runtime.sessions) as session:
        campaign = session.get_one(Campaign, campaign_id)
        result = fan_out_campaign(
            session=session, campaign=campaign, now=_now(), ttl_seconds=3600, chunk_size=2
        )
        assert not result.done
    edited = client.patch(
        f"/v1/segments/{pro['id']}",
        json={"filter": {"any": []}},
        headers=acme.auth(acme.sender),
    )
    assert edited.status_code == 200
    assert prepare_campaign(runtime.sessions, campaign_id, ttl_seconds=3600, chunk_size=2)
    expected = [ids[0], *ids[1::2], ids[8]]
    assert [m.contact_id for m in seed.messages_of(runtime, campaign_id)] == sorted(expected)


def test_a_segment_used_by_a_campaign_not_yet_started_cannot_be_deleted(
    runtime: Runtime, client: TestClient, acme: TenantKeys
) -> None:
    ids = seed.people(runtime, acme.tenant_id, 2)
    segment = _segment(client, acme, "all", {"all": []})
    template = seed.template(runtime, acme.tenant_id)
    campaign_id = client.post(
        "/v1/campaigns",
        json={"name": "c", "template_id": template, "segment_ids": [segment["id"]]},
        headers=acme.auth(acme.sender),
    ).json()["id"]
    url = f"/v1/segments/{segment['id']}"
    refused = client.delete(url, headers=acme.auth(acme.sender))
    assert refused.status_code == 409 and f"campaign {campaign_id}" in _error(refused)[2]
    assert (
        client.post(f"/v1/campaigns/{campaign_id}/start", headers=acme.auth(acme.sender)).json()[
            "recipient_count"
        ]
        == 2
    )
    assert client.delete(url, headers=acme.auth(acme.sender)).status_code == 204
    kept = client.get(f"/v1/campaigns/{campaign_id}", headers=acme.auth(acme.viewer)).json()
    assert kept["segment_ids"] == [segment["id"]] and kept["recipient_count"] == len(ids)


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _set_attributes(runtime: Runtime, by_contact: dict[int, dict[str, Any]]) -> None:
    from tidings.db.models import Contact

    with transaction(runtime.sessions) as session:
        for contact_id, attributes in by_contact.items():
            session.get_one(Contact, contact_id).attributes = attributes


def test_a_draft_campaign_changed_to_a_segment_holds_it_until_it_starts(
    runtime: Runtime, client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    ids = seed.people(runtime, acme.tenant_id, 3)
    mine = _segment(client, acme, "all", {"all": []})
    theirs = _segment(client, globex, "theirs", {"all": []})
    template = seed.template(runtime, acme.tenant_id)
    campaign_id = client.post(
        "/v1/campaigns",
        json={"name": "c", "template_id": template, "contact_ids": [ids[0]]},
        headers=acme.auth(acme.sender),
    ).json()["id"]
    url = f"/v1/campaigns/{campaign_id}"
    refused = client.patch(
        url, json={"segment_ids": [theirs["id"]]}, headers=acme.auth(acme.sender)
    )
    assert _error(refused)[:2] == (404, "segment_ids")
    changed = client.patch(url, json={"segment_ids": [mine["id"]]}, headers=acme.auth(acme.sender))
    assert changed.status_code == 200 and changed.json()["segment_ids"] == [mine["id"]]
    segment_url = f"/v1/segments/{mine['id']}"
    assert client.delete(segment_url, headers=acme.auth(acme.sender)).status_code == 409
    assert client.delete(url, headers=acme.auth(acme.sender)).status_code == 204
    assert client.delete(segment_url, headers=acme.auth(acme.sender)).status_code == 204
