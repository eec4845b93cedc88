"""Bulk import: streamed, set-based, all or nothing for a broken file, row by row for bad rows."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from tests.conftest import TEST_SECRET, TenantKeys, make_settings
from tests.live_server import LiveServer
from tidings.address_hash import address_key
from tidings.app import create_app
from tidings.db.engine import transaction
from tidings.db.models import Contact, ListMember
from tidings.errors import PayloadTooLarge
from tidings.runtime import Runtime, build_runtime
from tidings.services import imports
from tidings.services.imports import ImportFormat

CSV = {"content-type": "text/csv"}
NDJSON = {"content-type": "application/x-ndjson"}


@pytest.fixture
def news(client: TestClient, acme: TenantKeys) -> int:
    answer = client.post("/v1/lists", json={"name": "news"}, headers=acme.auth(acme.sender))
    list_id: int = answer.json()["id"]
    return list_id


def _import(
    client: TestClient,
    tenant: TenantKeys,
    list_id: int,
    body: bytes | str | Iterator[bytes],
    headers: dict[str, str] = CSV,
) -> Any:
    return client.post(
        f"/v1/lists/{list_id}/import",
        content=body,
        headers={**tenant.auth(tenant.sender), **headers},
    )


def _contacts(client: TestClient, tenant: TenantKeys, **params: Any) -> dict[str, dict[str, Any]]:
    answer = client.get(
        "/v1/contacts", params={"limit": 500, **params}, headers=tenant.auth(tenant.viewer)
    )
    return {c["email"]: c for c in answer.json()["items"]}


def _counts(runtime: Runtime) -> tuple[int, int]:
    with runtime.sessions() as session:
        return (
            session.scalar(select(func.count()).select_from(Contact)) or 0,
            session.scalar(select(func.count()).select_from(ListMember)) or 0,
        )


def test_a_csv_creates_and_updates_contacts_and_fills_the_list(
    client: TestClient, acme: TenantKeys, news: int
) -> None:
    client.post(
        "/v1/contacts",
        json={
            "email": "old@example.com",
            "name": "Old",
            "timezone": "Asia/Tokyo",
            "attributes": {"kept": 1, "plan": "free"},
        },
        headers=acme.auth(acme.sender),
    )
    body = (
        "email,name,first_name,Timezone,locale,plan,company\r\n"
        "old@Example.com,,Olga,,,gold,\r\n"
        "New@Example.org,New Person,,Europe/Paris,fr-FR,silver,Initech\r\n"
        '"quoted@example.com","Doe, Jane",,,,"multi\r\nline",\r\n'
    )
    answer = _import(client, acme, news, body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "created": 2,
        "updated": 1,
        "skipped": [],
        "skipped_count": 0,
        "total_rows": 3,
        "added_to_list": 3,
    }
    stored = _contacts(client, acme, list_id=news)
    assert set(stored) == {"old@example.com", "New@example.org", "quoted@example.com"}
    old = stored["old@example.com"]
    assert (old["name"], old["first_name"], old["timezone"]) == (
        "Old",
        "Olga",
        "Asia/Tokyo",
    )  # empty cells keep
    assert old["attributes"] == {"kept": 1, "plan": "gold"}  # merged
    new = stored["New@example.org"]
    assert (new["timezone"], new["locale"]) == ("Europe/Paris", "fr-FR")
    assert new["attributes"] == {"plan": "silver", "company": "Initech"}
    assert stored["quoted@example.com"]["name"] == "Doe, Jane"
    assert stored["quoted@example.com"]["attributes"] == {"plan": "multi\r\nline"}

    again = _import(client, acme, news, body).json()
    assert (again["created"], again["updated"], again["added_to_list"]) == (0, 3, 0)


def test_json_lines_take_any_json_value_and_merge_an_attributes_object(
    client: TestClient, acme: TenantKeys, news: int
) -> None:
    lines = [
        {
            "email": "a@example.com",
            "name": "A",
            "score": 9.5,
            "tags": ["x", "y"],
            "attributes": {"score": 10, "ok": True},
        },
        {"email": "b@example.com", "nested": {"deep": [1, {"k": None}]}},
    ]
    body = "\n".join(json.dumps(line) for line in lines) + "\n\n"
    answer = _import(client, acme, news, body, NDJSON)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["created"], answer.json()["total_rows"]) == (2, 2)
    stored = _contacts(client, acme)
    assert stored["a@example.com"]["attributes"] == {"score": 10, "tags": ["x", "y"], "ok": True}
    assert stored["b@example.com"]["attributes"] == {"nested": {"deep": [1, {"k": None}]}}


def test_an_import_never_resubscribes_but_may_record_an_unsubscribe(
    client: TestClient, acme: TenantKeys, news: int
) -> None:
    client.post(
        "/v1/contacts",
        json={"email": "gone@example.com", "status": "unsubscribed"},
        headers=acme.auth(acme.sender),
    )
    client.post("/v1/contacts", json={"email": "here@example.com"}, headers=acme.auth(acme.sender))
    body = "email,status\ngone@example.com,active\nhere@example.com,unsubscribed\nfresh@example.com,bounced\nx@example.com,maybe\n"
    answer = _import(client, acme, news, body).json()
    assert answer["skipped"] == [
        {
            "line": 5,
            "reason": "status must be one of active, pending, unsubscribed, bounced, complained",
        }
    ]
    statuses = {email: c["status"] for email, c in _contacts(client, acme).items()}
    assert statuses == {
        "gone@example.com": "unsubscribed",
        "here@example.com": "unsubscribed",
        "fresh@example.com": "bounced",
    }


def test_bad_rows_are_skipped_with_their_line_and_reason(
    client: TestClient, acme: TenantKeys, news: int
) -> None:
    body = (
        "\ufeffemail;name;timezone\n"  # Excel: a BOM and semicolons
        "good@example.com;Good;UTC\n"
        "not-an-address;Bad;\n"
        "tz@example.com;TZ;Mars/Base\n"
        "\n"
        "GOOD@example.com;Again;\n"
        "good@example.com;Dup;\n"
        "ctrl@example.com;A\x1bB;\n"
        "short@example.com\n"
        ";no email;\n"
    )
    answer = _import(client, acme, news, body.encode())
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["created"] == 2 and result["total_rows"] == 8 and result["skipped_count"] == 6
    reasons = {s["line"]: s["reason"] for s in result["skipped"]}
    assert sorted(reasons) == [3, 4, 7, 8, 9, 10]
    assert reasons[3].startswith("email:") and "@-sign" in reasons[3]
    assert "Mars/Base" in reasons[4]
    assert reasons[7] == "duplicate of line 2"
    assert "name" in reasons[8]
    assert reasons[9] == "the row has 1 fields, the header has 3"
    assert reasons[10] == "email is missing"
    assert set(_contacts(client, acme, list_id=news)) == {"good@example.com", "GOOD@example.com"}


def test_the_delimiter_is_taken_from_the_header_outside_quotes(
    client: TestClient, acme: TenantKeys, news: int
) -> None:
    body = '"email";"Company, Inc";"first_name"\na@example.com;"Acme, Ltd";Ann\n'
    assert _import(client, acme, news, body).json()["created"] == 1
    stored = _contacts(client, acme)["a@example.com"]
    assert (stored["first_name"], stored["attributes"]) == ("Ann", {"Company, Inc": "Acme, Ltd"})


def test_bad_json_lines_are_skipped(client: TestClient, acme: TenantKeys, news: int) -> None:
    body = b'{"email": "a@example.com"}\n{"email": \n[1, 2]\n{"email": "b@example.com", "attributes": 3}\n{"email": 7}\n'
    result = _import(client, acme, news, body, NDJSON).json()
    assert result["created"] == 1
    assert [s["line"] for s in result["skipped"]] == [2, 3, 4, 5]
    assert "not valid JSON" in result["skipped"][0]["reason"]


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        (
            b"email,name\na@example.com,A\nb@example.com,\xe9t\xe9\n",
            422,
            "body",
            "line 3 is not UTF-8",
        ),
        (
            b"email,name\na@example.com,A\nb@exam\x00ple.com,B\n",
            422,
            "body",
            "line 3 contains a NUL byte",
        ),
        ("email,name\na@example.com,A\n".encode("utf-16"), 422, "body", "UTF-16"),
        (
            b'email,name\na@example.com,"A\nb@example.com,B\nc@example.com,C\n',
            422,
            "body",
            "starting on line 2 is never closed",
        ),
        (b'email,name\na@example.com,"A"x\n', 422, "body", "line 2 is not valid CSV"),
        (b"mail,name\na@example.com,A\n", 422, "email", "no email column"),
        (b"email,email\na@example.com,b@example.com\n", 422, "body", "twice"),
        (b"email," + b"x" * 201 + b"\na@example.com,1\n", 422, "body", "column 2: attribute names"),
        (b"", 422, "body", "empty"),
        (
            b"email\na@example.com\n" + b"b" * 1_100_000 + b"@example.com\n",
            413,
            "body",
            "line 3 is longer than",
        ),
    ],
)
def test_a_broken_file_is_refused_whole_and_leaves_nothing_behind(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    news: int,
    body: bytes,
    status: int,
    field: str,
    words: str,
) -> None:
    client.post(
        "/v1/contacts", json={"email": "before@example.com"}, headers=acme.auth(acme.sender)
    )
    before = _counts(runtime)
    answer = _import(
        client, acme, news, iter([body[i : i + 4096] for i in range(0, len(body), 4096)])
    )
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["field"] == field and words in error["message"], error
    assert _counts(runtime) == before
    assert (
        client.get(f"/v1/lists/{news}", headers=acme.auth(acme.viewer)).json()["member_count"] == 0
    )


def test_an_endless_line_is_refused_without_being_read_whole(
    runtime: Runtime, acme: TenantKeys
) -> None:
    sent = 0

    def fifty_megabytes_on_one_line() -> Iterator[bytes]:
        nonlocal sent
        yield b"email\n"
        for _ in range(800):
            sent += 65_536
            yield b"x" * 65_536

    with runtime.sessions() as session, session.begin():
        list_id = _service_list(session, acme)
        with pytest.raises(PayloadTooLarge, match="line 2 is longer than 1048576 bytes"):
            imports.import_contacts(
                session=session,
                tenant_id=acme.tenant_id,
                list_id=list_id,
                chunks=fifty_megabytes_on_one_line(),
                file_format=ImportFormat.csv,
                now=datetime.now(UTC),
                max_attributes_bytes=16_384,
                address_key=address_key(TEST_SECRET),
            )
    assert sent < 2 * 1_048_576


def _service_list(session: Any, tenant: TenantKeys) -> int:
    from tidings.services import lists

    return lists.create_list(
        session=session,
        tenant_id=tenant.tenant_id,
        name="svc",
        description=None,
        now=datetime.now(UTC),
    ).id


def test_skipped_rows_are_capped_in_the_answer_but_all_counted(
    runtime: Runtime, acme: TenantKeys
) -> None:
    body = b"email\n" + b"".join(b"bad%d\n" % i for i in range(10)) + b"ok@example.com\n"
    with transaction(runtime.sessions) as session:
        result = imports.import_contacts(
            session=session,
            tenant_id=acme.tenant_id,
            list_id=_service_list(session, acme),
            chunks=[body],
            file_format=ImportFormat.csv,
            now=datetime.now(UTC),
            max_attributes_bytes=16_384,
            address_key=address_key(TEST_SECRET),
            max_skipped=3,
        )
    assert (result.created, result.skipped_count, result.total_rows) == (1, 10, 11)
    assert [s.line for s in result.skipped] == [2, 3, 4]


def test_attributes_that_would_outgrow_the_cap_once_merged_skip_the_row(
    runtime: Runtime, acme: TenantKeys
) -> None:
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        list_id = _service_list(session, acme)
        session.add(
            Contact(
                tenant_id=acme.tenant_id,
                email="full@example.com",
                attributes={"a": "x" * 40},
                status="active",
                created_at=now - timedelta(minutes=1),
                updated_at=now - timedelta(minutes=1),
            )
        )
    body = b"email,b\nfull@example.com," + b"y" * 40 + b"\nfits@example.com," + b"y" * 40 + b"\n"
    with transaction(runtime.sessions) as session:
        result = imports.import_contacts(
            session=session,
            tenant_id=acme.tenant_id,
            list_id=list_id,
            chunks=[body],
            file_format=ImportFormat.csv,
            now=now,
            max_attributes_bytes=70,
            address_key=address_key(TEST_SECRET),
        )
    assert (result.created, result.updated, result.added_to_list) == (1, 0, 1)
    assert [(s.line, "over 70 bytes once merged" in s.reason) for s in result.skipped] == [
        (2, True)
    ]
    with runtime.sessions() as session:
        full = session.scalars(select(Contact).where(Contact.email == "full@example.com")).one()
        assert full.attributes == {"a": "x" * 40}


def test_only_csv_and_json_lines_in_utf8_are_accepted(
    client: TestClient, acme: TenantKeys, news: int
) -> None:
    for content_type in (
        "application/json",
        "text/plain",
        "multipart/form-data; boundary=x",
        "text/csv; charset=latin-1",
    ):
        answer = _import(
            client, acme, news, b"email\na@example.com\n", {"content-type": content_type}
        )
        assert answer.status_code == 415, content_type
        assert answer.json()["error"]["code"] == "unsupported_media_type"
    ok = _import(
        client, acme, news, b"email\na@example.com\n", {"content-type": "text/csv; charset=UTF-8"}
    )
    assert ok.status_code == 200
    assert _import(client, acme, 999_999, b"email\na@example.com\n").status_code == 404


def test_an_upload_over_the_configured_cap_is_413_and_stores_nothing(
    tmp_path: Path, db_url: str, runtime: Runtime, acme: TenantKeys, news: int
) -> None:
    small = build_runtime(make_settings(tmp_path, db_url, max_import_bytes=2_000), migrate=False)
    body = b"email\n" + b"".join(b"user%04d@example.com\n" % i for i in range(200))
    try:
        with TestClient(create_app(small)) as client:
            declared = _import(client, acme, news, body)
            streamed = _import(
                client, acme, news, iter([body[i : i + 500] for i in range(0, len(body), 500)])
            )
            fits = _import(client, acme, news, body[:1_500].rsplit(b"\n", 1)[0])
    finally:
        small.close()
    for answer in (declared, streamed):
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"]["code"] == "payload_too_large"
    assert fits.status_code == 200 and fits.json()["created"] > 0
    assert _counts(runtime)[0] == fits.json()["created"]


CSV_ISH = st.text(
    alphabet=st.sampled_from(list('email,;"\n\r\t\x00\ufeffa@b.c xé\u2028{}:[]')), max_size=80
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(st.binary(max_size=200), CSV_ISH.map(lambda t: ("email,name\n" + t).encode())),
    content_type=st.sampled_from(["text/csv", "application/x-ndjson"]),
)
def test_any_body_gets_an_answer_or_a_4xx_never_a_server_error(
    client: TestClient, acme: TenantKeys, news: int, body: bytes, content_type: str
) -> None:
    answer = _import(client, acme, news, body, {"content-type": content_type})
    assert answer.status_code in (200, 413, 422), answer.text


def test_a_slow_upload_does_not_hold_up_other_writers(
    runtime: Runtime, acme: TenantKeys, news: int
) -> None:
    """On SQLite every transaction holds the write lock, so the upload is read in full before the
    import's first statement; meanwhile the API keeps accepting mail."""
    rows = [b"email,name\n"] + [b"slow%d@example.com,Slow %d\n" % (i, i) for i in range(20)]

    def slowly() -> Iterator[bytes]:
        for row in rows:
            time.sleep(0.1)
            yield row

    answers: dict[str, httpx.Response] = {}
    with LiveServer(create_app(runtime)) as server:

        def upload() -> None:
            answers["import"] = httpx.post(
                f"{server.url}/v1/lists/{news}/import",
                content=slowly(),
                headers={**acme.auth(acme.sender), "Content-Type": "text/csv"},
                timeout=30,
            )

        uploading = threading.Thread(target=upload)
        uploading.start()
        time.sleep(0.5)  # the upload is under way, a quarter of it sent
        started = time.monotonic()
        sent = httpx.post(
            f"{server.url}/v1/messages",
            json={"to": "meanwhile@example.com", "subject": "Hi", "text": "x"},
            headers=acme.auth(acme.sender),
            timeout=30,
        )
        waited = time.monotonic() - started
        upload_went_on = uploading.is_alive()
        uploading.join(30)
    assert sent.status_code == 201, sent.text
    assert waited < 1.0, f"POST /v1/messages waited {waited:.1f} s behind the upload"
    assert upload_went_on, "the upload ended before the message was accepted: no overlap tested"
    assert answers["import"].status_code == 200, answers["import"].text
    assert answers["import"].json()["created"] == 20
