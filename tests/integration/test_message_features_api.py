"""What a message can carry, at the API: every refusal is a 422 (or 413) naming the field, never a
500; the JSON bodies that take files are allowed their base64 beyond TIDINGS_MAX_BODY_BYTES and
no other body is; a test send's limits, roles and tenancy."""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TenantKeys, create_tenant, make_settings
from tidings.app import create_app
from tidings.runtime import Runtime, build_runtime

LINE_BREAKS = ["\r", "\n", "\u2028", "\u2029", "\x0b", "\x0c", "\x85", "\x00"]


def b64(data: bytes) -> str:
    return b64encode(data).decode()


def send(client: TestClient, tenant: TenantKeys, **fields: Any) -> Any:
    body = {"to": "bob@example.com", "subject": "Hi", "text": "Hello", **fields}
    return client.post("/v1/messages", json=body, headers=tenant.auth(tenant.sender))


def refused(answer: Any, status: int, field: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["field"] == field, answer.text


def pdf(name: str = "a.pdf", data: bytes = b"%PDF-1.4 x", **more: str) -> dict[str, str]:
    return {"filename": name, "content_type": "application/pdf", "content": b64(data), **more}


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_a_line_break_anywhere_in_a_header_is_a_422_naming_it(
    client: TestClient, acme: TenantKeys, brk: str
) -> None:
    refused(
        send(client, acme, headers={"X-Course": f"a{brk}Bcc: x@evil.example"}),
        422,
        "headers.X-Course",
    )
    refused(
        send(client, acme, reply_to=f"Ada{brk}Bcc: x@evil.example <a@school.example>"),
        422,
        "reply_to",
    )
    refused(
        send(client, acme, **{"from": {"name": f"Ada{brk}X", "address": "a@school.example"}}),
        422,
        "from",
    )
    refused(send(client, acme, attachments=[pdf(f"a{brk}b.pdf")]), 422, "attachments[0].filename")


def test_headers_outside_the_allowlist_are_a_422_naming_them(
    client: TestClient, acme: TenantKeys
) -> None:
    for name in ("Bcc", "Reply-To", "X-Tidings-Campaign", "Return-Path", "Subject"):
        refused(send(client, acme, headers={name: "x"}), 422, f"headers.{name}")
    ok = send(client, acme, headers={"X-Ok": "1", "List-Id": "<l.example>"})
    assert ok.status_code == 201, ok.text


def test_files_of_the_wrong_kind_or_bad_base64_are_a_422_naming_them(
    client: TestClient, acme: TenantKeys
) -> None:
    bad = {"filename": "a.pdf", "content_type": "application/pdf", "content": "%%%not base64"}
    refused(send(client, acme, attachments=[pdf(), bad]), 422, "attachments[1].content")
    html = pdf("page.pdf", content_type="text/html")
    refused(send(client, acme, attachments=[html]), 422, "attachments[0].content_type")
    refused(send(client, acme, attachments=[pdf("setup.exe")]), 422, "attachments[0].filename")
    refused(
        send(client, acme, attachments=[pdf(data=b"MZ\x90\x00")]), 422, "attachments[0].content"
    )
    refused(send(client, acme, attachments=[pdf()] * 21), 422, "attachments")
    both = {"from": "a@school.example", "from_address": "b@school.example"}
    refused(send(client, acme, **both), 422, "from")


@pytest.fixture
def small_runtime(tmp_path: Path, db_url: str) -> Iterator[Runtime]:
    runtime = build_runtime(
        make_settings(tmp_path, db_url, max_attachment_bytes=2_000, max_body_bytes=4_000)
    )
    yield runtime
    runtime.close()


def test_files_over_the_limit_together_are_a_413_and_their_base64_is_allowed_past_the_body_cap(
    small_runtime: Runtime,
) -> None:
    tenant = create_tenant(small_runtime, "acme")
    with TestClient(create_app(small_runtime)) as client:
        over = send(client, tenant, attachments=[pdf(data=b"x" * 1_500), pdf(data=b"y" * 501)])
        refused(over, 413, "attachments")
        # 2,000 bytes of files are 2,668 of base64: with the rest, over the 4,000-byte body cap.
        fits = send(client, tenant, text="t" * 2_000, attachments=[pdf(data=b"x" * 2_000)])
        assert fits.status_code == 201, fits.text
        # Any other body is held to the cap.
        contact = client.post(
            "/v1/contacts",
            json={"email": "c@example.com", "name": "n" * 4_100},
            headers=tenant.auth(tenant.admin),
        )
        assert contact.status_code == 413


def test_templates_and_campaigns_show_their_files_without_the_content(
    client: TestClient, acme: TenantKeys
) -> None:
    auth = acme.auth(acme.sender)
    template = client.post(
        "/v1/templates",
        json={"name": "t", "subject": "s", "text": "b", "from": "Ada <a@school.example>",
              "reply_to": "office@school.example", "headers": {"X-Course": "ML"},
              "attachments": [pdf("../../syllabus.pdf")]},
        headers=auth,
    )  # fmt: skip
    assert template.status_code == 201, template.text
    shown = template.json()
    assert shown["from_address"] == '"Ada" <a@school.example>'
    assert shown["reply_to"] == "office@school.example"
    assert shown["headers"] == {"X-Course": "ML"}
    assert shown["attachments"] == [
        {"filename": "syllabus.pdf", "content_type": "application/pdf", "size": 10}
    ]
    replaced = client.put(
        f"/v1/templates/{shown['id']}",
        json={"name": "t", "subject": "s", "text": "b"},
        headers=auth,
    )
    assert replaced.json()["attachments"] == [] and replaced.json()["from_address"] is None
    contact = client.post("/v1/contacts", json={"email": "c@example.com"}, headers=auth).json()
    campaign = client.post(
        "/v1/campaigns",
        json={"name": "c", "template_id": shown["id"], "contact_ids": [contact["id"]],
              "from": {"name": "Ms Ada", "address": "a@school.example"},
              "attachments": [pdf()]},
        headers=auth,
    )  # fmt: skip
    assert campaign.status_code == 201, campaign.text
    assert campaign.json()["from_address"] == '"Ms Ada" <a@school.example>'
    assert campaign.json()["attachments"][0]["filename"] == "a.pdf"
    assert 'content"' not in campaign.text


def _campaign(client: TestClient, tenant: TenantKeys) -> tuple[int, int]:
    auth = tenant.auth(tenant.sender)
    template = client.post(
        "/v1/templates",
        json={"name": "t", "subject": "Hi {{ first_name }}", "text": "b"},
        headers=auth,
    ).json()
    contact = client.post(
        "/v1/contacts", json={"email": "ann@example.com", "first_name": "Ann"}, headers=auth
    ).json()
    campaign = client.post(
        "/v1/campaigns",
        json={"name": "c", "template_id": template["id"], "contact_ids": [contact["id"]]},
        headers=auth,
    ).json()
    return campaign["id"], contact["id"]


def test_a_test_send_is_limited_needs_a_sender_and_sees_only_its_own_tenant(
    client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    campaign_id, contact_id = _campaign(client, acme)
    theirs, their_contact = _campaign(client, globex)
    path = f"/v1/campaigns/{campaign_id}/test"
    ok = client.post(path, json={"to": ["me@example.com"], "contact_id": contact_id},
                     headers=acme.auth(acme.sender))  # fmt: skip
    assert ok.status_code == 202, ok.text
    many = {"to": [f"me{i}@example.com" for i in range(11)]}
    assert client.post(path, json=many, headers=acme.auth(acme.sender)).status_code == 422
    refused(client.post(path, json={"to": ["not an address"]}, headers=acme.auth(acme.sender)),
            422, "to[0]")  # fmt: skip
    viewer = client.post(path, json={"to": ["me@example.com"]}, headers=acme.auth(acme.viewer))
    assert viewer.status_code == 403
    other = client.post(f"/v1/campaigns/{theirs}/test", json={"to": ["me@example.com"]},
                        headers=acme.auth(acme.sender))  # fmt: skip
    assert other.status_code == 404
    missing = client.post(f"/v1/campaigns/{campaign_id + 10_000}/test",
                          json={"to": ["me@example.com"]}, headers=acme.auth(acme.sender))  # fmt: skip
    assert other.json() == missing.json()
    refused(client.post(path, json={"to": ["me@example.com"], "contact_id": their_contact},
                        headers=acme.auth(acme.sender)), 404, "contact_id")  # fmt: skip
    progress = client.get(f"/v1/campaigns/{campaign_id}", headers=acme.auth(acme.viewer)).json()
    assert (progress["status"], progress["recipient_count"], progress["pending"]) == ("draft", 0, 0)
