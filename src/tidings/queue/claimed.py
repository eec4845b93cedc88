"""What a claim hands to a worker: the leased messages and the token that fences their outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    id: int
    tenant_id: int
    campaign_id: int | None
    contact_id: int | None
    to_address: str
    template_id: int | None
    subject: str | None  # inline content (transactional without a stored template)
    html: str | None
    text: str | None
    data: dict[str, Any] | None
    from_address: str | None
    category: str | None
    priority: int
    attempts: int  # tries already made before this one
    expires_at: datetime
    idempotency_key: str | None
    event_at: datetime | None = None  # a reminder's event, which its template may show
    #: Reply-To, headers, attachment references, test send (services/message_features.py).
    features: dict[str, Any] | None = None
    # Tracking overrides of the message itself; None: its campaign's, else the tenant's setting.
    track_opens: bool | None = None
    track_clicks: bool | None = None
    # A throttled message's slot (epoch seconds, the database's clock): its send starts no sooner
    # than ``send_at`` and no later than ``send_by``, or it goes back to the queue unsent. None:
    # no limit applies, send at once.
    send_at: float | None = None
    send_by: float | None = None
    #: And its envelope is written this long before its slot: the throttle spaced both moments.
    send_lead: float = 0.0


@dataclass(frozen=True, slots=True)
class ClockReading:
    """The database's clock against this process's ``time.monotonic()``.

    The database read ``db`` at some moment between ``before`` and ``after`` (local time, just
    before the statement was sent and just after its answer came back). So a time converted with
    ``local_time`` is never reached early, only late by at most the round trip; and one
    converted with ``local_deadline`` is never passed: a start checked against it is on time
    however slow the round trip was.
    """

    db: float  # epoch seconds, the database's clock
    before: float  # time.monotonic() before the statement that read it
    after: float  # and after its answer

    def local_time(self, db_time: float) -> float:
        """The first local moment the database's clock is surely at ``db_time`` or later."""
        return self.after + (db_time - self.db)

    def local_deadline(self, db_time: float) -> float:
        """The last local moment the database's clock is surely not yet past ``db_time``."""
        return self.before + (db_time - self.db)


@dataclass(frozen=True, slots=True)
class Claim:
    token: str  # the lease token: every outcome write for these messages must present it
    now: datetime  # the database's time of the claim
    messages: list[ClaimedMessage]
    held_back: int = 0  # claimed but returned to the queue by a throttle
    #: (tenant, domain) pairs admitted under an adaptive rate: their successes raise it again.
    adaptive: frozenset[tuple[int, str]] = frozenset()
    clock: ClockReading | None = None  # read when a throttle applied: converts the slots
    # The earliest time (database's clock) a message this claim held back may be claimed again.
    wake_at: float | None = None
