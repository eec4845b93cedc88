"""End to end through Resend's API (the local stand-in) and its signed webhook: a campaign's mail
accepted by Resend is sent, not yet delivered, until Resend's ``email.delivered`` says so."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.acceptance.conftest import FAST, WorkerThread, api_setup, start_campaign, wait_until
from tests.conftest import TenantKeys, make_settings
from tests.integration.test_inbound_resend import SECRET, URL, bounced, signed
from tests.integration.test_provider_events import event
from tests.resend_server import ResendTestServer
from tidings.config import Settings

PEOPLE = [("ann@example.edu", "Ann"), ("bob@example.edu", "Bob"), ("cho@example.edu", "Cho")]


@pytest.fixture
def resend_api() -> Iterator[ResendTestServer]:
    with ResendTestServer(api_key="re_account") as api:
        yield api


@pytest.fixture
def settings(tmp_path: Path, db_url: str, resend_api: ResendTestServer) -> Settings:
    return make_settings(
        tmp_path, db_url, transport_url=resend_api.url, resend_webhook_secret=SECRET, **FAST
    )


def test_resend_mail_is_delivered_when_resend_confirms_it(
    client: TestClient,
    acme: TenantKeys,
    resend_api: ResendTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    campaign_id = start_campaign(client, acme, api_setup(client, acme, PEOPLE))
    worker()
    auth = acme.auth(acme.viewer)

    def figures() -> dict[str, Any]:
        body: dict[str, Any] = client.get(f"/v1/campaigns/{campaign_id}/stats", headers=auth).json()
        return body

    accepted = wait_until(lambda: (f := figures())["sent"] == 3 and f)
    assert (accepted["delivered"], accepted["awaiting_confirmation"]) == (0, 3)
    assert accepted["open_rate"] == 0.0  # nothing is delivered yet: no rate

    ids = {email["to"][0]: email["id"] for email in resend_api.emails}
    for n, (kind, who) in enumerate(
        (("email.delivered", "ann@example.edu"), ("email.delivered", "bob@example.edu"))
    ):
        body, headers = signed(event(kind, ids[who]), event_id=f"msg_{n}")
        assert client.post(URL, content=body, headers=headers).json()["status"] == "recorded"
    body, headers = signed(bounced(ids["cho@example.edu"], bounce_type="Transient"), event_id="b")
    assert client.post(URL, content=body, headers=headers).json()["kind"] == "soft_bounce"
    after = figures()
    assert {
        k: after[k] for k in ("sent", "delivered", "awaiting_confirmation", "bounced_soft")
    } == {
        "sent": 3,
        "delivered": 2,
        "awaiting_confirmation": 0,
        "bounced_soft": 1,
    }
