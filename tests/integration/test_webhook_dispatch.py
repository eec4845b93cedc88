"""Event webhooks to the tenant: events become signed deliveries to a real local HTTP receiver,
retried after failures, filtered by event type, and refused for private targets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.bounce_samples import yahoo_arf
from tests.conftest import TenantKeys, make_settings
from tests.integration.sent_mail import SentMail, seed_sent_mail, sent_link
from tests.live_server import LiveServer
from tests.webhook_receiver import DripEndpoint, WebhookReceiver
from tidings.bounces.mailbox import process_report
from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import Event, WebhookDelivery, WebhookEndpoint
from tidings.delivery.webhook_dispatch import (
    ATTEMPT_SECONDS,
    WebhookDispatcher,
    run_webhook_dispatcher,
)
from tidings.queue.webhook_outbox import GapWatch, route_events
from tidings.runtime import Runtime
from tidings.webhook_targets import Target

FAST_RETRIES = (0.05, 0.05, 0.05)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url, webhook_allow_private=True, poll_seconds=0.05)


@pytest.fixture
def receiver() -> Iterator[tuple[WebhookReceiver, str]]:
    hooks = WebhookReceiver()
    with LiveServer(hooks.app) as server:
        yield hooks, f"{server.url}/hooks"


def register(client: TestClient, tenant: TenantKeys, url: str, *types: str) -> Any:
    answer = client.post(
        "/v1/webhooks",
        json={"url": url, "event_types": list(types)},
        headers=tenant.auth(tenant.admin),
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


def add_event(runtime: Runtime, tenant_id: int, kind: str, mail: SentMail | None = None) -> int:
    with transaction(runtime.sessions) as session:
        event = Event(
            tenant_id=tenant_id,
            message_id=mail.id if mail else None,
            campaign_id=mail.campaign_id if mail else None,
            type=kind,
            detail=f"{kind} detail",
            created_at=datetime.now(UTC),
        )
        session.add(event)
        session.flush()
        return event.id


def dispatch(runtime: Runtime, **options: Any) -> WebhookDispatcher:
    dispatcher = WebhookDispatcher(runtime=runtime, retry_delays=FAST_RETRIES, **options)
    asyncio.run(dispatcher.run_once())
    return dispatcher


def dispatch_until(runtime: Runtime, done: Any, *, timeout: float = 20, **options: Any) -> None:
    dispatcher = WebhookDispatcher(runtime=runtime, retry_delays=FAST_RETRIES, **options)
    deadline = time.monotonic() + timeout

    async def loop() -> None:
        while not done():
            assert time.monotonic() < deadline, "not done in time"
            if not await dispatcher.run_once():
                await asyncio.sleep(0.05)

    asyncio.run(loop())


def expected_signature(secret: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def test_a_complaint_reaches_the_endpoint_signed_per_standard_webhooks(
    client: TestClient, runtime: Runtime, acme: TenantKeys, receiver: tuple[WebhookReceiver, str]
) -> None:
    hooks, url = receiver
    endpoint = register(client, acme, url, "message.complained")
    mail = seed_sent_mail(runtime, acme.tenant_id, "carol@yahoo.com")
    process_report(runtime, yahoo_arf(recipient=mail.email, message_id=mail.message_id_header))
    dispatch(runtime)
    (request,) = hooks.requests
    headers = request.headers
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"].startswith("msg_")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert headers["webhook-signature"] == expected_signature(
        endpoint["secret"], headers["webhook-id"], headers["webhook-timestamp"], request.body
    )
    payload = json.loads(request.body)
    assert payload["type"] == "message.complained"
    assert payload["timestamp"].endswith("Z") and "T" in payload["timestamp"]
    assert payload["data"]["message_id"] == mail.id
    assert payload["data"]["campaign_id"] == mail.campaign_id
    assert payload["data"]["contact_id"] == mail.contact_id
    assert payload["data"]["email"] == "carol@yahoo.com"
    assert "abuse report" in payload["data"]["detail"]
    shown = client.get(f"/v1/webhooks/{endpoint['id']}", headers=acme.auth(acme.viewer)).json()
    assert shown["last_status"] == "200 OK"
    (delivery,) = shown["recent_deliveries"]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 1
    assert delivery["event_type"] == "message.complained" and delivery["payload"] == payload
    assert delivery["next_attempt_at"] is None and delivery["delivered_at"] is not None


def test_an_unsubscribe_names_the_contact_in_its_webhook(
    client: TestClient, runtime: Runtime, acme: TenantKeys, receiver: tuple[WebhookReceiver, str]
) -> None:
    """``contact.unsubscribed`` has no message: the contact comes from the event itself."""
    hooks, url = receiver
    register(client, acme, url, "contact.unsubscribed")
    mail = seed_sent_mail(runtime, acme.tenant_id, "dora@example.com")
    link = sent_link(runtime, acme.tenant_id, contact_id=mail.contact_id)
    answer = client.post(f"/u/{link}", data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200, answer.text
    dispatch(runtime)
    (request,) = hooks.requests
    payload = json.loads(request.body)
    assert payload["type"] == "contact.unsubscribed"
    assert payload["data"]["contact_id"] == mail.contact_id
    assert payload["data"]["email"] == "dora@example.com"
    assert payload["data"]["message_id"] is None


def test_a_failing_endpoint_is_retried_until_it_answers_2xx(
    client: TestClient, runtime: Runtime, acme: TenantKeys, receiver: tuple[WebhookReceiver, str]
) -> None:
    hooks, url = receiver
    endpoint = register(client, acme, url, "message.sent")
    hooks.answer(500, 503)
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    add_event(runtime, acme.tenant_id, "sent", mail)
    dispatch(runtime)
    path = f"/v1/webhooks/{endpoint['id']}/deliveries"
    (pending,) = client.get(path, headers=acme.auth(acme.viewer)).json()["items"]
    assert pending["status"] == "pending" and pending["attempts"] == 1
    assert pending["last_status"] == "500 Internal Server Error"
    assert pending["next_attempt_at"] is not None
    dispatch_until(
        runtime, lambda: len(hooks.requests) == 3 and _statuses(runtime) == ["delivered"]
    )
    assert len({r.headers["webhook-id"] for r in hooks.requests}) == 1  # one message, three tries
    (delivered,) = client.get(path, headers=acme.auth(acme.viewer)).json()["items"]
    assert delivered["status"] == "delivered" and delivered["attempts"] == 3
    assert delivered["last_status"] == "200 OK"
    filtered = client.get(f"{path}?status=pending", headers=acme.auth(acme.viewer)).json()
    assert filtered["items"] == []


def _statuses(runtime: Runtime) -> list[str]:
    with transaction(runtime.sessions) as session:
        return list(session.scalars(select(WebhookDelivery.status).order_by(WebhookDelivery.id)))


def test_a_delivery_that_keeps_failing_ends_failed_with_its_last_status(
    client: TestClient, runtime: Runtime, acme: TenantKeys, receiver: tuple[WebhookReceiver, str]
) -> None:
    hooks, url = receiver
    endpoint = register(client, acme, url, "campaign.completed")
    hooks.answer(*[500] * 10)
    add_event(runtime, acme.tenant_id, "campaign_completed")
    dispatch_until(runtime, lambda: _statuses(runtime) == ["failed"])
    assert len(hooks.requests) == len(FAST_RETRIES) + 1
    shown = client.get(f"/v1/webhooks/{endpoint['id']}", headers=acme.auth(acme.viewer)).json()
    assert shown["last_status"] == "500 Internal Server Error"
    assert shown["recent_deliveries"][0]["status"] == "failed"
    assert shown["recent_deliveries"][0]["attempts"] == len(FAST_RETRIES) + 1


def test_endpoints_get_only_the_event_types_they_chose_of_their_own_tenant(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    globex: TenantKeys,
    receiver: tuple[WebhookReceiver, str],
) -> None:
    hooks, url = receiver
    early = seed_sent_mail(runtime, acme.tenant_id, "early@example.com")
    add_event(runtime, acme.tenant_id, "sent", early)  # before any endpoint: not delivered
    register(client, acme, f"{url}/sent", "message.sent", "message.failed")
    register(client, acme, f"{url}/paused", "campaign.paused")
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com")
    other = seed_sent_mail(runtime, globex.tenant_id, "ada@example.com")
    add_event(runtime, acme.tenant_id, "sent", mail)
    add_event(runtime, acme.tenant_id, "dead", mail)
    add_event(runtime, acme.tenant_id, "deferred", mail)  # not a webhook event type
    add_event(runtime, acme.tenant_id, "campaign_paused")
    add_event(runtime, globex.tenant_id, "sent", other)  # another tenant's
    dispatch(runtime)
    received = sorted(
        (r.path, json.loads(r.body)["type"], json.loads(r.body)["data"]["message_id"])
        for r in hooks.requests
    )
    assert received == [
        ("/hooks/paused", "campaign.paused", None),
        ("/hooks/sent", "message.failed", mail.id),
        ("/hooks/sent", "message.sent", mail.id),
    ]


def test_routing_twice_creates_no_second_delivery(
    client: TestClient, runtime: Runtime, acme: TenantKeys, receiver: tuple[WebhookReceiver, str]
) -> None:
    hooks, url = receiver
    register(client, acme, url, "message.sent")
    add_event(
        runtime, acme.tenant_id, "sent", seed_sent_mail(runtime, acme.tenant_id, "a@example.com")
    )
    with transaction(runtime.sessions) as session:
        assert route_events(session=session, now=datetime.now(UTC)) == 1
        assert route_events(session=session, now=datetime.now(UTC)) == 0
    dispatch(runtime)
    dispatch(runtime)
    assert len(hooks.requests) == 1 and _statuses(runtime) == ["delivered"]


def test_two_dispatchers_at_once_deliver_each_event_once(
    client: TestClient, runtime: Runtime, acme: TenantKeys, receiver: tuple[WebhookReceiver, str]
) -> None:
    hooks, url = receiver
    register(client, acme, url, "message.sent")
    for n in range(30):
        mail = seed_sent_mail(runtime, acme.tenant_id, f"p{n}@example.com", campaign=False)
        add_event(runtime, acme.tenant_id, "sent", mail)
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        dispatch(runtime, concurrency=7)
        dispatch_until(runtime, lambda: set(_statuses(runtime)) == {"delivered"}, concurrency=7)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    ids = [r.headers["webhook-id"] for r in hooks.requests]
    assert len(ids) == 30 and len(set(ids)) == 30


# -- the SSRF guard at delivery time --------------------------------------------------------------


def _add_endpoint(
    runtime: Runtime, tenant_id: int, url: str, secret: str = "whsec_" + "A" * 32
) -> None:
    """An endpoint written past the API's check, as if its DNS answer changed since then."""
    with transaction(runtime.sessions) as session:
        session.add(
            WebhookEndpoint(
                tenant_id=tenant_id,
                url=url,
                event_types=["message.sent"],
                secret=secret,
                enabled=True,
                created_at=datetime(2020, 1, 1, tzinfo=UTC),
            )
        )


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "10.0.0.7", "169.254.169.254", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0"],
)
def test_a_private_target_is_refused_before_any_request(
    runtime: Runtime, acme: TenantKeys, receiver: tuple[WebhookReceiver, str], host: str
) -> None:
    hooks, url = receiver
    runtime.settings = runtime.settings.model_copy(update={"webhook_allow_private": False})
    port = url.split(":")[2].split("/")[0]
    _add_endpoint(runtime, acme.tenant_id, f"http://{host}:{port}/hooks")
    add_event(runtime, acme.tenant_id, "sent")
    started = time.monotonic()
    dispatch(runtime, timeout=5)
    assert time.monotonic() - started < 4  # refused, not timed out
    assert hooks.requests == []
    with transaction(runtime.sessions) as session:
        delivery = session.scalars(select(WebhookDelivery)).one()
        assert delivery.status == "pending"  # the address may become public again
        assert delivery.last_status is not None
        assert delivery.last_status.startswith("refused:")
        assert "public addresses" in delivery.last_status


