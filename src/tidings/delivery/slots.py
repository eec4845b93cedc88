"""Sending throttled mail at its slots: never before, and not at all when it would start too late.

A claim gives each throttled message a slot on the database's clock (``delivery/throttle.py``),
converted here to this process's monotonic clock by the reading the claim took
(``ClockReading``: a converted slot is never reached early). Messages whose slots fall within
one ``SEND_TICK`` (and sharing a lead) go to the transport together, ``SEND_LEAD`` before the
transport starts writing them (the claim's lead before the tick's end), and start at that end
(late by less than a tick): the transport builds them and checks out connections first,
then starts them at the moment asked for (``Transport.send_at``). The windows' bound allows each
send to start at most ``send_by``; a message that cannot start by then (a stalled process, a slow
render) is not sent but handed back, to go back to the queue with no attempt spent.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from tidings.queue.claimed import ClaimedMessage, ClockReading
from tidings.transports.base import wait_until

#: Throttled messages whose slots fall within one tick go out in one transport call, at its end.
SEND_TICK = 0.001  # seconds
#: A group goes to the transport this long before the transport starts writing it (its ``lead``
#: before the slot): enough to build its messages and check out connections, short enough that
#: few connections wait idle for their slot.
SEND_LEAD = 0.020  # seconds

T = TypeVar("T")
Batch = list[tuple[ClaimedMessage, T]]
#: Sends a batch now.
SendNow = Callable[[Batch[T]], Awaitable[None]]
#: Sends a batch starting at ``at`` and not after ``by`` (monotonic), its envelopes ``lead``
#: earlier; returns what did not start.
SendAt = Callable[[Batch[T], float, float, float], Awaitable[list[ClaimedMessage]]]


async def send_in_slots(
    ready: Sequence[tuple[ClaimedMessage, T]],
    clock: ClockReading,
    send_now: SendNow[T],
    send_at: SendAt[T],
) -> list[ClaimedMessage]:
    """Send unthrottled messages at once and the others at their slots; the messages that were
    not sent because they could not start by their ``send_by``."""
    groups: dict[tuple[float, float, float], Batch[T]] = defaultdict(list)
    at_once: Batch[T] = []
    for message, payload in ready:
        if message.send_at is None or message.send_by is None:
            at_once.append((message, payload))
        else:
            tick = math.ceil(clock.local_time(message.send_at) / SEND_TICK) * SEND_TICK
            deadline = clock.local_deadline(message.send_by)
            groups[tick, deadline, message.send_lead].append((message, payload))
    missed: list[ClaimedMessage] = []

    async def at_slot(tick: float, by: float, lead: float, group: Batch[T]) -> None:
        await wait_until(tick - SEND_LEAD - lead)
        missed.extend(await send_at(group, tick, by, lead))

    async def now(batch: Batch[T]) -> None:
        if batch:
            await send_now(batch)

    # Every send finishes before an error surfaces: none may still be on its way to the server
    # when the batch's outcomes are written.
    done = await asyncio.gather(
        now(at_once),
        *(at_slot(tick, by, lead, group) for (tick, by, lead), group in sorted(groups.items())),
        return_exceptions=True,
    )
    for error in done:
        if isinstance(error, BaseException):
            raise error
    return missed
