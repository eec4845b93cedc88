"""Prometheus metrics: counters the delivery code bumps as it works, and gauges read from the
database at scrape time.

The counters and the histogram live in this process (``prometheus_client``'s default registry):
``/metrics`` of ``tidings serve`` shows those of its embedded workers; a separate ``tidings
worker`` exposes its own with ``--metrics-port``. What the queue holds is the same for every
process, so it is not counted in memory at all: ``DatabaseCollector`` reads it with one grouped
query per scrape (``queue.status``), and the answer cannot drift from the database. Those
gauges drive alerts, so they are read from the primary even when a read replica serves the
dashboards: an alert must not wait for, or be hidden by, the replica's lag.

Metric names (a contract with dashboards and alerts; add, never rename):

- ``tidings_messages`` (gauge): messages by ``tenant_id`` and ``status``
- ``tidings_queue_depth`` (gauge): queued messages due now, by ``tenant_id``
- ``tidings_queue_oldest_waiting_seconds`` (gauge): how long the longest-waiting due message waited
- ``tidings_workers`` (gauge): worker processes with a fresh heartbeat
- ``tidings_database_up`` (gauge): 1 when the scrape could read the database
- ``tidings_database_replica_up`` (gauge, with a read replica): 1 when the scrape could read it
- ``tidings_database_replica_lag_seconds`` (gauge, with a read replica): how far its data is
  behind the primary's (0 when it has replayed all it received)
- ``tidings_send_latency_seconds`` (histogram): seconds the transport took per delivery attempt
- ``tidings_throttle_waits_total`` (counter): times a tenant was held back by a throttle
- ``tidings_delivery_attempts_total`` (counter): delivery attempts by ``outcome``
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from tidings.db.engine import transaction
from tidings.domain import MessageStatus
from tidings.queue.clock import db_now
from tidings.queue.status import QueueOverview, queue_overview

if TYPE_CHECKING:
    from tidings.db.replica import ReadReplica
    from tidings.runtime import Runtime

log = logging.getLogger("tidings.metrics")

#: The classic text exposition format, which every Prometheus version scrapes; our metric names
#: are all legacy-valid, so the body is the same in the newer 1.0.0 format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds: from a fast local outbox (milliseconds) to a slow remote SMTP server (tens of seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Outcomes of an attempt, as the transports report them; pre-created so they show as 0.
ATTEMPT_OUTCOMES = ("sent", "transient", "permanent")

SEND_LATENCY = Histogram(
    "tidings_send_latency_seconds",
    "Seconds the transport took to send one batch (messages of a batch go out concurrently).",
    buckets=LATENCY_BUCKETS,
)
THROTTLE_WAITS = Counter(
    "tidings_throttle_waits",
    "Times a tenant's messages were held back by a throttle (its limits, a recipient domain's,"
    " or a provider asking to slow down).",
)
ATTEMPTS = Counter(
    "tidings_delivery_attempts",
    "Delivery attempts by outcome (sent, transient, permanent).",
    labelnames=("outcome",),
)
for _outcome in ATTEMPT_OUTCOMES:
    ATTEMPTS.labels(outcome=_outcome)


class DatabaseCollector(Collector):
    """Gauges derived from the queue itself, read once per scrape, on the database's clock."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("tidings_database_up", "1 when this scrape could read the database.")
        try:
            with transaction(self._runtime.sessions) as session:
                overview = queue_overview(session=session, now=db_now(session))
        except Exception:  # a scrape reports the outage; it never fails with a 500
            log.warning("metrics: the database could not be read", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _queue_families(overview)
        if self._runtime.replica is not None:
            yield from _replica_families(self._runtime.replica)


def _replica_families(replica: ReadReplica) -> Iterable[Metric]:
    up = GaugeMetricFamily(
        "tidings_database_replica_up", "1 when this scrape could read the read replica."
    )
    try:
        lag = replica.lag_seconds()
    except Exception:  # reported by the replica (rate-limited) and by the gauge
        up.add_metric([], 0)
        yield up
        return
    up.add_metric([], 1)
    yield up
    if lag is not None:
        yield GaugeMetricFamily(
            "tidings_database_replica_lag_seconds",
            "Seconds the read replica's data is behind the primary's (0: it has replayed all it"
            " received).",
            value=lag,
        )


def _queue_families(overview: QueueOverview) -> Iterable[Metric]:
    messages = GaugeMetricFamily(
        "tidings_messages", "Messages by tenant and status.", labels=["tenant_id", "status"]
    )
    depth = GaugeMetricFamily(
        "tidings_queue_depth", "Queued messages due now, by tenant.", labels=["tenant_id"]
    )
    for tenant in overview.tenants:
        tenant_id = str(tenant.tenant_id)
        for status in MessageStatus:
            messages.add_metric([tenant_id, status.value], tenant.counts.get(status.value, 0))
        depth.add_metric([tenant_id], tenant.ready)
    yield messages
    yield depth
    yield GaugeMetricFamily(
        "tidings_queue_oldest_waiting_seconds",
        "Seconds the longest-waiting due message has waited since it became due (0: none waits).",
        value=overview.oldest_waiting_seconds(),
    )
    yield GaugeMetricFamily(
        "tidings_workers",
        "Worker processes whose heartbeat is fresh.",
        value=overview.workers_alive,
    )


class _Exposition(Collector):
    """The process's own metrics (default registry) followed by the database's."""

    def __init__(self, *sources: Collector) -> None:
        self._sources = sources

    def collect(self) -> Iterable[Metric]:
        for source in self._sources:
            yield from source.collect()


def render_metrics(runtime: Runtime) -> bytes:
    """The Prometheus text exposition for ``/metrics``."""
    return generate_latest(_Exposition(REGISTRY, DatabaseCollector(runtime)))
