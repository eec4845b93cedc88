"""``TIDINGS_DATABASE_REPLICA_URL``: dashboards and campaign status read a real streaming replica.

Each test proves where a read went by making the replica stale on purpose: replay paused on the
replica (``pg_wal_replay_pause()``), a row changed on the primary. An answer that shows the old
value came from the replica, one that shows the new value from the primary.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.browser.dashboard_helpers import make_contacts, make_template, sign_in
from tests.conftest import TenantKeys, make_settings
from tests.pg_replica import ReplicatedCluster
from tidings.api.deps import (
    READ_PRIMARY_COOKIE,
    READ_PRIMARY_SECONDS,
    depends_on,
    get_read_session,
    get_session,
)
from tidings.app import ROUTERS, create_app
from tidings.config import Settings
from tidings.db.engine import make_engine
from tidings.db.models import Base
from tidings.db.replica import RETRY_SECONDS, ReadReplica
from tidings.runtime import Runtime, build_runtime


class MovableClock:
    """The application's clock, which a test moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture
def cluster(pg_replicated: ReplicatedCluster) -> Iterator[ReplicatedCluster]:
    """The replicated cluster, emptied, with the replica running and replaying when it ends."""
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    pg_replicated.execute(pg_replicated.primary_url, f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    pg_replicated.wait_caught_up()
    yield pg_replicated
    if not pg_replicated.replica.running():
        pg_replicated.replica.start()
    pg_replicated.resume_replay()


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def settings(tmp_path: Path, cluster: ReplicatedCluster) -> Settings:
    return make_settings(tmp_path, cluster.primary_url, database_replica_url=cluster.replica_url)


@pytest.fixture
def runtime(settings: Settings, clock: MovableClock) -> Iterator[Runtime]:
    rt = build_runtime(settings, migrate=False, clock=clock)
    yield rt
    rt.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime)) as test_client:
        yield test_client


def _campaign(client: TestClient, tenant: TenantKeys, name: str = "Spring") -> int:
    template_id = make_template(client, tenant.admin)
    contact_ids = make_contacts(client, tenant.admin, ["ann@example.com"])
    created = client.post(
        "/v1/campaigns",
        json={"name": name, "template_id": template_id, "contact_ids": contact_ids},
        headers=tenant.auth(tenant.admin),
    )
    assert created.status_code == 201, created.text
    campaign_id: int = created.json()["id"]
    return campaign_id


def _on_primary(cluster: ReplicatedCluster, sql: str) -> None:
    cluster.execute(cluster.primary_url, sql)


