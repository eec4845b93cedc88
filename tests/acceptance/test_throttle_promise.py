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
