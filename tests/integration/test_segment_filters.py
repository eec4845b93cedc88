"""Segment filters mean the same on SQLite and PostgreSQL: every op on every field, missing and
null values, LIKE wildcards in values, nesting, and no other tenant's contact ever."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert
from sqlalchemy.dialects import postgresql, sqlite

from tests.conftest import TenantKeys
from tests.integration import campaign_seed as seed
from tidings.db.engine import transaction
from tidings.db.models import Campaign, Contact, Message, Template, table
from tidings.domain.segment_filter import parse_filter
from tidings.queue.segments import segment_condition
from tidings.runtime import Runtime

PEOPLE: dict[str, dict[str, Any]] = {
    "ann": {
        "email": "ann@example.com",
        "name": "Ann",
        "timezone": "Europe/Paris",
        "locale": "fr",
        "status": "active",
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "attributes": {
            "city": "Paris",
            "age": 30,
            "plan": "pro",
            "vip": True,
            "note": "100%_sure",
            "score": 7.5,
            "plan type": "gold",
        },
    },
    "bob": {
        "email": "bob@example.org",
        "name": "Bob",
        "timezone": None,
        "locale": "en",
        "status": "unsubscribed",
        "created_at": datetime(2026, 2, 1, tzinfo=UTC),
        "attributes": {
            "city": "paris",
            "age": "30",
            "plan": "free",
            "vip": False,
            "note": "100 percent",
        },
    },
    "cy": {
        "email": "cy@example.com",
        "name": None,
        "timezone": "America/New_York",
        "locale": None,
        "status": "active",
        "created_at": datetime(2026, 3, 1, tzinfo=UTC),
        "attributes": {"city": None, "age": 45, "tags": ["a"], "nested": {"x": 1}},
    },
    "dee": {
        "email": "dee_x@test.net",
        "name": "Dee%",
        "timezone": None,
        "locale": None,
        "status": "bounced",
        "created_at": datetime(2026, 4, 1, tzinfo=UTC),
        "attributes": {},
    },
}
EVERYONE = set(PEOPLE)


def leaf(field: str, op: str, value: Any = None) -> dict[str, Any]:
    return (
        {"field": field, "op": op} if value is None else {"field": field, "op": op, "value": value}
    )


#: (filter, who it matches). Ann, Bob, Cy and Dee as above; "L" is a list of Ann and Dee.
CASES: list[tuple[dict[str, Any], set[str]]] = [
    # email (never null)
    (leaf("email", "eq", "ann@example.com"), {"ann"}),
    (leaf("email", "eq", "ann@EXAMPLE.com"), {"ann"}),  # the domain is compared lower-cased
    (leaf("email", "ne", "ann@example.com"), {"bob", "cy", "dee"}),
    (leaf("email", "in", ["ann@example.com", "cy@example.com"]), {"ann", "cy"}),
    (leaf("email", "contains", "EXAMPLE"), {"ann", "bob", "cy"}),
    (leaf("email", "contains", "_"), {"dee"}),  # not LIKE's any-character
    (leaf("email", "starts_with", "dee_"), {"dee"}),
    (leaf("email", "gt", "c"), {"cy", "dee"}),
    (leaf("email", "lte", "bob@example.org"), {"ann", "bob"}),
    (leaf("email", "exists"), EVERYONE),
    # name (nullable): ne and not include the contacts without one
    (leaf("name", "eq", "Ann"), {"ann"}),
    (leaf("name", "ne", "Ann"), {"bob", "cy", "dee"}),
    (leaf("name", "in", ["Ann", "Bob"]), {"ann", "bob"}),
    (leaf("name", "exists"), {"ann", "bob", "dee"}),
    (leaf("name", "exists", False), {"cy"}),
    (leaf("name", "contains", "%"), {"dee"}),  # not LIKE's any-string
    (leaf("name", "starts_with", "a"), {"ann"}),
    (leaf("name", "lt", "B"), {"ann"}),  # byte order: "Dee%" > "B", no locale collation
    (leaf("name", "gte", "a"), set()),  # lower case sorts after upper case, on both
    # timezone and locale
    (leaf("timezone", "eq", "Europe/Paris"), {"ann"}),
    (leaf("timezone", "ne", "Europe/Paris"), {"bob", "cy", "dee"}),
    (leaf("timezone", "starts_with", "america/"), {"cy"}),
    (leaf("locale", "in", ["fr", "en"]), {"ann", "bob"}),
    (leaf("locale", "exists", False), {"cy", "dee"}),
    # status
    (leaf("status", "eq", "active"), {"ann", "cy"}),
    (leaf("status", "ne", "active"), {"bob", "dee"}),
    (leaf("status", "in", ["bounced", "unsubscribed"]), {"bob", "dee"}),
    # created_at: as a time, whatever offset the value is written in
    (leaf("created_at", "gt", "2026-02-01"), {"cy", "dee"}),
    (leaf("created_at", "gte", "2026-02-01T00:00:00Z"), {"bob", "cy", "dee"}),
    (leaf("created_at", "lt", "2026-01-01T00:30:00+01:00"), set()),  # 2025-12-31 23:30 UTC
    (leaf("created_at", "lte", "2026-01-01T01:00:00+01:00"), {"ann"}),
    (leaf("created_at", "eq", "2026-03-01T00:00:00+00:00"), {"cy"}),
    (leaf("created_at", "ne", "2026-03-01T00:00:00+00:00"), {"ann", "bob", "dee"}),
    # attributes: typed values; missing, null and other types are "no"
    (leaf("attributes.city", "eq", "Paris"), {"ann"}),
    (leaf("attributes.city", "ne", "Paris"), {"bob", "cy", "dee"}),
    (leaf("attributes.city", "contains", "PAR"), {"ann", "bob"}),
    (leaf("attributes.city", "starts_with", "p"), {"ann", "bob"}),
    (leaf("attributes.city", "exists"), {"ann", "bob"}),  # Cy's is null
    (leaf("attributes.city", "exists", False), {"cy", "dee"}),
    (leaf("attributes.age", "eq", 30), {"ann"}),  # not Bob's string "30"
    (leaf("attributes.age", "eq", 30.0), {"ann"}),
    (leaf("attributes.age", "eq", "30"), {"bob"}),
    (leaf("attributes.age", "ne", 30), {"bob", "cy", "dee"}),
    (leaf("attributes.age", "in", [30, "30"]), {"ann", "bob"}),
    (leaf("attributes.age", "gt", 29), {"ann", "cy"}),  # numbers only, numerically
    (leaf("attributes.age", "gt", 4), {"ann", "cy"}),  # 30 > 4 as numbers (not as text)
    (leaf("attributes.age", "gte", 45), {"cy"}),
    (leaf("attributes.age", "lt", 31), {"ann"}),
    (leaf("attributes.age", "lte", 30.0), {"ann"}),
    (leaf("attributes.age", "gt", "3"), {"bob"}),  # strings only, as text
    (leaf("attributes.age", "contains", "3"), {"bob"}),  # strings only
    (leaf("attributes.score", "gt", 7), {"ann"}),
    (leaf("attributes.score", "lt", 7.6), {"ann"}),
    (leaf("attributes.vip", "eq", True), {"ann"}),
    (leaf("attributes.vip", "eq", False), {"bob"}),
    (leaf("attributes.vip", "ne", True), {"bob", "cy", "dee"}),
    (leaf("attributes.vip", "eq", 1), set()),  # true is not the number 1
    (leaf("attributes.note", "contains", "0%_"), {"ann"}),  # "100 percent" would match %0%_%
    (leaf("attributes.note", "starts_with", "100%"), {"ann"}),
    (leaf("attributes.plan", "in", ["pro", "free"]), {"ann", "bob"}),
    (leaf("attributes.plan type", "eq", "gold"), {"ann"}),
    (leaf("attributes.tags", "contains", "a"), set()),  # an array is not a string
    (leaf("attributes.nested", "eq", '{"x": 1}'), set()),  # nor is an object
    (leaf("attributes.nested", "exists"), {"cy"}),
    (leaf("attributes.nowhere", "ne", "x"), EVERYONE),
    (leaf("attributes.city", "eq", "'; DROP TABLE contacts; --"), set()),
    # nesting, and not as the exact complement (SQL NULL would drop Cy and Dee from both sides)
    ({"not": leaf("attributes.city", "eq", "Paris")}, {"bob", "cy", "dee"}),
    ({"not": leaf("attributes.age", "gt", 29)}, {"bob", "dee"}),
    ({"not": leaf("name", "contains", "o")}, {"ann", "cy", "dee"}),
    ({"not": leaf("locale", "in", ["fr"])}, {"bob", "cy", "dee"}),
    ({"not": {"not": leaf("attributes.city", "exists")}}, {"ann", "bob"}),
    (
        {
            "all": [
                leaf("attributes.city", "contains", "par"),
                {"not": leaf("status", "eq", "active")},
            ]
        },
        {"bob"},
    ),
    (
        {"any": [leaf("attributes.age", "gte", 45), leaf("attributes.vip", "eq", True)]},
        {"ann", "cy"},
    ),
    (
        {
            "any": [
                {"all": [leaf("locale", "exists"), leaf("name", "ne", "Bob")]},
                leaf("name", "contains", "%"),
            ]
        },
        {"ann", "dee"},
    ),
    ({"all": []}, EVERYONE),
    ({"any": []}, set()),
    ({"in_list": "L"}, {"ann", "dee"}),
    ({"not": {"in_list": "L"}}, {"bob", "cy"}),
    ({"all": [{"in_list": "L"}, leaf("status", "eq", "active")]}, {"ann"}),
    # engagement with campaign "C" (see _campaign): Ann opened and clicked, Bob opened, Cy got
    # it and did neither, Dee never got it; a message whose contact is gone was opened too.
    ({"opened_campaign": "C"}, {"ann", "bob"}),
    ({"clicked_campaign": "C"}, {"ann"}),
    ({"not": {"opened_campaign": "C"}}, {"cy", "dee"}),  # the detached message adds no NULL
    ({"not": {"clicked_campaign": "C"}}, {"bob", "cy", "dee"}),
    ({"all": [{"opened_campaign": "C"}, {"not": {"clicked_campaign": "C"}}]}, {"bob"}),
    ({"any": [{"clicked_campaign": "C"}, leaf("status", "eq", "bounced")]}, {"ann", "dee"}),
    ({"opened_campaign": "D"}, set()),  # another campaign: nobody opened it
]


def _seed(runtime: Runtime, tenant_id: int) -> dict[str, int]:
    ids: dict[str, int] = {}
    with transaction(runtime.sessions) as session:
        for name, fields in PEOPLE.items():
            row = Contact(tenant_id=tenant_id, updated_at=fields["created_at"], **fields)
            session.add(row)
            session.flush()
            ids[name] = row.id
    return ids


def _campaign(runtime: Runtime, tenant_id: int, ids: dict[str, int]) -> dict[str, int]:
    """Campaigns "C" (messages with a person's first open / click as in CASES) and "D"
    (Ann's message, not opened)."""
    at = datetime(2026, 5, 1, tzinfo=UTC)
    with transaction(runtime.sessions) as session:
        template = Template(
            tenant_id=tenant_id, name="t", subject="s", html="x", created_at=at, updated_at=at
        )
        session.add(template)
        session.flush()
        made = {}
        for name in ("C", "D"):
            campaign = Campaign(
                tenant_id=tenant_id,
                name=name,
                template_id=template.id,
                list_ids=[],
                contact_ids=[],
                data={},
                status="completed",
                created_at=at,
            )
            session.add(campaign)
            session.flush()
            made[name] = campaign.id
        opened, clicked = at + timedelta(hours=1), at + timedelta(hours=2)
        sent = [
            ("C", ids["ann"], opened, clicked),
            ("C", ids["bob"], opened, None),
            ("C", ids["cy"], None, None),
            ("C", None, opened, clicked),  # its contact was deleted
            ("D", ids["ann"], None, None),
        ]
        session.execute(
            insert(table(Message)),
            [
                {
                    "tenant_id": tenant_id,
                    "campaign_id": made[name],
                    "contact_id": contact_id,
                    "to_address": "x@example.com",
                    "status": "sent",
                    "priority": 5,
                    "not_before": at,
                    "expires_at": at,
                    "attempts": 1,
                    "lease_expiries": 0,
                    "created_at": at,
                    "updated_at": at,
                    "sent_at": at,
                    "first_opened_at": first_open,
                    "first_clicked_at": first_click,
                }
                for name, contact_id, first_open, first_click in sent
            ],
        )
    return made


REFERENCES = ("in_list", "opened_campaign", "clicked_campaign")


def _resolve(raw: Any, list_id: int, campaigns: dict[str, int] | None = None) -> Any:
    """``raw`` with the list "L" and the campaigns "C", "D" named by their ids."""
    ids = {"L": list_id, **(campaigns or {})}
    if isinstance(raw, dict):
        return {
            k: ids[v] if k in REFERENCES else _resolve(v, list_id, campaigns)
            for k, v in raw.items()
        }
    if isinstance(raw, list):
        return [_resolve(v, list_id, campaigns) for v in raw]
    return raw


def test_every_op_and_field_matches_the_same_contacts_on_both_databases(
    runtime: Runtime, client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    ids = _seed(runtime, acme.tenant_id)
    theirs = _seed(runtime, globex.tenant_id)  # the same people in another tenant: never found
    list_id = seed.contact_list(runtime, acme.tenant_id, "L", [ids["ann"], ids["dee"]])
    seed.contact_list(runtime, globex.tenant_id, "L", [])
    campaigns = _campaign(runtime, acme.tenant_id, ids)
    _campaign(runtime, globex.tenant_id, theirs)
    names = {v: k for k, v in ids.items()}
    wrong = []
    for raw, expected in CASES:
        answer = client.post(
            "/v1/segments/preview",
            json={"filter": _resolve(raw, list_id, campaigns)},
            headers=acme.auth(acme.viewer),
        )
        if answer.status_code != 200:
            wrong.append((raw, answer.status_code, answer.json()))
            continue
        body = answer.json()
        found = {names.get(c["id"], f"other tenant's {c['id']}") for c in body["sample"]}
        if found != expected or body["count"] != len(expected):
            wrong.append((raw, sorted(found), body["count"], "expected", sorted(expected)))
    assert wrong == []


def test_the_sample_is_the_first_ten_by_id_with_the_contact_fields(
    runtime: Runtime, client: TestClient, acme: TenantKeys
) -> None:
    people = seed.people(runtime, acme.tenant_id, 13)
    answer = client.post(
        "/v1/segments/preview",
        json={"filter": leaf("email", "contains", "@")},
        headers=acme.auth(acme.viewer),
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["count"] == 13
    assert [c["id"] for c in body["sample"]] == people[:10]
    assert {"email", "name", "attributes", "status", "list_ids"} <= set(body["sample"][0])


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()], ids=["sqlite", "pg"])
def test_no_value_from_the_filter_is_written_into_the_sql_text(dialect: Any) -> None:
    hostile = "x'); DROP TABLE contacts; --"
    tree = {
        "all": [
            leaf("attributes.city", "eq", hostile),
            leaf("attributes.city", "contains", hostile),
            leaf("attributes.age", "gt", 1234567),
            leaf("name", "in", [hostile, "zz9plural"]),
            leaf("created_at", "gt", "2031-07-08"),
            {"in_list": 987654},
            {"opened_campaign": 876543},
        ]
    }
    condition = segment_condition(parse_filter(tree), tenant_id=55555, dialect=dialect.name)
    sql = str(condition.compile(dialect=dialect))
    for value in ("DROP", "1234567", "zz9plural", "2031", "987654", "876543", "55555", "city"):
        assert value not in sql


@pytest.mark.parametrize("field", ["name", "attributes.plan"])
def test_text_order_is_byte_order_on_postgresql_whatever_the_database_collation(
    field: str,
) -> None:
    """The test server's databases use C.UTF-8, where the default order is byte order anyway: so
    the compiled SQL is checked, for the servers created with a language collation (en_US …)."""
    tree = {"field": field, "op": "gt", "value": "m"}
    condition = segment_condition(parse_filter(tree), tenant_id=1, dialect="postgresql")
    assert 'COLLATE "C"' in str(condition.compile(dialect=postgresql.dialect()))


def test_the_sample_is_the_first_ten_by_id_however_the_matches_bunch(
    runtime: Runtime, client: TestClient, acme: TenantKeys
) -> None:
    """The sample is read in id windows sized from the count: with matches at both ends of the
    range, the first window holds only five of them, and the wider ones after it the rest, in
    order (the ``in_list`` bounded to each window)."""
    people = seed.people(runtime, acme.tenant_id, 300)
    bunched = people[:5] + people[-55:]
    list_id = seed.contact_list(runtime, acme.tenant_id, "ends", bunched)
    answer = client.post(
        "/v1/segments/preview",
        json={"filter": {"all": [{"in_list": list_id}, leaf("email", "contains", "@")]}},
        headers=acme.auth(acme.viewer),
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["count"] == 60
    assert [c["id"] for c in body["sample"]] == bunched[:10]
