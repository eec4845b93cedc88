"""End to end through a real SMTP server: the receiving server's replies at send time make the
campaign's figures. 250: delivered (SMTP gives no later word). 5xx at RCPT or DATA: a hard bounce,
the address suppressed only when the reply is about it (5.1.x). 4xx: a soft bounce while the
message waits for its retry, ended when a retry is accepted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from tests.acceptance.conftest import WorkerThread, api_setup, start_campaign, wait_until
from tests.conftest import TenantKeys
from tests.smtp_server import SmtpTestServer, reply

PEOPLE = [
    ("ann@example.edu", "Ann"),  # 451 at RCPT until the server recovers: soft, then delivered
    ("bob@example.edu", "Bob"),  # 550 5.1.1 at RCPT: hard, suppressed
    ("cho@example.edu", "Cho"),  # 554 5.7.1 after DATA: hard, not suppressed (about the content)
    ("dee@example.edu", "Dee"),  # 250: delivered
]


def test_smtp_replies_at_send_time_split_delivered_hard_and_soft(
    client: TestClient,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    smtp_server.fail("ann@example.edu", reply("451 4.2.0 mailbox busy, try later"))
    smtp_server.fail("bob@example.edu", reply("550 5.1.1 no such user"))
    smtp_server.fail("cho@example.edu", reply("554 5.7.1 message refused", at="END"))
    campaign_id = start_campaign(client, acme, api_setup(client, acme, PEOPLE))
    auth = acme.auth(acme.viewer)

    def figures() -> dict[str, Any]:
        answer = client.get(f"/v1/campaigns/{campaign_id}/stats", headers=auth)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def settled(delivered: int, soft: int) -> dict[str, Any] | None:
        body = figures()
        return body if (body["delivered"], body["bounced_soft"]) == (delivered, soft) else None

    worker()
    while_retrying = wait_until(
        lambda: settled(1, 1) if smtp_server.attempts("ann@example.edu") >= 2 else None
    )
    assert {
        k: while_retrying[k]
        for k in ("sent", "delivered", "awaiting_confirmation", "bounced_hard", "bounced_soft")
    } == {
        "sent": 1,
        "delivered": 1,
        "awaiting_confirmation": 0,
        "bounced_hard": 2,
        "bounced_soft": 1,
    }
    assert while_retrying["bounce_rate"] == 0.75  # 3 of the 4 that had an answer
    suppressed = client.get("/v1/suppressions", headers=auth).json()["items"]
    assert [(s["email"], s["reason"]) for s in suppressed] == [("bob@example.edu", "hard_bounce")]

    smtp_server.clear_faults()  # Ann's server recovers: her next retry is accepted
    after = wait_until(lambda: settled(2, 0))
    assert (after["sent"], after["bounced_hard"], after["bounce_rate"]) == (2, 2, 0.5)
