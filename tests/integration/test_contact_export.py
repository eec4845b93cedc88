"""``GET /v1/contacts/export`` and ``tidings contacts export``: every matching contact, streamed in
keyset pages, CSV safe to open in a spreadsheet; and ``GET /v1/contacts/{id}/data`` (GDPR access)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from typer.testing import CliRunner

from tests.conftest import TEST_SECRET, TenantKeys
from tidings.cli.app import app
from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import Event
from tidings.runtime import Runtime
from tidings.services import contact_data, exports


def add(client: TestClient, tenant: TenantKeys, email: str, **fields: Any) -> int:
    answer = client.post(
        "/v1/contacts", json={"email": email, **fields}, headers=tenant.auth(tenant.sender)
    )
    assert answer.status_code in (200, 201), answer.text
    return int(answer.json()["id"])


def new_list(client: TestClient, tenant: TenantKeys, name: str) -> int:
    return int(
        client.post("/v1/lists", json={"name": name}, headers=tenant.auth(tenant.sender)).json()[
            "id"
        ]
    )


def export(client: TestClient, tenant: TenantKeys, **params: Any) -> Any:
    return client.get("/v1/contacts/export", params=params, headers=tenant.auth(tenant.viewer))


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
def statements(runtime: Runtime) -> Iterator[list[tuple[str, Any]]]:
    """Every SQL statement the engine runs during the test, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:
        seen.append((args[2], args[3]))

    event.listen(runtime.engine, "before_cursor_execute", record)
    yield seen
    event.remove(runtime.engine, "before_cursor_execute", record)


