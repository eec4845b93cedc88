"""Webhooks ``message.opened`` and ``message.clicked``: written by the tracking flush for each hit,
flagged ``machine`` with its reason, only to endpoints that asked for them, and at no cost to a
tenant without one."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import TenantKeys, make_settings
from tests.integration.test_campaign_stats import SENT, SHOP, hit, seed_campaign
from tests.integration.test_tracking_routes import statements
from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import WebhookDelivery
from tidings.runtime import Runtime
from tidings.tracking.hits import flush

HOOK = "http://127.0.0.1:9/hooks"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url, webhook_allow_private=True)


def endpoint(client: TestClient, tenant: TenantKeys, *event_types: str) -> int:
    answer = client.post(
        "/v1/webhooks",
        json={"url": HOOK, "event_types": list(event_types)},
        headers=tenant.auth(tenant.admin),
    )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def deliveries(runtime: Runtime) -> list[tuple[int, int, str, dict[str, Any]]]:
    with transaction(runtime.sessions) as session:
        return [
            (row.tenant_id, row.endpoint_id, row.event_type, row.payload)
            for row in session.execute(
                select(WebhookDelivery).order_by(WebhookDelivery.id)
            ).scalars()
        ]


def test_opens_and_clicks_reach_the_endpoints_that_asked_with_the_machine_flag(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    opens = endpoint(client, acme, "message.opened")
    both = endpoint(client, acme, "message.opened", "message.clicked", "message.sent")
    endpoint(client, globex, "message.sent")  # not these
    t, g = acme.tenant_id, globex.tenant_id
    _, (m1, m2) = seed_campaign(runtime, t, ["sent", "sent"])
    _, (theirs,) = seed_campaign(runtime, g, ["sent"])
    # The endpoints were made now; the hits must come after them to be reported.
    later = (runtime.clock.now() - SENT).total_seconds() + 60
    flush(
        runtime,
        [
            hit(t, m1, "open", later),  # a person
            hit(t, m2, "open", later, agent="Mozilla/5.0", network="17.58.1.0/24"),  # Apple
            hit(t, m1, "click", later + 5, link=1),
            hit(t, m1, "honeypot", later + 9),
            hit(g, theirs, "open", later),
        ],
    )
    found = deliveries(runtime)
    assert all(tenant == t for tenant, *_ in found)
    assert [(e, kind) for _, e, kind, _ in found] == [
        (opens, "message.opened"),
        (both, "message.opened"),
        (opens, "message.opened"),
        (both, "message.opened"),
        (both, "message.clicked"),
        (both, "message.clicked"),
    ]
    person, apple, click, honeypot = (found[0][3], found[2][3], found[4][3], found[5][3])
    assert person["type"] == "message.opened"
    assert person["timestamp"] == (SENT + timedelta(seconds=later)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    assert person["data"] == {
        "message_id": m1,
        "campaign_id": person["data"]["campaign_id"],
        "contact_id": person["data"]["contact_id"],
        "email": "r0@example.com",
        "reference": None,
        "machine": False,
        "machine_reason": None,
    }
    assert apple["data"]["machine"] is True and apple["data"]["machine_reason"] == "apple_mpp"
    assert click["data"]["url"] == SHOP and click["data"]["link_index"] == 1
    assert click["data"]["machine"] is False
    assert honeypot["data"]["machine"] is True
    assert honeypot["data"]["machine_reason"] == "honeypot"


def test_no_endpoint_hears_of_hits_before_it_existed(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    endpoint(client, acme, "message.opened")
    _, (m1,) = seed_campaign(runtime, acme.tenant_id, ["sent"])
    flush(runtime, [hit(acme.tenant_id, m1, "open", 600)])  # in 2026-11-30, before the endpoint
    assert deliveries(runtime) == []


def test_a_tenant_without_such_an_endpoint_costs_one_read_and_no_write(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    endpoint(client, acme, "message.sent", "message.bounced")
    _, (m1,) = seed_campaign(runtime, acme.tenant_id, ["sent"])
    later = (runtime.clock.now() - SENT).total_seconds() + 60
    with statements(runtime) as seen:
        flush(runtime, [hit(acme.tenant_id, m1, "open", later)])
    touching = [s for s in seen if "webhook" in s.lower()]
    assert len(touching) == 1 and touching[0].lstrip().upper().startswith("SELECT"), touching
    assert deliveries(runtime) == []


def test_endpoints_may_choose_the_new_types_and_unknown_ones_are_refused(
    client: TestClient, acme: TenantKeys
) -> None:
    endpoint(client, acme, "message.opened", "message.clicked")
    wrong = client.post(
        "/v1/webhooks",
        json={"url": HOOK, "event_types": ["message.glanced"]},
        headers=acme.auth(acme.admin),
    )
    assert wrong.status_code == 422
    assert wrong.json()["error"]["field"].startswith("event_types")