def _resolver(address: str) -> Any:
    async def resolve(_target: Target) -> list[Any]:
        return [ipaddress.ip_address(address)]

    return resolve


def test_a_name_that_now_resolves_to_a_private_address_is_refused(
    client: TestClient, runtime: Runtime, acme: TenantKeys, receiver: tuple[WebhookReceiver, str]
) -> None:
    """DNS rebinding: public at registration, loopback at delivery."""
    hooks, url = receiver
    port = url.split(":")[2].split("/")[0]
    _add_endpoint(runtime, acme.tenant_id, f"http://hooks.example.com:{port}/hooks")
    runtime.settings = runtime.settings.model_copy(update={"webhook_allow_private": False})
    add_event(runtime, acme.tenant_id, "sent")
    dispatch(runtime, resolver=_resolver("127.0.0.1"))
    assert hooks.requests == []
    last_status = _last_status(runtime) or ""
    assert "not allowed" in last_status and "127.0.0.1" not in last_status  # the tenant reads it


def test_the_request_goes_to_the_checked_address_with_the_name_as_host(
    runtime: Runtime, acme: TenantKeys, receiver: tuple[WebhookReceiver, str]
) -> None:
    hooks, url = receiver
    port = url.split(":")[2].split("/")[0]
    _add_endpoint(runtime, acme.tenant_id, f"http://hooks.example.com:{port}/hooks")
    add_event(runtime, acme.tenant_id, "sent")
    dispatch(runtime, resolver=_resolver("127.0.0.1"))  # allowed here: tests allow loopback
    (request,) = hooks.requests
    assert request.headers["host"] == f"hooks.example.com:{port}"


