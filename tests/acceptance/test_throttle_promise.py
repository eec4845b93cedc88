"""A per-second limit, measured at a real SMTP server with a real worker process: under a backlog
at least 97 % of it arrives, and no rolling second ever holds more than the limit.

Each case takes its backlog's length in real time (about ten seconds): the promise is about time
at the receiving end, which a simulated clock cannot show (``tests/unit/test_throttle_property``
covers the arithmetic for any limits and workers).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.acceptance.conftest import WorkerProcess, wait_until
from tests.acceptance.throttled import (
    arrivals,
    delivered,
    share_of_limit,
    smtp_server_process,
    throttle_backlog,
)
from tests.conftest import TenantKeys
from tidings.delivery.throttle import busiest
from tidings.runtime import Runtime

MEASURED_SECONDS = 10.0  # at least 5 windows of a second, long enough for 97 % to mean something


@pytest.mark.parametrize("per_second", [5, 50])
@pytest.mark.timeout(60)
def test_a_per_second_limit_is_used_and_never_exceeded_at_the_server(
    runtime: Runtime,
    acme: TenantKeys,
    worker_process: Callable[..., WorkerProcess],
    per_second: int,
) -> None:
    count = int(per_second * (MEASURED_SECONDS + 1))
    recipients = throttle_backlog(runtime, acme.tenant_id, per_second, count)
    with smtp_server_process() as server:
        worker_process(concurrency=50, TIDINGS_TRANSPORT_URL=server.url)
        wait_until(lambda: delivered(runtime, acme.tenant_id) == count, MEASURED_SECONDS + 30)
    times = arrivals(server, recipients)
    assert len(times) == count
    assert busiest(times, 1.0) <= per_second
    assert share_of_limit(times, per_second, MEASURED_SECONDS) >= 0.97


@pytest.mark.timeout(60)
def test_workers_whose_servers_answer_at_different_distances_keep_the_limit_at_rcpt(
    runtime: Runtime, acme: TenantKeys, worker_process: Callable[..., WorkerProcess]
) -> None:
    """One worker's envelopes take 40 ms to be answered, the other's under 1 ms: each writes its
    envelopes ahead of the slots by what it measured. Were each to use its own lead, the far one's
    RCPTs would land some 70 ms earlier against their slots than the near one's, and the seconds
    where one follows the other would hold more than the limit at RCPT."""
    per_second = 50
    count = int(per_second * (MEASURED_SECONDS + 1))
    recipients = throttle_backlog(runtime, acme.tenant_id, per_second, count)
    with smtp_server_process(far={"far.test": 0.040}) as server:
        worker_process(concurrency=50, TIDINGS_TRANSPORT_URL=server.url)
        worker_process(concurrency=50, TIDINGS_TRANSPORT_URL=f"{server.url}&helo=far.test")
        wait_until(lambda: delivered(runtime, acme.tenant_id) == count, MEASURED_SECONDS + 30)
    every_rcpt = sorted(t for r in recipients for t in server.attempt_times.get(r.lower(), []))
    assert busiest(every_rcpt, 1.0) <= per_second
    # Measured 97.0-97.2 %: the near worker's first claim spaced envelopes 10 ms ahead, and the
    # rise to the far one's lead cost its 70 ms once, which is 1.4 % of a 10 s run. Checked here
    # only to show that the far worker's mail was not simply given up at its slots.
    assert share_of_limit(arrivals(server, recipients), per_second, MEASURED_SECONDS) >= 0.95
