"""Helpers for measuring a throttle where its promise is made: arrivals at the SMTP server."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, update

from tests.smtp_server import SmtpTestServer
from tidings.db.engine import transaction
from tidings.db.models import Message, Throttle
from tidings.runtime import Runtime


def throttle_backlog(runtime: Runtime, tenant_id: int, per_second: int, count: int) -> list[str]:
    """Limit the tenant to ``per_second`` and queue ``count`` messages; their recipients."""
    now = datetime.now(UTC)
    recipients = [f"r{i}@example.edu" for i in range(count)]
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Throttle)
            .where(Throttle.tenant_id == tenant_id)
            .values(enabled=True, per_second=per_second)
        )
        session.execute(
            insert(Message),
            [
                {
                    "tenant_id": tenant_id,
                    "to_address": to,
                    "subject": "Throttled",
                    "text": "One of a backlog.",
                    "priority": 5,
                    "status": "queued",
                    "not_before": now,
                    "expires_at": now + timedelta(hours=1),
                    "created_at": now,
                    "updated_at": now,
                }
                for to in recipients
            ],
        )
    return recipients


def arrivals(server: SmtpTestServer, recipients: list[str]) -> list[float]:
    """When each recipient's first RCPT TO reached the server (monotonic), in order."""
    return sorted(times[0] for r in recipients if (times := server.attempt_times(r)))


def busiest(times: list[float], seconds: float) -> int:
    """The most arrivals in any window ``[t, t + seconds)``."""
    times = sorted(times)
    worst, left = 0, 0
    for right, moment in enumerate(times):
        while moment - times[left] >= seconds:
            left += 1
        worst = max(worst, right - left + 1)
    return worst


def share_of_limit(times: list[float], per_second: int, seconds: float) -> float:
    """What was delivered in the first ``seconds`` after the first arrival, over the limit."""
    first = min(times)
    return sum(1 for t in times if t < first + seconds) / (per_second * seconds)


@contextmanager
def collector_paused() -> Iterator[None]:
    """The test server runs in this process: a collection of pytest's heap stalls it for tens of
    milliseconds (as measured in a Python SMTP server), and arrivals that left on time would
    bunch up behind the pause. A real receiving server's own pauses are not the sender's."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()