def _last_status(runtime: Runtime) -> str | None:
    with transaction(runtime.sessions) as session:
        return session.scalars(select(WebhookDelivery.last_status)).one()


def test_redirects_are_not_followed(
    client: TestClient, runtime: Runtime, acme: TenantKeys, receiver: tuple[WebhookReceiver, str]
) -> None:
    hooks, url = receiver
    register(client, acme, url, "message.sent")
    hooks.answer(302)
    add_event(runtime, acme.tenant_id, "sent")
    dispatch(runtime)
    assert [r.path for r in hooks.requests] == ["/hooks"]
    assert _last_status(runtime) == "302 Found" and _statuses(runtime) == ["pending"]


def test_a_slow_endpoint_times_out_and_is_retried(
    client: TestClient, runtime: Runtime, acme: TenantKeys, receiver: tuple[WebhookReceiver, str]
) -> None:
    hooks, url = receiver
    register(client, acme, url, "message.sent")
    hooks.delay = 2.0
    add_event(runtime, acme.tenant_id, "sent")
    dispatch(runtime, timeout=0.3)
    assert _last_status(runtime) == "timeout after 0.3 s" and _statuses(runtime) == ["pending"]


# -- a slow endpoint holds only its own deliveries --------------------------------------------------


async def until(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, f"{what}: not within {within} s"
        await asyncio.sleep(0.02)


async def stop_all(stop: asyncio.Event, tasks: list[asyncio.Task[None]], within: float) -> bool:
    """Stops the dispatchers; False (after cancelling them) when one did not end in time, so
    that the test's own failure, if any, is the one reported."""
    stop.set()
    _, pending = await asyncio.wait(tasks, timeout=within)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return not pending


def _delivery_of(runtime: Runtime, endpoint_id: int) -> WebhookDelivery:
    with transaction(runtime.sessions) as session:
        delivery = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
        ).one()
        session.expunge(delivery)
        return delivery


