"""The delivery loop: claim -> throttle -> render -> send -> record, with leases kept alive meanwhile.

One ``Worker`` runs in one asyncio loop and keeps up to ``concurrency`` messages in flight, in
batches: a claim, a render, a transport call and an outcome write are each one step per batch, so
database work stays O(1) round trips per batch rather than per message (DESIGN.md, "Scale").

Templates render in the render pool's processes (``rendering/pool.py``), awaited: this loop never
renders, so lease renewals, claims and sends go on whatever one template does; a message that
breaks a render limit fails alone, permanently, and its batch-mates are sent and recorded once.

It waits for work on the first of: an in-process wake-up (the API in the same process committed
new work), a PostgreSQL ``NOTIFY`` from any process, or the poll interval. Polling is the
guarantee; the others only make it fast.

SIGTERM (``stop``) ends claiming; batches in flight finish their attempt and record it; nothing
stays leased.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tidings import metrics
from tidings.address_hash import address_key
from tidings.db.engine import transaction
from tidings.db.models import Worker as WorkerRow
from tidings.delivery.compose import BatchContext, Composer, Prepared, load_context
from tidings.delivery.outcomes import decide, domain_feedback
from tidings.delivery.retry import RetryPolicy
from tidings.delivery.signing_keys import SigningKeys
from tidings.delivery.slots import send_in_slots
from tidings.domain.addresses import domain_of
from tidings.domain.message import Outcome, OutgoingMessage, Permanent, Transient
from tidings.errors import TidingsError
from tidings.queue import maintenance
from tidings.queue.claim import claim_batch, release_unsent
from tidings.queue.claimed import Claim, ClaimedMessage
from tidings.queue.clock import db_now
from tidings.queue.domain_rates import forget_quiet_domains, record_feedback
from tidings.queue.fanout import PREPARE_LEASE_SECONDS, prepare_campaign, take_preparing
from tidings.queue.guardrails import enforce_guardrails
from tidings.queue.leases import reap_expired_leases, renew_leases
from tidings.queue.notify import CHANNEL
from tidings.queue.outcomes import lock_leased, record_outcomes
from tidings.queue.retention import RETENTION_EVERY, purge_expired
from tidings.queue.status import fold_counts
from tidings.transports.base import ABANDONED, Transport

if TYPE_CHECKING:  # the worker must not load the service layer (tests/unit/test_layering.py)
    from tidings.runtime import Runtime

log = logging.getLogger("tidings.worker")

MAINTENANCE_SECONDS = 1.0  # reaper, scheduled starts and completions run this often
FOLD_SECONDS = 60.0  # closed connections' message count shards are folded this often
DEFAULT_BATCH_SIZE = 100  # messages per claim at most
#: Batches in flight at once: while one waits on the SMTP server, the next is claimed and rendered,
#: so the database round trips of one batch overlap the network time of the others.
PIPELINE_DEPTH = 4
RECORD_RETRIES = 5  # tries to write a batch's outcomes before leaving them to the lease reaper
LISTEN_RECONNECT_SECONDS = 2.0
#: At start the worker opens one connection to the mail service, for at most this long: the
#: transport learns how far away it is before the first claim asks for slots.
WARM_UP_SECONDS = 1.0
#: After a claim that found less than a full batch, the next one waits this long since it. Under a
#: trickle of transactional mail (one wake-up per message) that turns 200 one-message claims a
#: second into a few claims of several messages, measured at 3.4 ms of worker CPU per message
#: before; an idle worker still claims at once, and a backlog (full batches) never waits.
COALESCE_SECONDS = 0.025
#: Messages in flight per worker by default. In-flight messages are cheap (a few KB each, no socket
#: of their own); what a mail server feels is connections, and those are capped separately below.
#: 400 is the measured knee on the 2-core reference machine (20k recipients, PostgreSQL, 2 workers,
#: smtp-sink): 50 gave 1,494 messages/s, 400 gave 3,432; above 400 nothing more was gained.
DEFAULT_CONCURRENCY = 400
#: Connections (or HTTP requests) to the mail service at once, however many messages are in flight:
#: providers cap concurrent connections per client, and 20 already saturate a local smtp-sink.
MAX_TRANSPORT_CONNECTIONS = 20
TIMER_PAD = 0.002  # seconds a wake-up for held-back throttled work comes after its time
LOOP_SLICE = 0.002  # seconds of batch work between turns of the event loop

T = TypeVar("T")


class Worker:
    def __init__(
        self,
        *,
        runtime: Runtime,
        transport: Transport,
        concurrency: int = DEFAULT_CONCURRENCY,
        batch_size: int = DEFAULT_BATCH_SIZE,
        policy: RetryPolicy | None = None,
        worker_id: str | None = None,
    ) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.transport = transport
        self.concurrency = concurrency
        self.batch_size = max(1, min(batch_size, concurrency // PIPELINE_DEPTH))
        self.policy = policy or RetryPolicy(settings.retry_base_seconds, settings.retry_max_seconds)
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.composer = Composer(settings=settings, secret_key=runtime.secret_key)
        self.signing_keys = SigningKeys(runtime.secret_key)
        self._busy = 0  # messages in flight
        self._batches: dict[str, asyncio.Task[None]] = {}  # by lease token
        self._wake = asyncio.Event()
        self._wake_at = math.inf  # monotonic: held-back throttled work may be claimed again
        self._preparing: set[asyncio.Task[None]] = set()  # transport.prepare() calls running
        self._fanning_out: set[asyncio.Task[None]] = set()  # preparing campaigns being written
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fold_at = 0.0  # monotonic: when to fold message count shards next
        self._purge_at = 0.0  # monotonic: when to purge what is past retention next
        self.delivered = 0  # attempts recorded by this worker (for tests and the CLI)

    # -- waking up -------------------------------------------------------------------------------

    def wake(self) -> None:
        """Thread-safe: there may be new work."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    # -- the loop --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self.runtime.wakeups.add(self.wake)
        await self._db(self._register)
        helpers = [
            asyncio.create_task(self._maintain(stop)),
            asyncio.create_task(self._heartbeat(stop)),
        ]
        listen_url = self.runtime.settings.listen_url()
        if listen_url is not None:
            helpers.append(asyncio.create_task(self._listen(stop, listen_url)))
        elif self.runtime.dialect == "postgresql":
            log.info(
                "behind a transaction pooler with no TIDINGS_DATABASE_LISTEN_URL: new work is "
                "found by polling, every %s s",
                self.runtime.settings.poll_seconds,
            )
        log.info("worker %s started (concurrency %d)", self.id, self.concurrency)
        # A connection first, briefly: the transport learns how far its server is before the
        # first claim asks for slots with that lead (a distant server's first batch would be late).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WARM_UP_SECONDS):
                await self.transport.prepare(1)
        try:
            await self._claim_loop(stop)
        finally:
            if self._batches or self._preparing or self._fanning_out:
                await asyncio.gather(
                    *self._batches.values(),
                    *self._preparing,
                    *self._fanning_out,
                    return_exceptions=True,
                )
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            self.runtime.wakeups.discard(self.wake)
            with contextlib.suppress(Exception):
                await self._db(self._unregister)
            log.info("worker %s stopped", self.id)

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        # Monotonic time before which a claim would come too soon after a small one.
        not_before = 0.0
        while not stop.is_set():
            pause = not_before - time.monotonic()
            if pause > 0:
                await self._sleep(stop, pause)
            self._wake.clear()  # before the claim: a wake-up during it is not lost
            if time.monotonic() >= self._wake_at:
                self._wake_at = math.inf  # this claim is the one the timer was for
            free = self.concurrency - self._busy
            if free > 0:
                limit = min(free, self.batch_size)
                started = time.monotonic()
                try:
                    # Read here, not in the claim's thread: the transport updates it on this loop.
                    lead = self.transport.lead
                    claim, context = await self._db(self._claim, limit, lead)
                except Exception:
                    log.exception("claim failed; retrying after the poll interval")
                    await self._wait(stop, self.runtime.settings.poll_seconds)
                    continue
                if claim.held_back:
                    metrics.THROTTLE_WAITS.inc()
                if claim.wake_at is not None and claim.clock is not None:
                    self._wake_at = min(self._wake_at, claim.clock.local_time(claim.wake_at))
                full = len(claim.messages) + claim.held_back >= limit
                not_before = 0.0 if full else started + COALESCE_SECONDS
                if context is not None:
                    self._start(claim, context)
                    continue
            # Throttled work held back wakes us at its next slot, not at the next poll (a little
            # after it: asyncio may fire a timer a millisecond early, and a claim that comes
            # before the tenant reopens learns nothing and would leave us waiting for the poll).
            until_slot = max(0.0, self._wake_at + TIMER_PAD - time.monotonic())
            await self._wait(stop, min(self.runtime.settings.poll_seconds, until_slot))

    def _start(self, claim: Claim, context: BatchContext) -> None:
        self._busy += len(claim.messages)
        task = asyncio.create_task(self._deliver(claim, context))
        self._batches[claim.token] = task

        def done(_: asyncio.Task[None]) -> None:
            self._busy -= len(claim.messages)
            self._batches.pop(claim.token, None)
            self._wake.set()  # room for more

        task.add_done_callback(done)

    async def _db(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.to_thread(function, *args)

    # -- one batch -------------------------------------------------------------------------------

    def _claim(self, limit: int, lead: float) -> tuple[Claim, BatchContext | None]:
        """Claim a batch and read what rendering it needs, in one transaction."""
        settings = self.runtime.settings
        with transaction(self.runtime.sessions) as session:
            claim = claim_batch(
                session=session,
                owner=self.id,
                limit=limit,
                lease_seconds=settings.lease_seconds,
                lead=lead,
                address_key=address_key(self.runtime.secret_key),
            )
            context = (
                load_context(
                    session, claim.messages, self.composer.attachments, keys=self.signing_keys
                )
                if claim.messages
                else None
            )
            return claim, context

    async def _deliver(self, claim: Claim, context: BatchContext) -> None:
        results: list[tuple[ClaimedMessage, Outcome]] = []
        missed: list[ClaimedMessage] = []  # throttled messages that would have started too late
        warnings: dict[int, str] = {}  # message id -> why it goes unsigned
        self._prepare(claim)
        try:
            ready = await self._render(claim, context, results, warnings)
            if claim.clock is None or all(m.send_at is None for m, _ in ready):
                await self._send(ready, results)
            else:
                missed = await send_in_slots(
                    ready,
                    claim.clock,
                    lambda batch: self._send(batch, results),
                    lambda batch, at, by, lead: self._send_at(batch, at, by, lead, results),
                )
        except Exception as exc:  # a bug or an outage: retry these later rather than lose them
            log.exception("batch %s failed before its outcomes were known", claim.token)
            done = {m.id for m, _ in results} | {m.id for m in missed}
            results.extend(
                (m, Transient(f"internal error: {exc}")) for m in claim.messages if m.id not in done
            )
        if missed:
            await self._release_with_retries(claim, missed)
        await self._record_with_retries(claim, results, warnings)

    async def _send_at(
        self,
        ready: list[tuple[ClaimedMessage, OutgoingMessage]],
        at: float,
        by: float,
        lead: float,
        results: list[tuple[ClaimedMessage, Outcome]],
    ) -> list[ClaimedMessage]:
        """Send at a slot; the messages that could not be sent on time. One the server saw part
        of keeps its slot used: it comes back with no slot to give back (``send_at`` None)."""
        outcomes = await self.transport.send_at(
            [outgoing for _, outgoing in ready], at=at, by=by, lead=lead
        )
        metrics.SEND_LATENCY.observe(max(0.0, time.monotonic() - at))
        missed = []
        for (message, _), outcome in zip(ready, outcomes, strict=True):
            if outcome is None:
                missed.append(message)
            elif outcome is ABANDONED:
                missed.append(replace(message, send_at=None, send_by=None))
            else:
                results.append((message, outcome))
        return missed

    def _prepare(self, claim: Claim) -> None:
        """Open connections for the sends that have slots while the batch renders, so that none
        spends its slot connecting: as many as there are sends due at one moment."""
        at_once = Counter(m.send_at for m in claim.messages if m.send_at is not None)
        if not at_once:
            return

        async def prepare(count: int) -> None:
            try:
                await self.transport.prepare(count)
            except Exception:  # the sends will connect themselves, and report what fails
                log.warning("preparing the transport failed", exc_info=True)

        task = asyncio.create_task(prepare(max(at_once.values())))
        self._preparing.add(task)
        task.add_done_callback(self._preparing.discard)

    async def _send(
        self,
        ready: list[tuple[ClaimedMessage, OutgoingMessage]],
        results: list[tuple[ClaimedMessage, Outcome]],
    ) -> None:
        if not ready:
            return
        started = time.perf_counter()
        outcomes = await self.transport.send([outgoing for _, outgoing in ready])
        metrics.SEND_LATENCY.observe(time.perf_counter() - started)
        results.extend(
            (message, outcome) for (message, _), outcome in zip(ready, outcomes, strict=True)
        )

    async def _render(
        self,
        claim: Claim,
        context: BatchContext,
        failed: list[tuple[ClaimedMessage, Outcome]],
        warnings: dict[int, str],
    ) -> list[tuple[ClaimedMessage, OutgoingMessage]]:
        """The batch's mail, rendered by the render pool while this loop keeps running (heartbeats
        included); a message that cannot be rendered, or breaks a render limit, goes to ``failed``
        as a permanent failure, alone."""
        prepared: list[tuple[ClaimedMessage, Prepared]] = []
        turn = _Turn()
        for message in claim.messages:
            try:
                prepared.append((message, self.composer.prepare(message, context)))
            except TidingsError as exc:
                failed.append((message, _unrenderable(exc)))
            await turn.share()
        if not prepared:
            return []
        rendered = await self.runtime.renderer.render_many_async([p.job for _, p in prepared])
        ready: list[tuple[ClaimedMessage, OutgoingMessage]] = []
        for (message, ready_to_render), content in zip(prepared, rendered, strict=True):
            if isinstance(content, TidingsError):
                failed.append((message, _unrenderable(content)))
            else:
                ready.append(
                    (message, self.composer.finish(message, ready_to_render, content, claim.now))
                )
                if ready_to_render.unsigned is not None:
                    warnings[message.id] = ready_to_render.unsigned
            await turn.share()
        return ready

    async def _release_with_retries(self, claim: Claim, missed: list[ClaimedMessage]) -> None:
        """Give late messages back to the queue, unsent and without spending an attempt."""
        log.info("%d throttled messages missed their slot; back to the queue", len(missed))
        metrics.THROTTLE_WAITS.inc()
        for attempt in range(RECORD_RETRIES):
            try:
                await self._db(self._release, claim.token, missed)
                return
            except Exception:
                log.exception(
                    "releasing missed slots failed (try %d of %d)", attempt + 1, RECORD_RETRIES
                )
                await asyncio.sleep(min(2**attempt, 10))
        # Their leases expire and the reaper requeues them, as for any batch that cannot record.

    def _release(self, token: str, missed: list[ClaimedMessage]) -> None:
        with transaction(self.runtime.sessions) as session:
            release_unsent(session=session, token=token, messages=missed, now=db_now(session))

    async def _record_with_retries(
        self,
        claim: Claim,
        results: list[tuple[ClaimedMessage, Outcome]],
        warnings: dict[int, str] | None = None,
    ) -> None:
        for attempt in range(RECORD_RETRIES):
            try:
                recorded = await self._db(self._record, claim, results, warnings or {})
            except Exception:
                log.exception(
                    "recording outcomes failed (try %d of %d)", attempt + 1, RECORD_RETRIES
                )
                await asyncio.sleep(min(2**attempt, 10))
                continue
            self.delivered += recorded
            return
        # Leases will expire and the reaper requeues these: at-least-once, never lost.
        log.error(
            "gave up recording batch %s; its leases will expire and it will be retried", claim.token
        )

    def _record(
        self,
        claim: Claim,
        results: list[tuple[ClaimedMessage, Outcome]],
        warnings: dict[int, str] | None = None,
    ) -> int:
        with transaction(self.runtime.sessions) as session:
            now = db_now(session)
            slots = _adapt_domain_rates(session, claim, results, now=now)
            decisions = [
                decide(
                    m,
                    o,
                    now=now,
                    policy=self.policy,
                    message_id_header=self.composer.message_id_header(m.id),
                    domain_slot=slots.get((m.tenant_id, domain_of(m.to_address))),
                )
                for m, o in results
            ]
            for name, count in Counter(type(o).__name__.lower() for _, o in results).items():
                metrics.ATTEMPTS.labels(outcome=name).inc(count)
            if slots:
                metrics.THROTTLE_WAITS.inc(len(slots))
            return len(
                record_outcomes(
                    session=session,
                    token=claim.token,
                    decisions=decisions,
                    now=now,
                    warnings=warnings,
                )
            )

    # -- background duties -----------------------------------------------------------------------

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Renew the leases of batches in flight, well before they expire."""
        interval = self.runtime.settings.lease_seconds / 3
        while not stop.is_set():
            await self._sleep(stop, interval)
            tokens = list(self._batches)
            if tokens:
                try:
                    await self._db(self._renew, tokens)
                except Exception:
                    log.exception("lease renewal failed")

    def _renew(self, tokens: list[str]) -> None:
        with transaction(self.runtime.sessions) as session:
            now = db_now(session)
            renew_leases(
                session=session,
                tokens=tokens,
                now=now,
                lease_seconds=self.runtime.settings.lease_seconds,
            )

    async def _maintain(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                work, preparing = await self._db(self._maintenance_pass)
                if work:
                    self._wake.set()
                if preparing:
                    self._fan_out(preparing, stop)
            except Exception:
                log.exception("maintenance pass failed")
            await self._sleep(stop, MAINTENANCE_SECONDS)

    def _fan_out(self, campaign_ids: list[int], stop: asyncio.Event) -> None:
        """Write the remaining chunks of the preparing campaigns this worker leased, beside the
        maintenance loop: a million recipients take seconds, which reaping must not wait for."""
        settings = self.runtime.settings

        def write() -> None:
            for campaign_id in campaign_ids:
                prepare_campaign(
                    self.runtime.sessions,
                    campaign_id,
                    ttl_seconds=settings.message_ttl_seconds,
                    keep_going=lambda: not stop.is_set(),
                )

        async def run() -> None:
            try:
                await self._db(write)
            except Exception:  # its lease lapses and a worker goes on from the cursor
                log.exception("fanning out campaigns %s failed", campaign_ids)

        task = asyncio.create_task(run())
        self._fanning_out.add(task)
        task.add_done_callback(self._fanning_out.discard)

    def _maintenance_pass(self) -> tuple[bool, list[int]]:
        """Reap expired leases, start due campaigns, pause campaigns that hurt the sender's
        reputation, complete finished ones, lease preparing campaigns no worker is writing, and
        every ``RETENTION_EVERY`` purge what is past retention: (True if work appeared, the
        campaigns leased)."""
        settings = self.runtime.settings
        with transaction(self.runtime.sessions) as session:
            now = db_now(session)
            requeued, _dead = reap_expired_leases(
                session=session, now=now, max_expiries=settings.max_lease_expiries
            )
            started = maintenance.start_due_campaigns(
                session=session, now=now, ttl_seconds=settings.message_ttl_seconds
            )
            enforce_guardrails(
                session=session,
                now=now,
                min_sample=settings.guardrail_min_sample,
                bounce_rate=settings.guardrail_bounce_rate,
                complaint_rate=settings.guardrail_complaint_rate,
            )
            maintenance.complete_finished_campaigns(session=session, now=now)
            maintenance.purge_unconfirmed_signups(session=session, now=now)
            forget_quiet_domains(session=session, now=now)
            preparing = (
                take_preparing(session=session, now=now, lease_seconds=PREPARE_LEASE_SECONDS)
                if not self._fanning_out
                else []
            )
            self._upsert_row(session, now)
        if time.monotonic() >= self._fold_at:
            self._fold_at = time.monotonic() + FOLD_SECONDS
            with transaction(self.runtime.sessions) as session:
                fold_counts(session=session)
        if settings.retention_days and time.monotonic() >= self._purge_at:
            self._purge_at = time.monotonic() + RETENTION_EVERY
            purge_expired(self.runtime.sessions, retention_days=settings.retention_days)
        return bool(requeued or started), preparing

    def _register(self) -> None:
        with transaction(self.runtime.sessions) as session:
            self._upsert_row(session, db_now(session))

    def _upsert_row(self, session: Session, now: datetime) -> None:
        dialect_insert = pg_insert if self.runtime.dialect == "postgresql" else sqlite_insert
        statement = dialect_insert(WorkerRow).values(
            id=self.id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            started_at=now,
            heartbeat_at=now,
        )
        session.execute(
            statement.on_conflict_do_update(index_elements=["id"], set_={"heartbeat_at": now})
        )

    def _unregister(self) -> None:
        with transaction(self.runtime.sessions) as session:
            session.execute(delete(WorkerRow).where(WorkerRow.id == self.id))

    async def _listen(self, stop: asyncio.Event, conninfo: str) -> None:
        """PostgreSQL LISTEN: a commit anywhere that enqueued work wakes this worker within
        milliseconds. On a connection of its own, straight to the server: a pooler in transaction
        mode would hand the LISTEN's server connection to other clients."""
        import psycopg

        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True
                ) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    self._wake.set()  # anything enqueued while we were not listening
                    async for _ in connection.notifies():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("LISTEN connection lost; polling until it is back", exc_info=True)
                await self._sleep(stop, LISTEN_RECONNECT_SECONDS)

    @staticmethod
    async def _sleep(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)


