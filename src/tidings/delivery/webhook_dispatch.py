"""Delivering the tenants' event webhooks: new events become deliveries, due deliveries are POSTed.

Each pass routes the events recorded since the last pass into ``webhook_deliveries`` (one
statement, see ``queue/webhook_outbox.py``), claims the deliveries that are due, sends them
concurrently and records every result. A delivery is JSON signed per Standard Webhooks
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature``); a 2xx answer delivers it,
anything else (another status, a redirect, a timeout, a refused address) schedules the next try
from ``RETRY_DELAYS`` until they run out and it is ``failed``.

The target is resolved and checked again before every request (``webhook_targets``), and the
request goes to the very address that was checked, with the original name in ``Host`` and in
TLS's SNI, so a DNS answer that changed since registration cannot point us at a private address.
Redirects are not followed and proxies from the environment are not used, for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
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
    DueDelivery,
    GapWatch,
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
REQUEST_TIMEOUT = 10.0  # seconds for the whole request
LEASE_SECONDS = 60.0  # a claimed delivery is retried by others after this (well past the timeout)
BATCH_SIZE = 50  # deliveries claimed and sent at once

Resolver = Callable[[Target], Awaitable[list[IPAddress]]]
Attempt = tuple[DueDelivery, bool, str]  # the delivery, delivered?, what happened


class WebhookDispatcher:
    def __init__(
        self,
        *,
        runtime: Runtime,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        timeout: float = REQUEST_TIMEOUT,
        batch_size: int = BATCH_SIZE,
        resolver: Resolver = resolve_async,
    ) -> None:
        self.runtime = runtime
        self.retry_delays = tuple(retry_delays)
        self.timeout = timeout
        self.batch_size = batch_size
        self._resolve = resolver
        self._gaps = GapWatch()

    async def run(self, stop: asyncio.Event) -> None:
        async with self._client() as client:
            while not stop.is_set():
                try:
                    busy = await self.run_once(client)
                except Exception:
                    log.exception("webhook dispatch pass failed; retrying after the poll interval")
                    busy = False
                if not busy:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            stop.wait(), timeout=self.runtime.settings.poll_seconds
                        )

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            trust_env=False,  # an environment proxy would connect to a name we did not check
            limits=httpx.Limits(max_connections=self.batch_size),
        )

    async def run_once(self, client: httpx.AsyncClient | None = None) -> bool:
        """One pass; True when it left work behind (a full batch of either kind), so the next
        pass should follow at once.

        Not merely "found some": events arrive with every message sent, and a dispatcher that
        looped while any had arrived ran a pass per few events, measured at a third of a busy
        worker's CPU. A webhook waits at most the poll interval.
        """
        if client is None:
            async with self._client() as own:
                return await self.run_once(own)
        routed = await asyncio.to_thread(self._route)
        due = await asyncio.to_thread(self._claim)
        if due:
            attempts = await asyncio.gather(*(self._attempt(client, d) for d in due))
            await asyncio.to_thread(self._record, attempts)
        return routed >= ROUTE_BATCH or len(due) >= self.batch_size

    # -- database steps (in a thread) --------------------------------------------------------------

    def _route(self) -> int:
        with transaction(self.runtime.sessions) as session:
            return route_events(session=session, now=db_now(session), gaps=self._gaps)

    def _claim(self) -> list[DueDelivery]:
        with transaction(self.runtime.sessions) as session:
            return claim_deliveries(
                session=session,
                now=db_now(session),
                limit=self.batch_size,
                lease_seconds=max(LEASE_SECONDS, self.timeout * 3),
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
        try:
            target = parse_target(delivery.url)
            addresses = await self._resolve(target)
            check_addresses(
                target, addresses, allow_private=self.runtime.settings.webhook_allow_private
            )
        except InvalidInput as exc:
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


async def run_webhook_dispatcher(runtime: Runtime, stop: asyncio.Event) -> None:
    """Deliver the tenants' webhooks until ``stop`` is set (run one next to the delivery workers)."""
    await WebhookDispatcher(runtime=runtime).run(stop)
