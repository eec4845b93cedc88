"""An in-process transport for tests: records every attempt and answers what it was told to.

It builds the MIME bytes like the real transports do, so a message that SMTP would refuse (a
header with a line break) fails here the same way, as ``Permanent``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tidings.domain.message import Outcome, OutgoingMessage, Permanent, Sent
from tidings.transports.base import Abandoned, send_on_time
from tidings.transports.mime import build_message_bytes

Responder = Callable[[OutgoingMessage], Outcome | None]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One message handed to ``send`` and what the transport answered."""

    message: OutgoingMessage
    raw: bytes | None  # the MIME bytes, None when they could not be built
    outcome: Outcome


class MemoryTransport:
    """Scriptable fake: ``script(address, Transient(...), Sent())`` answers the next attempts to
    that address in order; ``responder`` decides for any message; otherwise every message is sent.

    Precedence: a scripted outcome, then ``responder`` (``None`` means "no opinion"), then
    ``Sent``. ``delay`` (seconds) makes each ``send`` call take that long, to test leases.
    """

    lead = 0.0  # nothing is written before the moment of a send_at

    def __init__(self, *, responder: Responder | None = None, delay: float = 0.0) -> None:
        self.responder = responder
        self.delay = delay
        self.attempts: list[Attempt] = []
        self.batches: list[int] = []  # the size of each send() call, in order
        self.closed = False
        self._scripts: defaultdict[str, deque[Outcome]] = defaultdict(deque)
        self._ids = itertools.count(1)

    def script(self, to_address: str, *outcomes: Outcome) -> None:
        """Answer the next attempts to ``to_address`` with ``outcomes``, one each, in order."""
        self._scripts[to_address.lower()].extend(outcomes)

    @property
    def sent(self) -> list[OutgoingMessage]:
        """Messages answered ``Sent``, in order (a retried message appears once per success)."""
        return [a.message for a in self.attempts if isinstance(a.outcome, Sent)]

    def attempts_to(self, to_address: str) -> list[Attempt]:
        return [a for a in self.attempts if a.message.to_address.lower() == to_address.lower()]

    async def send(self, batch: Sequence[OutgoingMessage]) -> list[Outcome]:
        if self.closed:
            raise RuntimeError("send() on a closed MemoryTransport")
        self.batches.append(len(batch))
        if self.delay:
            await asyncio.sleep(self.delay)
        return [self._attempt(message) for message in batch]

    async def send_at(
        self,
        batch: Sequence[OutgoingMessage],
        *,
        at: float,
        by: float,
        lead: float | None = None,  # noqa: ARG002 (nothing is written ahead)
    ) -> list[Outcome | Abandoned | None]:
        """One write, at ``at``: there is no envelope to send ahead (``lead`` is not used)."""
        return await send_on_time(self, batch, at=at, by=by)

    async def prepare(self, count: int) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        self.closed = True

    def _attempt(self, message: OutgoingMessage) -> Outcome:
        raw: bytes | None
        outcome: Outcome
        try:
            raw = build_message_bytes(message)
        except ValueError as exc:
            raw, outcome = None, Permanent(f"message cannot be serialised: {exc}")
        else:
            outcome = self._decide(message)
        self.attempts.append(Attempt(message=message, raw=raw, outcome=outcome))
        return outcome

    def _decide(self, message: OutgoingMessage) -> Outcome:
        queue = self._scripts.get(message.to_address.lower())
        if queue:
            return queue.popleft()
        if self.responder is not None:
            decided = self.responder(message)
            if decided is not None:
                return decided
        return Sent(provider_id=f"memory-{next(self._ids)}")