SLOW_BOUND = 6.0  # seconds: the attempt bound of the slow-drip tests
DRIP_SECONDS = 2.0  # a header byte this often: each read is quick, the request never ends


def test_a_slow_drip_endpoint_delays_only_its_own_tenants_webhooks(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    globex: TenantKeys,
    receiver: tuple[WebhookReceiver, str],
) -> None:
    """Acme's endpoint sends one header byte every 2 s, so no read ever times out. Globex's
    webhook, due while acme's attempt is under way, still goes out at once; acme's attempt is
    cut at the bound, recorded as a timeout and retried after the policy's first delay."""
    hooks, url = receiver
    # The first retry comes late enough for the test to read the first attempt's record before it
    # on a loaded machine (a claim counts the next attempt at once).
    retry_delays = (3.0, 60.0)
    with DripEndpoint(interval=DRIP_SECONDS) as drip:
        slow = register(client, acme, f"{drip.url}/hooks", "message.sent")
        fast = register(client, globex, url, "message.sent")
        dispatcher = WebhookDispatcher(
            runtime=runtime, retry_delays=retry_delays, timeout=SLOW_BOUND
        )
        seen: dict[str, Any] = {}

        async def main() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(dispatcher.run(stop))
            stopped = False
            try:
                await asyncio.to_thread(add_event, runtime, acme.tenant_id, "sent")
                await until(lambda: drip.arrivals, 10, "acme's attempt begins")
                await asyncio.to_thread(add_event, runtime, globex.tenant_id, "sent")
                due = time.monotonic()
                await until(lambda: hooks.requests, 2 * SLOW_BOUND, "globex's webhook")
                seen["globex_after"] = time.monotonic() - due
                await until(
                    lambda: _delivery_of(runtime, fast["id"]).status == "delivered",
                    2 * SLOW_BOUND,
                    "globex's delivery recorded",
                )
                seen["globex_recorded_after"] = time.monotonic() - due
                seen["acme_cut_then"] = bool(drip.closed)
                await until(lambda: drip.closed, 2 * SLOW_BOUND, "acme's attempt cut")
                await until(
                    lambda: _delivery_of(runtime, slow["id"]).last_status,
                    10,
                    "acme's timeout recorded",
                )
                seen["acme_first"] = _delivery_of(runtime, slow["id"])
                await until(lambda: len(drip.arrivals) >= 2, 10, "acme's retry")
            finally:
                stopped = await stop_all(stop, [task], 2 * SLOW_BOUND)
            assert stopped, "the dispatcher did not stop"

        asyncio.run(main())
        arrivals, closed = drip.arrivals, drip.closed
    # Globex's webhook went out while acme's attempt was still dripping, not after it.
    assert seen["globex_after"] < 3.0, seen
    assert seen["globex_recorded_after"] < 3.0, seen
    assert seen["acme_cut_then"] is False
    # Acme's attempt was cut at the bound as a whole ...
    assert SLOW_BOUND - 0.5 <= closed[0] - arrivals[0] <= SLOW_BOUND + 3.0, (arrivals, closed)
    first: WebhookDelivery = seen["acme_first"]
    assert first.last_status == f"timeout after {SLOW_BOUND:g} s"
    assert first.status == "pending" and first.attempts == 1
    # ... and retried after the policy's first delay, once. Counted from the first request, not
    # from ``closed``: the endpoint only notices the cut at its next drip write, up to two
    # intervals late (under a loaded suite it once saw the retry 1.03 s after "the close").
    waited = arrivals[1] - arrivals[0] - SLOW_BOUND
    assert retry_delays[0] - 0.7 <= waited <= retry_delays[0] + 4.0, (arrivals, closed)
    assert len(arrivals) == 2