def _adapt_domain_rates(
    session: Session, claim: Claim, results: list[tuple[ClaimedMessage, Outcome]], *, now: datetime
) -> dict[tuple[int, str], datetime]:
    """A slow-down reply lowers its domain's rate, and only that domain's, in the transaction that
    records the outcome; successes while held to a rate raise it. Returns each slowed domain's
    next slot, where its refused mail goes back. A batch with nothing to say costs nothing."""
    if not domain_feedback(claim, results):
        return {}
    # This batch's rows first, as every outcome write takes them, then the rates: a claim that
    # took a message whose lease this batch lost (it holds the row, then locks rates) never waits
    # on us while we wait on it.
    live = lock_leased(session, token=claim.token, ids=[m.id for m, _ in results])
    feedback = domain_feedback(claim, [(m, o) for m, o in results if m.id in live])
    return record_feedback(session=session, feedback=feedback, now=now)


class _Turn:
    """Hands the event loop back every ``LOOP_SLICE`` of work in a long loop over a batch: a
    throttled send waiting for its slot must not wait for a hundred other messages' MIME to be
    built first (measured: 20-30 ms at a time, which made throttled sends miss their slots)."""

    def __init__(self) -> None:
        self._since = time.perf_counter()

    async def share(self) -> None:
        if time.perf_counter() - self._since >= LOOP_SLICE:
            await asyncio.sleep(0)
            self._since = time.perf_counter()


def _unrenderable(exc: TidingsError) -> Permanent:
    where = f"{exc.field}: " if exc.field else ""
    return Permanent(f"could not render the message: {where}{exc.message}")


async def run_workers(
    runtime: Runtime, stop: asyncio.Event, *, count: int = 1, concurrency: int = DEFAULT_CONCURRENCY
) -> None:
    """Open the configured transport (tenants' own behind it) and run ``count`` workers on it,
    with the tenants' webhook dispatcher beside them, until ``stop`` is set."""
    from tidings.delivery.webhook_dispatch import run_webhook_dispatcher
    from tidings.transports.delivery import open_delivery_transport

    transport = open_delivery_transport(
        settings=runtime.settings,
        sessions=runtime.sessions,
        secret_key=runtime.secret_key,
        concurrency=min(concurrency * count, MAX_TRANSPORT_CONNECTIONS),
    )
    try:
        workers = [
            Worker(runtime=runtime, transport=transport, concurrency=concurrency)
            for _ in range(count)
        ]
        await asyncio.gather(
            *(worker.run(stop) for worker in workers), run_webhook_dispatcher(runtime, stop)
        )
    finally:
        await transport.close()
