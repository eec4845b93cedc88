"""End to end: API -> queue -> worker -> a real SMTP server, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from tests.acceptance.conftest import (
    WorkerProcess,
    WorkerThread,
    api_setup,
    start_campaign,
    wait_for_completion,
    wait_until,
)
from tests.conftest import TenantKeys
from tests.smtp_server import NO_SUCH_USER, TRY_LATER, SmtpTestServer, drop, reply
from tidings.runtime import Runtime

PEOPLE = [
    ("ann@example.edu", "Ann"),
    ("bob@example.edu", "Bob"),
    ("cho@example.edu", "Cho"),
    ("dee@example.edu", "Dee"),
]


def campaign(client: TestClient, tenant: TenantKeys, campaign_id: int) -> dict[str, Any]:
    answer = client.get(f"/v1/campaigns/{campaign_id}", headers=tenant.auth(tenant.viewer))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_a_campaign_reaches_every_recipient_personalised(
    client: TestClient,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    ids = api_setup(client, acme, PEOPLE)
    campaign_id = start_campaign(client, acme, ids)
    worker()
    received = smtp_server.wait_for(len(PEOPLE), timeout=20)
    done = wait_for_completion(client, acme, campaign_id)
    assert (done["sent"], done["failed"], done["pending"], done["progress_percentage"]) == (
        4,
        0,
        0,
        100,
    )
    assert sorted(r for m in received for r in m.rcpt_tos) == sorted(e for e, _ in PEOPLE)
    for message in received:
        mail = message.message
        first_name = dict(PEOPLE)[message.rcpt_tos[0]]
        assert mail["Subject"] == f"Reminder for {first_name}"
        assert mail["Message-ID"] and mail["Date"] and mail["From"]
        assert mail["To"].addresses[0].addr_spec == message.rcpt_tos[0]
        assert mail["List-Unsubscribe"].startswith("<http://tidings.test/u/")
        assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        html = mail.get_body(("html",)).get_content()
        text = mail.get_body(("plain",)).get_content()
        assert f"Dear {first_name}, Please submit your grades. Deadline: Friday." in html
        assert f"Dear {first_name}" in text and "Friday" in text
    assert len({m.message["Message-ID"] for m in received}) == len(PEOPLE)


def test_transient_faults_are_retried_and_permanent_ones_fail_at_once(
    client: TestClient,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    smtp_server.fail("ann@example.edu", reply(TRY_LATER), times=2)
    smtp_server.fail("bob@example.edu", reply(NO_SUCH_USER))
    smtp_server.fail("cho@example.edu", drop(at="DATA"), times=1)
    ids = api_setup(client, acme, PEOPLE)
    campaign_id = start_campaign(client, acme, ids)
    worker()
    done = wait_for_completion(client, acme, campaign_id)
    assert (done["sent"], done["failed"], done["pending"]) == (3, 1, 0)
    assert smtp_server.attempts("ann@example.edu") == 3
    assert smtp_server.attempts("bob@example.edu") == 1  # a permanent failure is never retried
    assert {r for m in smtp_server.messages for r in m.rcpt_tos} == {
        "ann@example.edu",
        "cho@example.edu",
        "dee@example.edu",
    }
    failed = client.get(
        f"/v1/campaigns/{campaign_id}/failed-recipients", headers=acme.auth(acme.viewer)
    ).json()
    (only,) = failed["items"]
    assert only["email"] == "bob@example.edu" and "5.1.1" in only["reason"]


#: Retry timing for the backoff test: delays of 0.5, 1 and 2 s (each jittered down to half).
BACKOFF_BASE = 0.5  # seconds
BACKOFF_MAX = 8.0  # seconds, out of reach here: every delay doubles
#: How late a retry may come after its delay ran out: the poll interval (0.2 s), a claim and a
#: connection, on a loaded machine.
BACKOFF_SLACK = 1.5  # seconds


def test_retries_reach_the_server_spaced_by_the_doubling_jittered_backoff(
    client: TestClient,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    """Attempt k + 1 comes no sooner than half the k-th nominal delay (base * 2^(k-1)) after attempt
    k, and not much later than the whole delay: the retry's ``not_before`` is honoured."""
    smtp_server.fail("late@example.edu", reply(TRY_LATER), times=3)
    worker_process(
        concurrency=4,
        TIDINGS_RETRY_BASE_SECONDS=str(BACKOFF_BASE),
        TIDINGS_RETRY_MAX_SECONDS=str(BACKOFF_MAX),
    )
    answer = client.post(
        "/v1/messages",
        json={"to": "late@example.edu", "subject": "Hi", "text": "x"},
        headers=acme.auth(acme.sender),
    )
    assert answer.status_code == 201, answer.text
    smtp_server.wait_for(1, timeout=30)
    times = smtp_server.attempt_times("late@example.edu")
    assert len(times) == 4, times
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for attempt, gap in enumerate(gaps, start=1):
        nominal = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1))
        assert nominal / 2 <= gap <= nominal + BACKOFF_SLACK, (attempt, gaps)


def test_a_transactional_message_is_sent_with_its_data(
    client: TestClient,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    worker()
    answer = client.post(
        "/v1/messages",
        json={
            "to": "zed@example.edu",
            "subject": "Your code: {{ code }}",
            "text": "Code {{ code }}",
            "data": {"code": "4711"},
        },
        headers={**acme.auth(acme.sender), "Idempotency-Key": "login-1"},
    )
    assert answer.status_code == 201, answer.text
    (received,) = smtp_server.wait_for(1, timeout=10)
    assert received.message["Subject"] == "Your code: 4711"
    assert "List-Unsubscribe" not in received.message  # transactional mail is not a mailing list
    message_id = answer.json()["id"]
    detail = wait_until(
        lambda: (
            (b := client.get(f"/v1/messages/{message_id}", headers=acme.auth(acme.viewer)).json())[
                "status"
            ]
            == "sent"
            and b
        )
    )
    assert detail["attempts"] == 1
    assert [e["type"] for e in detail["events"]][-1] == "sent"


def test_pause_holds_the_rest_and_resume_sends_it_once(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    people = [(f"p{i}@example.edu", f"P{i}") for i in range(12)]
    ids = api_setup(client, acme, people)
    admin = acme.auth(acme.admin)
    assert (
        client.put(
            "/v1/throttle", json={"enabled": True, "per_second": 4}, headers=admin
        ).status_code
        == 200
    )
    campaign_id = start_campaign(client, acme, ids)
    worker()
    smtp_server.wait_for(2, timeout=10)
    assert client.post(f"/v1/campaigns/{campaign_id}/pause", headers=admin).status_code == 200
    time.sleep(1.5)  # anything claimed before the pause finishes; nothing new starts
    held = len(smtp_server.messages)
    time.sleep(1.0)
    assert len(smtp_server.messages) == held < 12
    assert campaign(client, acme, campaign_id)["status"] == "paused"
    assert client.post(f"/v1/campaigns/{campaign_id}/resume", headers=admin).status_code == 200
    done = wait_for_completion(client, acme, campaign_id)
    assert done["sent"] == 12
    assert sorted(r for m in smtp_server.messages for r in m.rcpt_tos) == sorted(
        e for e, _ in people
    )