@pytest.mark.parametrize(
    ("endpoints", "events", "shares"),
    [
        (1, 4, {"concurrency": 4, "per_endpoint": 2, "per_tenant": 10}),  # endpoint's share
        (3, 1, {"concurrency": 3, "per_endpoint": 2, "per_tenant": 2}),  # tenant's share
    ],
    ids=["per-endpoint", "per-tenant"],
)
def test_slow_endpoints_hold_no_more_than_their_share_of_the_dispatcher(
    client: TestClient,
    runtime: Runtime,
    acme: TenantKeys,
    globex: TenantKeys,
    receiver: tuple[WebhookReceiver, str],
    endpoints: int,
    events: int,
    shares: dict[str, int],
) -> None:
    """Acme's slow deliveries would fill every slot of this small dispatcher; its shares keep
    one free, and globex's webhook takes it at once."""
    hooks, url = receiver
    bound = 5.0
    with contextlib.ExitStack() as stack:
        drips = [stack.enter_context(DripEndpoint(interval=1.0)) for _ in range(endpoints)]
        for drip in drips:
            register(client, acme, f"{drip.url}/hooks", "message.sent")
        register(client, globex, url, "message.sent")
        dispatcher = WebhookDispatcher(
            runtime=runtime, retry_delays=(60.0,), timeout=bound, **shares
        )
        in_flight: dict[str, Any] = {}

        def acme_in_flight() -> list[int]:
            return [len(d.arrivals) - len(d.closed) for d in drips]

        async def main() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(dispatcher.run(stop))
            stopped = False
            try:
                for _ in range(events):
                    await asyncio.to_thread(add_event, runtime, acme.tenant_id, "sent")
                held = min(shares["per_endpoint"] * endpoints, shares["per_tenant"])
                await until(lambda: sum(acme_in_flight()) >= held, 10, "acme's attempts begin")
                await asyncio.sleep(0.3)  # room for any attempt over a share to begin too
                in_flight["before"] = acme_in_flight()
                await asyncio.to_thread(add_event, runtime, globex.tenant_id, "sent")
                due = time.monotonic()
                await until(lambda: hooks.requests, 2 * bound, "globex's webhook")
                in_flight["globex_after"] = time.monotonic() - due
                in_flight["after"] = acme_in_flight()
            finally:
                stopped = await stop_all(stop, [task], 2 * bound)
            assert stopped, "the dispatcher did not stop"

        asyncio.run(main())
    assert in_flight["globex_after"] < 2.5, in_flight
    for counts in (in_flight["before"], in_flight["after"]):
        assert max(counts) <= shares["per_endpoint"], in_flight
        assert sum(counts) <= shares["per_tenant"], in_flight


