"""Helpers for measuring a throttle where its promise is made: arrivals at the SMTP server.

The receiving server runs in a process of its own, as it would run on a machine of its own: in
pytest's process its thread competes with pytest's for the interpreter and the CPU, and arrivals
that left on time were measured there up to 27 ms late (in its own process, up to 42 ms while
other work loaded the machine): the receiver's lag, not the sender's. ``python -m
tests.acceptance.throttled`` is that process.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select, update

from tests.smtp_server import SmtpTestServer
from tidings.db.engine import transaction
from tidings.db.models import Message, Throttle
from tidings.runtime import Runtime

RECEIVER_NICENESS = -10  # with root (CI's) the server runs before normal processes


@dataclass
class ServerProcess:
    url: str
    #: ``time.monotonic()`` (one clock for every process of the machine) at each RCPT TO, by
    #: recipient; filled when the ``smtp_server_process`` block ends.
    attempt_times: dict[str, list[float]] = field(default_factory=dict)


@contextmanager
def smtp_server_process(far: dict[str, float] | None = None) -> Iterator[ServerProcess]:
    """``tests/smtp_server.py``'s server in a child process, for measuring arrival times;
    ``far``: EHLO names whose RCPTs it answers that many seconds late (``far_away``)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.acceptance.throttled", json.dumps(far or {})],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    server = ServerProcess(url=child.stdout.readline().strip())
    try:
        yield server
    finally:
        out, _ = child.communicate("done\n", timeout=30)
        server.attempt_times.update(json.loads(out))


def _serve(far: dict[str, float]) -> None:
    # A dedicated mail server is not slowed down by the sender's machine. Here it shares the
    # CPU with the workers under test (and whatever else runs): first in line when allowed.
    with contextlib.suppress(OSError):
        os.nice(RECEIVER_NICENESS)
    with SmtpTestServer() as server:
        for helo, seconds in far.items():
            server.far_away(helo, seconds)
        # Nothing it keeps has cycles; a collection would only pause arrivals.
        gc.disable()
        sys.stdout.write(f"{server.url}\n")
        sys.stdout.flush()
        sys.stdin.readline()
        sys.stdout.write(json.dumps(server.all_attempt_times()))


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


def arrivals(server: ServerProcess, recipients: list[str]) -> list[float]:
    """When each recipient's first RCPT TO reached the server (monotonic), in order."""
    return sorted(times[0] for r in recipients if (times := server.attempt_times.get(r.lower())))


def delivered(runtime: Runtime, tenant_id: int) -> int:
    """How many of the tenant's messages are recorded as sent."""
    with runtime.sessions() as session:
        return (
            session.scalar(
                select(func.count()).where(Message.tenant_id == tenant_id, Message.status == "sent")
            )
            or 0
        )


def share_of_limit(times: list[float], per_second: int, seconds: float) -> float:
    """What was delivered in the first ``seconds`` after the first arrival, over the limit."""
    first = min(times)
    return sum(1 for t in times if t < first + seconds) / (per_second * seconds)


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
