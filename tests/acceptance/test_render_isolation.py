"""A slow render never causes duplicate sends: with real worker processes and a lease shorter
than one message's render, that message fails alone and its batch-mates go out exactly once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.acceptance.conftest import (
    FAST,
    WorkerProcess,
    start_campaign,
    wait_for_completion,
    wait_until,
)
from tests.conftest import TenantKeys, _truncate_pg, make_settings
from tests.smtp_server import SmtpTestServer
from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import Message
from tidings.db.models import Worker as WorkerRow
from tidings.runtime import Runtime

LEASE_SECONDS = 2.0
RENDER_SECONDS = 5  # the slow message's render: longer than two leases
#: Renders for RENDER_SECONDS for a contact marked slow, at once for everyone else.
TEMPLATE = (
    "{% if attributes.slow is defined %}{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% endfor %}{% endfor %}{% endif %}<p>Hello {{ first_name }}</p>"
)


@pytest.fixture
def db_url(pg_database_url: str) -> str:
    """Worker processes sharing one queue: PostgreSQL, as in production."""
    _truncate_pg(pg_database_url)
    return pg_database_url


@pytest.fixture
def settings(tmp_path, db_url: str, smtp_server: SmtpTestServer) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(
        tmp_path,
        db_url,
        transport_url=smtp_server.url,
        **{**FAST, "lease_seconds": LEASE_SECONDS},
    )


def test_a_render_longer_than_the_lease_fails_alone_and_its_batch_mates_go_out_once(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    auth = acme.auth(acme.admin)
    template = client.post(
        "/v1/templates", json={"name": "t", "subject": "Hi", "html": TEMPLATE}, headers=auth
    )
    assert template.status_code == 201, template.text
    people = [(f"p{i}@example.edu", {}) for i in range(6)] + [("slow@example.edu", {"slow": 1})]
    contact_ids = []
    for email, attributes in people:
        made = client.post(
            "/v1/contacts",
            json={"email": email, "first_name": "P", "attributes": attributes},
            headers=auth,
        )
        assert made.status_code == 201, made.text
        contact_ids.append(made.json()["id"])
    listed = client.post("/v1/lists", json={"name": "all"}, headers=auth)
    list_id = listed.json()["id"]
    client.post(f"/v1/lists/{list_id}/members", json={"contact_ids": contact_ids}, headers=auth)

    # Two workers: either one reaps the other's expired leases, as in production.
    env = {"TIDINGS_RENDER_TIMEOUT_SECONDS": str(RENDER_SECONDS)}
    for _ in range(2):
        worker_process(concurrency=40, **env)  # batches of 10: the whole campaign in one

    def workers_up() -> bool:
        with transaction(runtime.sessions) as session:
            return len(session.scalars(select(WorkerRow.id)).all()) == 2

    wait_until(workers_up)
    campaign_id = start_campaign(
        client, acme, {"template_id": template.json()["id"], "list_id": list_id}
    )
    status = wait_for_completion(client, acme, campaign_id, timeout=60)

    with transaction(runtime.sessions) as session:
        rows = {m.to_address: m for m in session.scalars(select(Message))}
    assert (status["sent"], status["failed"]) == (6, 1), [m.last_error for m in rows.values()]
    received = Counter(r for m in smtp_server.messages for r in m.rcpt_tos)
    assert received == Counter({email: 1 for email, _ in people[:6]})
    slow = rows["slow@example.edu"]
    assert slow.status == "failed"
    assert slow.last_error is not None and "time limit" in slow.last_error, slow.last_error
    assert "html" in slow.last_error
    # Nothing was requeued by a reaper, nothing attempted twice.
    assert {(m.attempts, m.lease_expiries) for m in rows.values()} == {(1, 0)}