def _first_progress(client: TestClient, campaign_id: int) -> dict[str, object]:
    with client.stream("GET", f"/events/campaigns?ids={campaign_id}") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: [") and '"id"' in line:
                figures: dict[str, object] = json.loads(line.removeprefix("data: "))[0]
                return figures
    raise AssertionError("the stream sent no progress")


def test_only_reads_that_write_nothing_may_go_to_the_replica() -> None:
    """A route on the replica is a GET with no session on the primary (no read there precedes a
    write), so that a write can never be made from what a lagging replica said."""
    routes = [r for router in ROUTERS for r in router.routes if isinstance(r, APIRoute)]
    on_replica = [r for r in routes if depends_on(r.dependant, get_read_session)]
    assert {r.path for r in on_replica} >= {
        "/v1/campaigns",
        "/v1/campaigns/{campaign_id}",
        "/v1/campaigns/{campaign_id}/failed-recipients",
        "/",
        "/campaigns/{campaign_id}",
        "/queue",
    }
    assert [(r.path, r.methods) for r in on_replica if r.methods != {"GET"}] == []
    assert [r.path for r in on_replica if depends_on(r.dependant, get_session)] == []


def test_campaign_status_and_dashboard_pages_are_read_from_the_replica(
    cluster: ReplicatedCluster, client: TestClient, acme: TenantKeys
) -> None:
    campaign_id = _campaign(client, acme)
    cluster.wait_caught_up()
    sign_in(client, acme.viewer)
    cluster.pause_replay()
    _on_primary(cluster, f"UPDATE campaigns SET name = 'Summer' WHERE id = {campaign_id}")
    auth = acme.auth(acme.viewer)

    assert client.get(f"/v1/campaigns/{campaign_id}", headers=auth).json()["name"] == "Spring"
    assert [c["name"] for c in client.get("/v1/campaigns", headers=auth).json()["items"]] == [
        "Spring"
    ]
    for page in (f"/campaigns/{campaign_id}", "/"):
        html = client.get(page).text
        assert "Spring" in html and "Summer" not in html, page

    cluster.resume_replay()
    cluster.wait_caught_up()
    assert client.get(f"/v1/campaigns/{campaign_id}", headers=auth).json()["name"] == "Summer"
    for page in (f"/campaigns/{campaign_id}", "/"):
        assert "Summer" in client.get(page).text, page


def _new_contact(client: TestClient, tenant: TenantKeys) -> None:
    make_contacts(client, tenant.admin, ["zoe@example.com"])


def _new_suppression(client: TestClient, tenant: TenantKeys) -> None:
    answer = client.post(
        "/v1/suppressions", json={"email": "zoe@example.com"}, headers=tenant.auth(tenant.admin)
    )
    assert answer.status_code == 201, answer.text


@pytest.mark.parametrize(
    ("page", "write"),
    [("/contacts", _new_contact), ("/suppressions", _new_suppression)],
)
def test_people_pages_are_read_from_the_replica(
    cluster: ReplicatedCluster,
    client: TestClient,
    acme: TenantKeys,
    page: str,
    write: Callable[[TestClient, TenantKeys], None],
) -> None:
    sign_in(client, acme.viewer)
    cluster.pause_replay()
    write(client, acme)
    assert "zoe@example.com" not in client.get(page).text
    cluster.resume_replay()
    cluster.wait_caught_up()
    assert "zoe@example.com" in client.get(page).text


def test_the_queue_monitor_is_read_from_the_replica(
    cluster: ReplicatedCluster, client: TestClient, acme: TenantKeys
) -> None:
    sent = client.post(
        "/v1/messages",
        json={"to": "zoe@example.com", "subject": "Hi", "text": "Hello"},
        headers=acme.auth(acme.sender),
    )
    assert sent.status_code == 201, sent.text
    cluster.wait_caught_up()
    sign_in(client, acme.viewer)
    cluster.pause_replay()
    _on_primary(cluster, "UPDATE messages SET status = 'dead', last_error = '554 gone'")
    assert "554 gone" not in client.get("/queue").text
    cluster.resume_replay()
    cluster.wait_caught_up()
    assert "554 gone" in client.get("/queue").text


def test_failed_recipients_are_read_from_the_replica(
    cluster: ReplicatedCluster, client: TestClient, acme: TenantKeys
) -> None:
    campaign_id = _campaign(client, acme)
    started = client.post(f"/v1/campaigns/{campaign_id}/start", headers=acme.auth(acme.admin))
    assert started.status_code == 202, started.text
    cluster.wait_caught_up()
    cluster.pause_replay()
    _on_primary(
        cluster,
        "UPDATE messages SET status = 'failed', last_error = '550 no such user'"
        f" WHERE campaign_id = {campaign_id}",
    )
    path = f"/v1/campaigns/{campaign_id}/failed-recipients"
    assert client.get(path, headers=acme.auth(acme.viewer)).json()["items"] == []
    cluster.resume_replay()
    cluster.wait_caught_up()
    (failed,) = client.get(path, headers=acme.auth(acme.viewer)).json()["items"]
    assert failed["reason"] == "550 no such user"


def test_live_progress_is_read_from_the_replica_but_from_the_primary_after_a_write(
    cluster: ReplicatedCluster, client: TestClient, acme: TenantKeys, clock: MovableClock
) -> None:
    campaign_id = _campaign(client, acme)
    cluster.wait_caught_up()
    sign_in(client, acme.viewer)
    cluster.pause_replay()
    _on_primary(cluster, f"UPDATE campaigns SET status = 'paused' WHERE id = {campaign_id}")
    assert _first_progress(client, campaign_id)["status"] == "draft"
    # A browser that has just written reads the primary: the bar must not move back.
    until = int(clock.now().timestamp()) + READ_PRIMARY_SECONDS
    client.cookies.set(READ_PRIMARY_COOKIE, str(until))
    assert _first_progress(client, campaign_id)["status"] == "paused"


def test_a_revoked_key_ends_its_stream_however_far_the_replica_lags(
    cluster: ReplicatedCluster, client: TestClient, acme: TenantKeys
) -> None:
    campaign_id = _campaign(client, acme)
    sign_in(client, acme.viewer)
    keys = client.get("/v1/keys", headers=acme.auth(acme.admin)).json()["items"]
    key_id = next(k["id"] for k in keys if k["prefix"] == acme.viewer.split("_")[1])
    cluster.wait_caught_up()
    cluster.pause_replay()
    with client.stream("GET", f"/events/campaigns?ids={campaign_id}") as stream:
        lines = stream.iter_lines()
        while "event: progress" not in next(lines):
            pass
        revoked = client.delete(f"/v1/keys/{key_id}", headers=acme.auth(acme.admin))
        assert revoked.status_code == 200, revoked.text
        assert "event: signout" in "\n".join(lines)


def test_writes_and_the_reads_of_a_write_go_to_the_primary(
    cluster: ReplicatedCluster, client: TestClient, acme: TenantKeys
) -> None:
    cluster.pause_replay()
    auth = acme.auth(acme.admin)
    # Each of these reads what the one before wrote, which only the primary has.
    campaign_id = _campaign(client, acme, name="Autumn")
    started = client.post(f"/v1/campaigns/{campaign_id}/start", headers=auth)
    assert started.status_code == 202, started.text
    (contact,) = client.get("/v1/contacts", headers=auth).json()["items"]
    assert contact["email"] == "ann@example.com"

    count = "SELECT count(*) FROM messages WHERE campaign_id = " + str(campaign_id)
    assert cluster.execute(cluster.primary_url, count) == 1
    assert cluster.execute(cluster.replica_url, count) == 0
    # A status read lags with the replica, unless the client asks for a fresh answer.
    assert client.get(f"/v1/campaigns/{campaign_id}", headers=auth).status_code == 404
    fresh = client.get(
        f"/v1/campaigns/{campaign_id}", headers={**auth, "Cache-Control": "no-cache"}
    )
    assert fresh.status_code == 200 and fresh.json()["status"] == "running"


def test_after_a_dashboard_action_its_pages_read_the_primary_for_a_while(
    cluster: ReplicatedCluster, client: TestClient, acme: TenantKeys, clock: MovableClock
) -> None:
    token = sign_in(client, acme.sender)
    assert READ_PRIMARY_COOKIE not in client.cookies  # signing in writes nothing shown
    cluster.pause_replay()
    done = client.post("/lists", data={"csrf_token": token, "name": "Staff"})
    assert done.status_code == 200 and "The list was created." in done.text
    assert "Staff" in done.text  # the page the action redirected to: from the primary
    assert "Staff" in client.get("/lists").text

    marker = client.cookies[READ_PRIMARY_COOKIE]
    client.cookies.delete(READ_PRIMARY_COOKIE)
    assert "Staff" not in client.get("/lists").text  # the replica has not replayed it yet
    client.cookies.set(READ_PRIMARY_COOKIE, marker)
    assert "Staff" in client.get("/lists").text
    clock.offset = timedelta(seconds=READ_PRIMARY_SECONDS + 1)
    assert "Staff" not in client.get("/lists").text  # the while is over: the replica again


def test_an_action_that_changed_nothing_leaves_reads_on_the_replica(
    cluster: ReplicatedCluster, client: TestClient, acme: TenantKeys
) -> None:
    token = sign_in(client, acme.sender)
    refused = client.post("/lists", data={"csrf_token": token, "name": ""})
    assert refused.status_code == 422
    assert READ_PRIMARY_COOKIE not in client.cookies


def test_with_the_replica_down_reads_fall_back_to_the_primary(
    cluster: ReplicatedCluster,
    client: TestClient,
    acme: TenantKeys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    campaign_id = _campaign(client, acme)
    sign_in(client, acme.viewer)
    cluster.replica.stop()
    caplog.set_level(logging.WARNING, logger="tidings.db.replica")
    auth = acme.auth(acme.viewer)
    for _ in range(3):
        answer = client.get(f"/v1/campaigns/{campaign_id}", headers=auth)
        assert answer.status_code == 200 and answer.json()["name"] == "Spring"
    for page in (f"/campaigns/{campaign_id}", "/", "/queue", "/lists", "/contacts"):
        answer = client.get(page)
        assert answer.status_code == 200, page
    assert "Spring" in client.get(f"/campaigns/{campaign_id}").text
    assert _first_progress(client, campaign_id)["status"] == "draft"
    metrics = client.get("/metrics").text
    assert "tidings_database_replica_up 0.0" in metrics
    assert "tidings_database_up 1.0" in metrics
    warnings = [r for r in caplog.records if r.name == "tidings.db.replica"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once, not once per read
    assert "read replica cannot be reached" in warnings[0].getMessage()


def test_a_replica_that_is_back_serves_reads_again_after_the_pause(
    cluster: ReplicatedCluster, runtime: Runtime
) -> None:
    moment = [1000.0]
    engine = make_engine(cluster.replica_url, connect_args={"connect_timeout": 2})
    replica = ReadReplica(engine, primary=runtime.sessions, monotonic=lambda: moment[0])

    def standby(read: ReadReplica) -> bool:
        with read.session() as session:
            return bool(session.execute(text("SELECT pg_is_in_recovery()")).scalar())

    try:
        assert standby(replica)
        cluster.replica.stop()
        assert not standby(replica)  # the primary answered
        cluster.replica.start()
        moment[0] += RETRY_SECONDS - 1
        assert not standby(replica)  # not tried again yet
        moment[0] += 2
        assert standby(replica)
    finally:
        replica.close()


def test_metrics_show_the_replica_lag(
    cluster: ReplicatedCluster, client: TestClient, acme: TenantKeys
) -> None:
    def lag() -> float:
        found = re.search(
            r"^tidings_database_replica_lag_seconds (\S+)$", client.get("/metrics").text, re.M
        )
        assert found, "no lag gauge"
        return float(found.group(1))

    def caught_up() -> bool:
        # A record of the server's own (a checkpoint's) may be in flight for an instant.
        deadline = time.monotonic() + 5
        while lag() != 0.0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    cluster.wait_caught_up()
    assert caught_up()
    cluster.pause_replay()
    _campaign(client, acme)
    time.sleep(0.2)
    assert lag() > 0.1
    cluster.resume_replay()
    cluster.wait_caught_up()
    assert caught_up()


def test_a_replica_cut_off_from_the_primary_shows_a_growing_lag(
    cluster: ReplicatedCluster, runtime: Runtime
) -> None:
    assert runtime.replica is not None
    _on_primary(cluster, "CREATE TEMPORARY TABLE t AS SELECT 1")  # a commit to replay
    cluster.wait_caught_up()
    cluster.primary.stop()
    try:
        time.sleep(0.5)
        lag = runtime.replica.lag_seconds()
        assert lag is not None and lag > 0.4
    finally:
        cluster.primary.start()


def test_queue_gauges_come_from_the_primary(
    cluster: ReplicatedCluster, client: TestClient, acme: TenantKeys
) -> None:
    cluster.pause_replay()
    sent = client.post(
        "/v1/messages",
        json={"to": "zed@example.com", "subject": "Hi", "text": "Hello"},
        headers=acme.auth(acme.sender),
    )
    assert sent.status_code == 201, sent.text
    metrics = client.get("/metrics").text
    assert f'tidings_messages{{status="queued",tenant_id="{acme.tenant_id}"}} 1.0' in metrics


def test_dashboard_forms_that_precede_a_write_read_the_primary(
    cluster: ReplicatedCluster, client: TestClient, acme: TenantKeys
) -> None:
    sign_in(client, acme.sender)
    cluster.pause_replay()
    make_template(client, acme.admin, name="Fresh template")
    form = client.get("/campaigns/new")
    assert form.status_code == 200 and "Fresh template" in form.text
