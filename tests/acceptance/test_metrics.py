"""``/metrics`` after real deliveries: parsed with the Prometheus client's own parser, its figures
must be the database's (both dialects)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine, func, select

from tests.acceptance.conftest import WorkerThread, api_setup, start_campaign, wait_until
from tests.conftest import TenantKeys
from tests.smtp_server import NO_SUCH_USER, SmtpTestServer, reply
from tidings.db.models import Message
from tidings.runtime import Runtime

PEOPLE = [
    ("ann@example.edu", "Ann"),
    ("bob@example.edu", "Bob"),
    ("cho@example.edu", "Cho"),
    ("dee@example.edu", "Dee"),
]


def scrape(client: TestClient) -> dict[str, Metric]:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(answer.text)}


def values(family: Metric, *label_names: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(sample.labels[name] for name in label_names): sample.value
        for sample in family.samples
    }


def database_counts(runtime: Runtime) -> dict[tuple[str, str], float]:
    with runtime.sessions() as session:
        rows = session.execute(
            select(Message.tenant_id, Message.status, func.count()).group_by(
                Message.tenant_id, Message.status
            )
        ).all()
    return {(str(tenant_id), status): float(count) for tenant_id, status, count in rows}


def test_metrics_match_the_database_after_a_delivered_campaign(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    globex: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    smtp_server.fail("bob@example.edu", reply(NO_SUCH_USER))
    campaign_id = start_campaign(client, acme, api_setup(client, acme, PEOPLE))
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    scheduled = client.post(
        "/v1/messages",
        json={"to": "zed@example.org", "subject": "Later", "text": "x", "send_at": later},
        headers=globex.auth(globex.sender),
    )
    assert scheduled.status_code == 201, scheduled.text
    worker()

    def completed() -> bool:
        answer = client.get(f"/v1/campaigns/{campaign_id}", headers=acme.auth(acme.viewer))
        return bool(answer.json()["status"] == "completed")

    wait_until(completed, timeout=30)
    families = scrape(client)

    messages = values(families["tidings_messages"], "tenant_id", "status")
    nonzero = {labels: value for labels, value in messages.items() if value}
    assert nonzero == database_counts(runtime)
    assert nonzero == {
        (str(acme.tenant_id), "sent"): 3.0,
        (str(acme.tenant_id), "failed"): 1.0,
        (str(globex.tenant_id), "queued"): 1.0,
    }
    assert set(messages) >= {(str(acme.tenant_id), s) for s in ("queued", "dead", "sending")}
    # The globex message is queued but not due for an hour: nothing is waiting.
    assert values(families["tidings_queue_depth"], "tenant_id") == {
        (str(acme.tenant_id),): 0.0,
        (str(globex.tenant_id),): 0.0,
    }
    assert values(families["tidings_queue_oldest_waiting_seconds"]) == {(): 0.0}
    assert values(families["tidings_workers"]) == {(): 1.0}
    assert values(families["tidings_database_up"]) == {(): 1.0}
    # The delivery counters are in-process; their families exist for the worker to bump.
    assert families["tidings_send_latency_seconds"].type == "histogram"
    assert families["tidings_throttle_waits"].type == "counter"
    attempts = values(families["tidings_delivery_attempts"], "outcome")
    assert {("sent",), ("transient",), ("permanent",)} <= set(attempts)


def test_metrics_show_a_waiting_message_and_no_worker(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    sent = client.post(
        "/v1/messages",
        json={"to": "ann@example.edu", "subject": "Now", "text": "x"},
        headers=acme.auth(acme.sender),
    )
    assert sent.status_code == 201, sent.text
    families = scrape(client)
    assert values(families["tidings_queue_depth"], "tenant_id") == {(str(acme.tenant_id),): 1.0}
    waited = values(families["tidings_queue_oldest_waiting_seconds"])[()]
    assert 0.0 <= waited < 60.0
    assert values(families["tidings_workers"]) == {(): 0.0}
    nonzero = {
        k: v for k, v in values(families["tidings_messages"], "tenant_id", "status").items() if v
    }
    assert nonzero == database_counts(runtime) == {(str(acme.tenant_id), "queued"): 1.0}


def test_metrics_report_an_unreadable_database_instead_of_failing(
    client: TestClient, runtime: Runtime
) -> None:
    runtime.engine.dispose()
    original = runtime.sessions.kw["bind"]
    runtime.sessions.configure(bind=_broken_engine())
    try:
        families = scrape(client)
    finally:
        runtime.sessions.configure(bind=original)
    assert values(families["tidings_database_up"]) == {(): 0.0}
    assert "tidings_messages" not in families


def _broken_engine() -> Engine:
    return create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:9/none", connect_args={"connect_timeout": 2}
    )