def test_csv_has_a_fixed_header_every_contact_and_its_lists(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    news = new_list(client, acme, "news")
    beta = new_list(client, acme, "beta")
    ann = add(
        client,
        acme,
        "ann@example.com",
        name="Ann",
        timezone="Europe/Paris",
        locale="fr",
        attributes={"plan": "pro", "city": "Paris, France"},
        list_ids=[news, beta],
    )
    add(client, acme, "bob@example.com")
    add(client, globex, "other@example.com")

    answer = export(client, acme)

    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert "attachment" in answer.headers["content-disposition"]
    assert answer.text.splitlines()[0] == ",".join(exports.CSV_HEADER)
    found = rows(answer.text)
    assert [r["email"] for r in found] == ["ann@example.com", "bob@example.com"]
    assert found[0]["name"] == "Ann" and found[0]["timezone"] == "Europe/Paris"
    assert found[0]["list_ids"] == f"{news} {beta}" and found[1]["list_ids"] == ""
    assert json.loads(found[0]["attributes"]) == {"plan": "pro", "city": "Paris, France"}
    assert found[0]["status"] == "active" and found[0]["created_at"].startswith("20")
    assert ann > 0


def test_csv_cells_that_look_like_formulas_are_defused(
    client: TestClient, acme: TenantKeys
) -> None:
    add(client, acme, "=cmd@example.com", name="+SUM(A1)", attributes={"x": "=1"})
    add(client, acme, "plain@example.com", name="@home")

    found = rows(export(client, acme).text)

    assert found[0]["email"] == "'=cmd@example.com"
    assert found[0]["name"] == "'+SUM(A1)"
    assert found[1]["name"] == "'@home"
    for cell in ("-1", "\tx", "\rx", "=x", "+x", "@x"):
        assert exports.defuse(cell) == "'" + cell
    assert exports.defuse("a=b") == "a=b"


def test_jsonl_and_the_filters(client: TestClient, acme: TenantKeys) -> None:
    news = new_list(client, acme, "news")
    add(client, acme, "a@example.com", list_ids=[news], attributes={"n": 1})
    add(client, acme, "b@example.com", status="unsubscribed", list_ids=[news])
    add(client, acme, "c@example.com")

    answer = export(client, acme, format="jsonl", list_id=news)
    assert answer.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert [(x["email"], x["list_ids"], x["attributes"]) for x in lines] == [
        ("a@example.com", [news], {"n": 1}),
        ("b@example.com", [news], {}),
    ]
    only = export(client, acme, format="jsonl", list_id=news, status="unsubscribed")
    assert [json.loads(line)["email"] for line in only.text.splitlines()] == ["b@example.com"]
    assert rows(export(client, acme, status="active").text)[-1]["email"] == "c@example.com"
    parisians = client.post(
        "/v1/segments",
        json={"name": "n", "filter": {"field": "attributes.n", "op": "eq", "value": 1}},
        headers=acme.auth(acme.sender),
    ).json()["id"]
    by_segment = export(client, acme, format="jsonl", segment_id=parisians)
    assert [json.loads(line)["email"] for line in by_segment.text.splitlines()] == ["a@example.com"]


def test_bad_filters_answer_before_streaming(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    theirs = new_list(client, globex, "theirs")
    missing = export(client, acme, list_id=theirs)
    assert missing.status_code == 404
    assert missing.json()["error"]["field"] == "list_id"
    their_segment = client.post(
        "/v1/segments",
        json={"name": "all", "filter": {"field": "status", "op": "eq", "value": "active"}},
        headers=globex.auth(globex.sender),
    ).json()["id"]
    segment = export(client, acme, segment_id=their_segment)
    assert segment.status_code == 404
    assert segment.json()["error"]["field"] == "segment_id"
    assert export(client, acme, format="xml").status_code == 422
    assert export(client, acme, status="gone").status_code == 422
    no_key = client.get("/v1/contacts/export")
    assert no_key.status_code == 401


def test_pages_are_read_by_keyset_never_offset(
    client: TestClient,
    acme: TenantKeys,
    statements: list[tuple[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(exports, "EXPORT_PAGE", 3)
    emails = [f"p{i:02}@example.com" for i in range(10)]
    for email in emails:
        add(client, acme, email)
    statements.clear()

    found = rows(export(client, acme).text)

    assert [r["email"] for r in found] == emails
    reads = [
        (sql, params)
        for sql, params in statements
        if "FROM contacts" in sql and "ORDER BY contacts.id" in sql and "LIMIT" in sql
    ]
    assert len(reads) == 4  # 3 + 3 + 3 + 1
    for sql, params in reads:
        assert "contacts.id >" in sql
        # SQLAlchemy's SQLite dialect always writes LIMIT ? OFFSET ?: the offset must be 0.
        assert "OFFSET" not in sql or list(params)[-1] == 0, (sql, params)


def test_the_cli_exports_the_same_to_a_private_file(
    client: TestClient, settings: Settings, runtime: Runtime, acme: TenantKeys, tmp_path: Path
) -> None:
    news = new_list(client, acme, "news")
    add(client, acme, "a@example.com", list_ids=[news])
    add(client, acme, "b@example.com")
    env = {
        "TIDINGS_DATABASE_URL": settings.database_url,
        "TIDINGS_DATA_DIR": str(settings.data_dir),
        "TIDINGS_SECRET_KEY": TEST_SECRET,
    }
    target = tmp_path / "out.csv"
    runner = CliRunner()

    result = runner.invoke(
        app,
        ["contacts", "export", "--tenant", "acme", "--list", "news", "--output", str(target)],
        env=env,
    )

    assert result.exit_code == 0, result.output
    assert [r["email"] for r in rows(target.read_text())] == ["a@example.com"]
    assert target.stat().st_mode & 0o777 == 0o600
    again = runner.invoke(
        app, ["contacts", "export", "--tenant", "acme", "--output", str(target)], env=env
    )
    assert again.exit_code != 0 and "already exists" in again.output
    stdout = runner.invoke(
        app, ["contacts", "export", "--tenant", "acme", "--format", "jsonl"], env=env
    )
    assert stdout.exit_code == 0, stdout.output
    assert stdout.stdout == export(client, acme, format="jsonl").text


# -- GET /v1/contacts/{id}/data -------------------------------------------------------------------


def test_the_access_document_holds_everything_about_the_person(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    news = new_list(client, acme, "news")
    ann = add(client, acme, "ann@example.com", attributes={"plan": "pro"}, list_ids=[news])
    sent = client.post(
        "/v1/messages",
        json={"contact_id": ann, "subject": "Hi", "text": "Hello Ann", "data": {"k": 1}},
        headers=acme.auth(acme.sender),
    ).json()["id"]
    client.post(
        "/v1/suppressions",
        json={"email": "ann@example.com", "reason": "unsubscribe"},
        headers=acme.auth(acme.sender),
    )
    with transaction(runtime.sessions) as session:
        session.add(
            Event(
                tenant_id=acme.tenant_id,
                contact_id=ann,
                type="unsubscribed",
                detail="ann@example.com from all mail",
                created_at=datetime.now(UTC),
            )
        )

    answer = client.get(f"/v1/contacts/{ann}/data", headers=acme.auth(acme.viewer))

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["contact"]["email"] == "ann@example.com"
    assert body["contact"]["attributes"] == {"plan": "pro"}
    assert [(x["id"], x["name"]) for x in body["lists"]] == [(news, "news")]
    assert [(s["email"], s["reason"]) for s in body["suppressions"]] == [
        ("ann@example.com", "unsubscribe")
    ]
    assert [e["detail"] for e in body["events"]] == ["ann@example.com from all mail"]
    [message] = body["messages"]
    assert (message["id"], message["text"], message["data"]) == (sent, "Hello Ann", {"k": 1})
    assert [e["type"] for e in message["events"]] == ["queued"]
    assert body["tracking_hits"] == [] and body["next_cursor"] is None


def test_the_access_document_pages_a_long_history(
    client: TestClient, acme: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(contact_data, "MESSAGES_PAGE", 2)
    ann = add(client, acme, "ann@example.com")
    sent = [
        client.post(
            "/v1/messages",
            json={"to": "ann@example.com", "subject": f"n{i}", "text": "x"},
            headers=acme.auth(acme.sender),
        ).json()["id"]
        for i in range(5)
    ]
    seen: list[int] = []
    cursor = None
    while True:
        params = {"cursor": cursor} if cursor else {}
        body = client.get(
            f"/v1/contacts/{ann}/data", params=params, headers=acme.auth(acme.viewer)
        ).json()
        assert len(body["messages"]) <= 2
        seen += [m["id"] for m in body["messages"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(sent, reverse=True)


def test_access_is_for_the_tenants_own_contacts_with_any_key(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    ann = add(client, acme, "ann@example.com")
    assert client.get(f"/v1/contacts/{ann}/data", headers=acme.auth(acme.viewer)).status_code == 200
    theirs = client.get(f"/v1/contacts/{ann}/data", headers=globex.auth(globex.admin))
    missing = client.get("/v1/contacts/999999/data", headers=globex.auth(globex.admin))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()
    assert client.get(f"/v1/contacts/{ann}/data").status_code == 401
