"""End to end through Resend's API (the local stand-in, tests/resend_server.py): tenants share our
one Resend account, so the idempotency keys they choose must not meet there."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.acceptance.conftest import FAST, WorkerThread, wait_until
from tests.conftest import TenantKeys, make_settings
from tests.resend_server import ResendTestServer
from tidings.config import Settings


@pytest.fixture
def resend_api() -> Iterator[ResendTestServer]:
    with ResendTestServer(api_key="re_account") as api:
        yield api


@pytest.fixture
def settings(tmp_path: Path, db_url: str, resend_api: ResendTestServer) -> Settings:
    return make_settings(tmp_path, db_url, transport_url=resend_api.url, **FAST)


def send_reset(client: TestClient, tenant: TenantKeys) -> int:
    answer = client.post(
        "/v1/messages",
        json={"to": "ada@example.com", "subject": "Reset your password", "text": "Code 1234"},
        headers={**tenant.auth(tenant.sender), "Idempotency-Key": "reset-42"},
    )
    assert answer.status_code == 201, answer.text
    message_id: int = answer.json()["id"]
    return message_id


def test_two_tenants_using_the_same_idempotency_key_both_get_their_mail_sent(
    client: TestClient,
    acme: TenantKeys,
    globex: TenantKeys,
    resend_api: ResendTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    """The same key and the very same email from two tenants: with the raw key, Resend would
    answer the second with the first one's email, and globex's would count as sent unsent."""
    worker()
    sent: dict[int, Any] = {}
    for tenant in (acme, globex):
        message_id = send_reset(client, tenant)

        def is_sent(tenant: TenantKeys = tenant, message_id: int = message_id) -> Any:
            path = f"/v1/messages/{message_id}"
            body = client.get(path, headers=tenant.auth(tenant.viewer)).json()
            return body if body["status"] == "sent" else None

        sent[tenant.tenant_id] = wait_until(is_sent, timeout=20)
        assert len(resend_api.emails) == len(sent)  # accepted by Resend before it counts as sent
    assert len(resend_api.emails) == 2
    assert {e["id"] for e in resend_api.emails} == {m["provider_message_id"] for m in sent.values()}
    keys = [r.headers["idempotency-key"] for r in resend_api.requests]
    assert len(set(keys)) == 2 and "reset-42" not in keys
