"""The in-process buffer between the public tracking routes and the database.

``/o/`` and ``/c/`` must answer in milliseconds under a flood, so they never write: they append
the hit here (on the event loop: no lock) and answer. A background task of the app's lifespan
flushes the buffer every ``FLUSH_SECONDS``, or sooner once ``FLUSH_BATCH`` hits wait, in one
transaction (``record.record_hits``) run in a thread so the loop keeps answering.

* **Bounded.** At most ``MAX_BUFFERED`` hits wait; past that a hit is dropped and counted
  (``tidings_tracking_hits_total{outcome="dropped"}``): under a flood the process keeps its
  memory and its latency, and loses counts rather than the service. The redirect still happens.
* **Shutdown.** The lifespan's end flushes everything left before the process exits. A crash
  (SIGKILL, power) loses at most the last second's hits: the price of a write-free request path.
* **A database that is down.** A failed flush puts its hits back (within the bound) and the
  next tick tries again.
* **Bursts stay together.** A flush takes the hits older than ``HOLD_SECONDS`` and every hit of
  the same messages, so the clicks of a scanner's burst are classified together (``classify``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from tidings import metrics
from tidings.db.engine import transaction
from tidings.tracking.record import Flushed, Hit, record_hits

if TYPE_CHECKING:
    from tidings.runtime import Runtime

log = logging.getLogger("tidings.tracking")

MAX_BUFFERED = 100_000  # hits waiting at most (about 40 MB); past it new hits are dropped
FLUSH_SECONDS = 1.0  # a flush at least this often while hits wait
FLUSH_BATCH = 2_000  # hits: a flush starts early at this many
HOLD_SECONDS = 1.0  # a hit younger than this waits for the next flush unless its message goes


class HitBuffer:
    """Hits waiting to be written, added by the routes and taken by the flusher on the app's event
    loop. Each flusher waits on an event of its own loop (``attach``): one runtime may serve
    several apps, each on its own loop (tests run a live server and test clients side by side),
    and an ``asyncio.Event`` can only be awaited on the loop it was first awaited on."""

    def __init__(self, capacity: int = MAX_BUFFERED) -> None:
        self._capacity = capacity
        self._hits: list[Hit] = []
        self._flushers: dict[asyncio.Event, asyncio.AbstractEventLoop] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._hits)

    def add(self, hit: Hit) -> bool:
        """Keep ``hit`` for the next flush; False (and counted) when the buffer is full."""
        if len(self._hits) >= self._capacity:
            self.dropped += 1
            metrics.TRACKING_HITS.labels(outcome="dropped").inc()
            return False
        self._hits.append(hit)
        if len(self._hits) >= FLUSH_BATCH:
            self.wake()
        return True

    def take(self, now: datetime, *, everything: bool = False) -> list[Hit]:
        """The hits to flush now: all of them, or those older than ``HOLD_SECONDS`` together
        with every other hit of their messages."""
        if everything:
            taken, self._hits = self._hits, []
            return taken
        cutoff = now - timedelta(seconds=HOLD_SECONDS)
        due = {hit.message_id for hit in self._hits if hit.at <= cutoff}
        if not due:
            return []
        taken = [hit for hit in self._hits if hit.message_id in due]
        self._hits = [hit for hit in self._hits if hit.message_id not in due]
        return taken

    def give_back(self, hits: list[Hit]) -> None:
        """Hits a failed flush could not write, ahead of the newer ones, within the bound."""
        room = max(self._capacity - len(self._hits), 0)
        lost = len(hits) - room
        if lost > 0:
            self.dropped += lost
            metrics.TRACKING_HITS.labels(outcome="dropped").inc(lost)
        self._hits = hits[:room] + self._hits

    def attach(self) -> asyncio.Event:
        """A wake-up for a flusher on the running event loop; ``detach`` it when it stops."""
        ready = asyncio.Event()
        self._flushers[ready] = asyncio.get_running_loop()
        return ready

    def detach(self, ready: asyncio.Event) -> None:
        self._flushers.pop(ready, None)

    @staticmethod
    async def wait(ready: asyncio.Event, seconds: float) -> None:
        """Until ``FLUSH_BATCH`` hits wait (or a wake-up) or ``seconds`` passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), seconds)
        ready.clear()

    def wake(self) -> None:
        """Wake every flusher, each on its own loop (thread-safe)."""
        for ready, loop in list(self._flushers.items()):
            with contextlib.suppress(RuntimeError):  # its loop has just closed
                loop.call_soon_threadsafe(ready.set)


def flush(runtime: Runtime, hits: list[Hit]) -> Flushed:
    """Write ``hits`` in one transaction (``record.record_hits``)."""
    with transaction(runtime.sessions) as session:
        flushed = record_hits(session, hits, runtime.clock.now())
    metrics.TRACKING_HITS.labels(outcome="recorded").inc(flushed.recorded)
    metrics.TRACKING_HITS.labels(outcome="orphaned").inc(flushed.orphaned)
    return flushed


async def _flush_loop(
    runtime: Runtime, buffer: HitBuffer, ready: asyncio.Event, stop: asyncio.Event
) -> None:
    while True:
        await buffer.wait(ready, FLUSH_SECONDS)
        final = stop.is_set()
        hits = buffer.take(runtime.clock.now(), everything=final)
        if hits:
            try:
                await asyncio.to_thread(flush, runtime, hits)
            except Exception:
                log.exception("could not record %d tracking hits; retrying", len(hits))
                if final:
                    return  # shutting down with the database gone: nothing more to try
                buffer.give_back(hits)
        if final:
            return


@contextlib.asynccontextmanager
async def flushing(runtime: Runtime) -> AsyncIterator[Callable[[], None]]:
    """Run the flusher for the app's lifespan; at its end, flush what is left. Yields a function
    that flushes at the next tick (tests)."""
    stop = asyncio.Event()
    buffer = runtime.hits
    ready = buffer.attach()
    task = asyncio.create_task(_flush_loop(runtime, buffer, ready, stop))
    try:
        yield buffer.wake
    finally:
        stop.set()
        ready.set()
        try:
            await task
        finally:
            buffer.detach(ready)