def test_the_lease_outlasts_the_attempt_so_no_other_dispatcher_sends_it_meanwhile(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    """Two dispatchers poll while one attempt drips until its bound: the other never takes the
    delivery, and the attempt's timeout is recorded, not fenced out by a second attempt."""
    bound = 3.0
    with DripEndpoint(interval=0.5) as drip:
        slow = register(client, acme, f"{drip.url}/hooks", "message.sent")
        dispatchers = [
            WebhookDispatcher(runtime=runtime, retry_delays=(60.0,), timeout=bound)
            for _ in range(2)
        ]

        async def main() -> None:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(d.run(stop)) for d in dispatchers]
            stopped = False
            try:
                await asyncio.to_thread(add_event, runtime, acme.tenant_id, "sent")
                await until(lambda: drip.arrivals, 10, "the attempt begins")
                await until(lambda: drip.closed, 3 * bound, "the attempt is cut")
                await until(lambda: _delivery_of(runtime, slow["id"]).last_status, 10, "its result")
                await asyncio.sleep(0.5)  # both keep polling
            finally:
                stopped = await stop_all(stop, tasks, 2 * bound)
            assert stopped, "a dispatcher did not stop"

        asyncio.run(main())
        assert len(drip.arrivals) == 1
    delivery = _delivery_of(runtime, slow["id"])
    assert delivery.attempts == 1 and delivery.last_status == f"timeout after {bound:g} s"
    assert delivery.next_attempt_at > datetime.now(UTC) + timedelta(seconds=50)  # the retry
    assert WebhookDispatcher(runtime=runtime).lease_seconds > ATTEMPT_SECONDS
    with pytest.raises(ValueError, match="longer than the attempt"):
        WebhookDispatcher(runtime=runtime, timeout=30, lease_seconds=30)


# -- routing order ----------------------------------------------------------------------------------


def test_routing_waits_for_a_missing_event_id_then_passes_it(
    client: TestClient, runtime: Runtime, acme: TenantKeys, receiver: tuple[WebhookReceiver, str]
) -> None:
    """PostgreSQL hands out ids before commit: a gap may be a transaction still in flight."""
    _, url = receiver
    register(client, acme, url, "message.sent")
    first = add_event(runtime, acme.tenant_id, "sent")
    with transaction(runtime.sessions) as session:
        session.add(
            Event(
                id=first + 2,  # first + 1 is "still in flight"
                tenant_id=acme.tenant_id,
                type="sent",
                created_at=datetime.now(UTC),
            )
        )
    clock = [0.0]
    gaps = GapWatch(grace=10.0, clock=lambda: clock[0])
    with transaction(runtime.sessions) as session:
        routed = route_events(session=session, now=datetime.now(UTC), gaps=gaps)
    if runtime.dialect == "postgresql":
        assert routed == 1  # stopped at the gap
        clock[0] = 11.0
        with transaction(runtime.sessions) as session:
            assert route_events(session=session, now=datetime.now(UTC), gaps=gaps) == 1
    else:
        assert routed == 2  # SQLite commits in id order: a gap is never in flight
    assert len(_statuses(runtime)) == 2


def test_an_old_gap_is_passed_at_once(
    client: TestClient, runtime: Runtime, acme: TenantKeys, receiver: tuple[WebhookReceiver, str]
) -> None:
    """A gap whose next event is older than the grace was a rollback: nothing to wait for."""
    _, url = receiver
    register(client, acme, url, "message.sent")
    first = add_event(runtime, acme.tenant_id, "sent")
    with transaction(runtime.sessions) as session:
        session.add(
            Event(id=first + 2, tenant_id=acme.tenant_id, type="sent", created_at=datetime.now(UTC))
        )
    later = datetime.now(UTC) + timedelta(seconds=60)
    with transaction(runtime.sessions) as session:
        assert route_events(session=session, now=later, gaps=GapWatch(grace=30.0)) == 2


def test_the_dispatcher_runs_until_stopped(
    client: TestClient, runtime: Runtime, acme: TenantKeys, receiver: tuple[WebhookReceiver, str]
) -> None:
    hooks, url = receiver
    register(client, acme, url, "message.sent")

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_webhook_dispatcher(runtime, stop))
        await asyncio.to_thread(add_event, runtime, acme.tenant_id, "sent")
        deadline = time.monotonic() + 20
        while not hooks.requests:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert len(hooks.requests) == 1
