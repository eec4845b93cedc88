"""Delivering the tenants' event webhooks: new events become deliveries, due deliveries are POSTed.

Each pass routes the events recorded since the last pass into ``webhook_deliveries`` (one
statement, see ``queue/webhook_outbox.py``), claims the deliveries it has room for and starts
each at once as a task of its own; every task records its result as soon as it ends (results that
end together are written in one transaction). A delivery is JSON signed per Standard Webhooks
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature``); a 2xx answer delivers it,
anything else (another status, a redirect, a timeout, a refused address) schedules the next try
from ``RETRY_DELAYS`` until they run out and it is ``failed``.

No endpoint can hold the dispatcher. One attempt is bounded as a whole, by ``timeout`` around
resolving, connecting, sending and reading the status line and headers: httpx's own timeouts bound
each read, and an endpoint that sends a byte every two seconds would never trip them. The
dispatcher never waits for one attempt to start or record another, and it keeps at most
``per_endpoint`` attempts in flight to one endpoint and ``per_tenant`` to one tenant's endpoints:
a slow endpoint fills its own share for at most ``timeout`` at a time while the other endpoints'
deliveries go past it. A claimed delivery starts at once, so its lease only has to outlast one
attempt and the writing of its result: ``lease_seconds`` is derived from ``timeout`` and refused
when it would not be longer.

The target is resolved and checked again before every request (``webhook_targets``), and the
request goes to the very address that was checked, with the original name in ``Host`` and in
TLS's SNI, so a DNS answer that changed since registration cannot point us at a private address.
Redirects are not followed and proxies from the environment are not used, for the same reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

import httpx

from tidings import __version__, webhook_signature
from tidings.db.engine import transaction
from tidings.errors import InvalidInput
from tidings.queue.clock import db_now
from tidings.queue.webhook_outbox import (
    ROUTE_BATCH,
    AttemptResult,
    Claimed,
    DueDelivery,
    GapWatch,
    Room,
    claim_deliveries,
    record_attempts,
    route_events,
)
from tidings.runtime import Runtime
from tidings.webhook_targets import (
    IPAddress,
    Target,
    check_addresses,
    parse_target,
    resolve_async,
)

log = logging.getLogger("tidings.webhooks")

#: Seconds to wait after the 1st, 2nd … failed attempt (Svix's schedule): 8 attempts over ~28 h.
RETRY_DELAYS: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
ATTEMPT_SECONDS = 10.0  # one attempt in all: resolve, connect, send, status line and headers
#: How long a lease outlasts the attempt it covers: time to write the result, with the database
#: slow or briefly away, before another dispatcher may try the delivery again.
RECORD_MARGIN_SECONDS = 50.0
CONCURRENCY = 100  # attempts in flight in one dispatcher
PER_ENDPOINT = 8  # of them to one endpoint: all a slow endpoint can hold
PER_TENANT = 25  # of them to one tenant's endpoints together (a tenant may have 20 endpoints)
#: After an attempt ends and frees room for deliveries that were left behind, wait this long for
#: others to end too, so a busy dispatcher claims a few at a time rather than one per attempt.
COALESCE_SECONDS = 0.025

Resolver = Callable[[Target], Awaitable[list[IPAddress]]]
Attempt = tuple[DueDelivery, bool, str]  # the delivery, delivered?, what happened


class ResultWriter:
    """Writes attempts' results as they end; those that end while a write is under way go
    together in the next one (group commit), so a busy dispatcher writes a few transactions a
    second, not one per delivery, and a lone result is written at once."""

    def __init__(self, write: Callable[[Sequence[Attempt]], None]) -> None:
        self._write = write
        self._pending: list[tuple[Attempt, asyncio.Future[None]]] = []
        self._lock = asyncio.Lock()

    async def write(self, attempt: Attempt) -> None:
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((attempt, written))
        async with self._lock:
            if not written.done():  # else an earlier write took it along
                batch, self._pending = self._pending, []
                try:
                    await asyncio.to_thread(self._write, [a for a, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        future.set_exception(exc)
                else:
                    for _, future in batch:
                        future.set_result(None)
        await written


class WebhookDispatcher:
    def __init__(
        self,
        *,
        runtime: Runtime,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        timeout: float = ATTEMPT_SECONDS,
        lease_seconds: float | None = None,
        concurrency: int = CONCURRENCY,
        per_endpoint: int = PER_ENDPOINT,
        per_tenant: int = PER_TENANT,
        resolver: Resolver = resolve_async,
    ) -> None:
        self.runtime = runtime
        self.retry_delays = tuple(retry_delays)
        self.timeout = timeout
        self.lease_seconds = (
            timeout + RECORD_MARGIN_SECONDS if lease_seconds is None else lease_seconds
        )
        if not self.lease_seconds > self.timeout:
            # A lease that ends during the attempt lets another dispatcher send it again, and
            # the first attempt's result is then fenced out.
            raise ValueError(
                f"the webhook delivery lease ({self.lease_seconds:g} s) must be longer than"
                f" the attempt it covers ({self.timeout:g} s)"
            )
        self.concurrency = concurrency
        self.per_endpoint = per_endpoint
        self.per_tenant = per_tenant
        self._resolve = resolver
        self._gaps = GapWatch()
        self._tasks: set[asyncio.Task[None]] = set()  # attempts in flight
        self._endpoints: Counter[int] = Counter()  # attempts in flight, by endpoint
        self._tenants: Counter[int] = Counter()  # attempts in flight, by tenant
        self._freed = asyncio.Event()  # an attempt ended since the last pass began
        self._writer = ResultWriter(self._record)

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until ``stop``; then the attempts in flight end (each within its
        bound) and are recorded."""
        async with self._client() as client:
            try:
                while not stop.is_set():
                    try:
                        claimed = await self._pass(client)
                    except Exception:
                        log.exception(
                            "webhook dispatch pass failed; retrying after the poll interval"
                        )
                        claimed = None
                    await self._wait(stop, claimed)
            finally:
                await self._settle()

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),  # each phase; ``_attempt`` bounds the whole
            follow_redirects=False,
            trust_env=False,  # an environment proxy would connect to a name we did not check
            limits=httpx.Limits(max_connections=self.concurrency),
        )

    async def run_once(self, client: httpx.AsyncClient | None = None) -> bool:
        """One pass, waiting until its attempts are recorded; True when it left work behind (a
        full routing batch, or due deliveries it had no room for), so the next pass should
        follow at once.

        Not merely "found some": events arrive with every message sent, and a dispatcher that
        looped while any had arrived ran a pass per few events, measured at a third of a busy
        worker's CPU. A webhook waits at most the poll interval.
        """
        if client is None:
            async with self._client() as own:
                return await self.run_once(own)
        claimed = await self._pass(client)
        await self._settle()
        return claimed.left_behind

    async def _pass(self, client: httpx.AsyncClient) -> Claimed:
        """Route new events, claim what there is room for and start each claimed attempt."""
        self._freed.clear()
        routed = await asyncio.to_thread(self._route)
        claimed = await asyncio.to_thread(self._claim, self._room())
        for delivery in claimed.deliveries:
            self._start(client, delivery)
        if routed >= ROUTE_BATCH:
            return Claimed(claimed.deliveries, left_behind=True)
        return claimed

    async def _wait(self, stop: asyncio.Event, claimed: Claimed | None) -> None:
        """Until the next pass: none when work was left behind and there is room for it; the
        end of an attempt when work was left behind for want of room; else the poll interval."""
        room = self._room()
        held_back = bool(room.full_endpoints() or room.full_tenants())
        left_behind = claimed is not None and claimed.left_behind
        if left_behind and room.total > 0 and not held_back:
            return
        waiters = [asyncio.ensure_future(stop.wait())]
        if left_behind or held_back:
            waiters.append(asyncio.ensure_future(self._freed.wait()))
        try:
            await asyncio.wait(
                waiters,
                timeout=self.runtime.settings.poll_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._freed.is_set() and not stop.is_set():
            await asyncio.sleep(COALESCE_SECONDS)

    def _room(self) -> Room:
        return Room(
            total=self.concurrency - len(self._tasks),
            per_endpoint=self.per_endpoint,
            per_tenant=self.per_tenant,
            endpoints=dict(self._endpoints),
            tenants=dict(self._tenants),
        )

    def _start(self, client: httpx.AsyncClient, delivery: DueDelivery) -> None:
        self._endpoints[delivery.endpoint_id] += 1
        self._tenants[delivery.tenant_id] += 1
        task = asyncio.create_task(self._deliver(client, delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, client: httpx.AsyncClient, delivery: DueDelivery) -> None:
        try:
            await self._writer.write(await self._attempt(client, delivery))
        except Exception:
            log.exception(
                "webhook delivery %d: its result was not recorded; tried again after its lease",
                delivery.id,
            )
        finally:
            _release(self._endpoints, delivery.endpoint_id)
            _release(self._tenants, delivery.tenant_id)
            self._freed.set()

    async def _settle(self) -> None:
        """Until every attempt in flight is recorded (each ends within its bound)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- database steps (in a thread) --------------------------------------------------------------

    def _route(self) -> int:
        with transaction(self.runtime.sessions) as session:
            return route_events(session=session, now=db_now(session), gaps=self._gaps)

    def _claim(self, room: Room) -> Claimed:
        with transaction(self.runtime.sessions) as session:
            return claim_deliveries(
                session=session, now=db_now(session), room=room, lease_seconds=self.lease_seconds
            )

    def _record(self, attempts: Sequence[Attempt]) -> None:
        with transaction(self.runtime.sessions) as session:
            now = db_now(session)
            results = []
            for delivery, delivered, what in attempts:
                retry_at = None
                if not delivered and delivery.attempts <= len(self.retry_delays):
                    delay = self.retry_delays[delivery.attempts - 1]
                    retry_at = now + timedelta(seconds=delay)
                results.append(
                    AttemptResult(
                        delivery_id=delivery.id,
                        endpoint_id=delivery.endpoint_id,
                        attempts=delivery.attempts,
                        delivered=delivered,
                        last_status=what,
                        retry_at=retry_at,
                    )
                )
                if not delivered:
                    log.info(
                        "webhook delivery %d to endpoint %d, attempt %d: %s%s",
                        delivery.id,
                        delivery.endpoint_id,
                        delivery.attempts,
                        what,
                        "" if retry_at else " (giving up)",
                    )
            record_attempts(session=session, results=results, now=now)

    # -- the request ------------------------------------------------------------------------------

    async def _attempt(self, client: httpx.AsyncClient, delivery: DueDelivery) -> Attempt:
        """One attempt, cut at ``timeout`` seconds in all, however the endpoint dawdles."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._request(client, delivery)
        except TimeoutError:
            return delivery, False, f"timeout after {self.timeout:g} s"

    async def _request(self, client: httpx.AsyncClient, delivery: DueDelivery) -> Attempt:
        addresses: list[IPAddress] = []
        try:
            target = parse_target(delivery.url)
            addresses = await self._resolve(target)
            check_addresses(
                target, addresses, allow_private=self.runtime.settings.webhook_allow_private
            )
        except InvalidInput as exc:
            if addresses:  # for the operator; the tenant's status does not name them
                log.warning(
                    "webhook endpoint %d: %s resolves to %s; refused",
                    delivery.endpoint_id,
                    delivery.url,
                    ", ".join(map(str, addresses)),
                )
            return delivery, False, f"refused: {exc.message}"
        body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False).encode()
        message_id = f"msg_{delivery.id}"  # the same on every retry, so receivers can deduplicate
        timestamp = int(self.runtime.clock.now().timestamp())
        headers = {
            "host": target.host_header,
            "content-type": "application/json",
            "user-agent": f"tidings/{__version__}",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": webhook_signature.sign(
                delivery.secret, message_id=message_id, timestamp=timestamp, body=body
            ),
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            async with client.stream(
                "POST",
                target.pinned_url(addresses[0]),
                content=body,
                headers=headers,
                extensions=extensions,
            ) as response:
                # The body is never read: a 2xx is all we need, and a huge answer costs nothing.
                status = f"{response.status_code} {response.reason_phrase}".strip()
                return delivery, 200 <= response.status_code < 300, status
        except httpx.TimeoutException:
            return delivery, False, f"timeout after {self.timeout:g} s"
        except httpx.HTTPError as exc:
            return delivery, False, f"request failed: {exc.__class__.__name__}: {exc}"


def _release(in_flight: Counter[int], key: int) -> None:
    in_flight[key] -= 1
    if in_flight[key] <= 0:
        del in_flight[key]


async def run_webhook_dispatcher(runtime: Runtime, stop: asyncio.Event) -> None:
    """Deliver the tenants' webhooks until ``stop`` is set (run one next to the delivery workers)."""
    await WebhookDispatcher(runtime=runtime).run(stop)
