"""End to end: a campaign goes out through a real SMTP server, a bounce and a complaint come back
through the bounce mailbox's SMTP receiver, the tenant's webhook endpoint hears of all of it, and
the next campaign skips the two addresses."""

from __future__ import annotations

import asyncio
import json
import re
import smtplib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.acceptance.conftest import FAST, WorkerThread, api_setup, start_campaign, wait_until
from tests.bounce_samples import postfix_dsn, yahoo_arf
from tests.conftest import TenantKeys, make_settings
from tests.live_server import LiveServer
from tests.smtp_server import SmtpTestServer
from tests.webhook_receiver import WebhookReceiver
from tidings.bounces.mailbox import start_smtp_receiver
from tidings.config import Settings
from tidings.delivery.webhook_dispatch import run_webhook_dispatcher
from tidings.runtime import Runtime

PEOPLE = [("ann@example.edu", "Ann"), ("bob@example.edu", "Bob"), ("cho@example.edu", "Cho")]


@pytest.fixture
def settings(tmp_path: Path, db_url: str, smtp_server: SmtpTestServer) -> Settings:
    return make_settings(
        tmp_path, db_url, transport_url=smtp_server.url, webhook_allow_private=True, **FAST
    )


@pytest.fixture
def background(runtime: Runtime) -> Iterator[int]:
    """The webhook dispatcher and the bounce mailbox's SMTP receiver on one loop in a thread;
    yields the receiver's port."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    def main() -> None:
        async def run() -> None:
            stop = asyncio.Event()
            server = await start_smtp_receiver(runtime, "127.0.0.1", 0)
            state.update(stop=stop, loop=asyncio.get_running_loop())
            state["port"] = server.sockets[0].getsockname()[1]
            ready.set()
            await run_webhook_dispatcher(runtime, stop)
            server.close()
            await server.wait_closed()

        asyncio.run(run())

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield int(state["port"])
    state["loop"].call_soon_threadsafe(state["stop"].set)
    thread.join(20)


def report(port: int, raw: bytes) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        client.mail("<>")
        client.rcpt("bounces@tidings.test")
        code, reply = client.data(re.sub(rb"\r?\n", b"\r\n", raw))
    assert code == 250, reply
    return reply.decode()


def test_bounces_and_complaints_come_back_reach_the_webhook_and_stop_the_next_campaign(
    client: TestClient,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
    background: int,
) -> None:
    hooks = WebhookReceiver()
    with LiveServer(hooks.app) as endpoint_server:
        registered = client.post(
            "/v1/webhooks",
            json={
                "url": f"{endpoint_server.url}/tidings",
                "event_types": ["message.sent", "message.bounced", "message.complained"],
            },
            headers=acme.auth(acme.admin),
        )
        assert registered.status_code == 201, registered.text
        ids = api_setup(client, acme, PEOPLE)
        first = start_campaign(client, acme, ids)
        worker()
        received = {m.rcpt_tos[0]: m.message for m in smtp_server.wait_for(3, timeout=20)}
        auth = acme.auth(acme.viewer)
        wait_until(
            lambda: (
                client.get(f"/v1/campaigns/{first}", headers=auth).json()["status"] == "completed"
            )
        )

        ann, bob = received["ann@example.edu"], received["bob@example.edu"]
        assert "hard bounce recorded" in report(
            background, postfix_dsn(recipient="ann@example.edu", message_id=ann["Message-ID"])
        )
        assert "complaint recorded" in report(
            background, yahoo_arf(recipient="bob@example.edu", message_id=bob["Message-ID"])
        )

        def heard() -> list[tuple[str, str | None]] | None:
            seen = sorted(
                (json.loads(r.body)["type"], json.loads(r.body)["data"]["email"])
                for r in hooks.requests
            )
            return seen if len(seen) >= 5 else None

        assert wait_until(heard) == [
            ("message.bounced", "ann@example.edu"),
            ("message.complained", "bob@example.edu"),
            ("message.sent", "ann@example.edu"),
            ("message.sent", "bob@example.edu"),
            ("message.sent", "cho@example.edu"),
        ]

    suppressed = client.get("/v1/suppressions", headers=auth).json()["items"]
    assert sorted((s["email"], s["reason"]) for s in suppressed) == [
        ("ann@example.edu", "hard_bounce"),
        ("bob@example.edu", "complaint"),
    ]
    after = client.get(f"/v1/campaigns/{first}", headers=auth).json()
    assert (after["sent"], after["failed"]) == (2, 1)  # Ann's message bounced after it was sent

    second = start_campaign(client, acme, ids, name="Second reminder")
    wait_until(
        lambda: client.get(f"/v1/campaigns/{second}", headers=auth).json()["status"] == "completed"
    )
    done = client.get(f"/v1/campaigns/{second}", headers=auth).json()
    assert (done["sent"], done["suppressed"]) == (1, 2)
    assert [m.rcpt_tos[0] for m in smtp_server.messages[3:]] == ["cho@example.edu"]
