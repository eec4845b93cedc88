"""Sending throttled mail at its slots: never before, and not at all when it would start too late.

A claim gives each throttled message a slot on the database's clock (``delivery/throttle.py``),
converted here to this process's monotonic clock by the reading the claim took
(``ClockReading``: a converted slot is never reached early). Messages whose slots fall within
one ``SEND_TICK`` go out in one transport call at the tick's end, late by less than a tick. The
windows' bound allows each send to start at most ``send_by``: a message the event loop reaches
later than that (a stalled process, a slow render) is not sent but handed back, to go back to
the queue with no attempt spent.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from tidings.queue.claimed import ClaimedMessage, ClockReading

#: Throttled messages whose slots fall within one tick go out in one transport call, at its end.
SEND_TICK = 0.001  # seconds

T = TypeVar("T")
Batch = list[tuple[ClaimedMessage, T]]


async def send_in_slots(
    ready: Sequence[tuple[ClaimedMessage, T]],
    clock: ClockReading,
    send: Callable[[Batch[T]], Awaitable[None]],
) -> list[ClaimedMessage]:
    """Send unthrottled messages at once and the others at their slots; the messages that were
    not sent because their start came after their ``send_by``."""
    groups: dict[float, Batch[T]] = defaultdict(list)
    at_once: Batch[T] = []
    for message, payload in ready:
        if message.send_at is None:
            at_once.append((message, payload))
        else:
            tick = math.ceil(clock.local_time(message.send_at) / SEND_TICK) * SEND_TICK
            groups[tick].append((message, payload))
    missed: list[ClaimedMessage] = []

    async def at_slot(tick: float, group: Batch[T]) -> None:
        # A timer may fire up to a clock tick early; a slot must never be reached early.
        while (wait := tick - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)
        started = time.monotonic()
        on_time: Batch[T] = []
        for message, payload in group:
            assert message.send_by is not None
            if started <= clock.local_time(message.send_by):
                on_time.append((message, payload))
            else:
                missed.append(message)
        if on_time:
            await send(on_time)

    async def now(batch: Batch[T]) -> None:
        if batch:
            await send(batch)

    # Every send finishes before an error surfaces: none may still be on its way to the server
    # when the batch's outcomes are written.
    done = await asyncio.gather(
        now(at_once),
        *(at_slot(tick, group) for tick, group in sorted(groups.items())),
        return_exceptions=True,
    )
    for error in done:
        if isinstance(error, BaseException):
            raise error
    return missed
