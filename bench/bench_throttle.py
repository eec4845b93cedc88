"""Throttle utilisation measured where the promise is made, at the receiving SMTP server.

    PYTHONPATH=$PWD/src python bench/bench_throttle.py [--seconds 30] [--minute-windows 5]
        [--workers 1 3] [--rates 1 5 50 500] [--sqlite] [--measure-jitter]

For each limit and number of ``tidings worker`` processes: a backlog of mail to one tenant, and
an aiosmtpd server in its own process that notes ``time.monotonic()`` (one clock for every process
on the machine) at each RCPT TO and at each message's end of DATA. It prints the share of the
limit received (end of DATA) over ``--seconds`` (per-second limits) or ``--minute-windows``
minutes (per_minute=600), counted from the first message, and the busiest rolling window of the
whole run at either moment, which must never exceed the limit (every RCPT counts, an attempt
abandoned before its final dot too).

``--measure-jitter`` runs one worker in this process instead, to see each message's slot next
to its arrival: how late sends start after their slots, and the spread of arrival minus slot,
which the windows' jitter allowance (``delivery/throttle.py``) must cover.

PostgreSQL at 127.0.0.1:5432 (user postgres) unless ``--sqlite``. It prints figures and asserts
nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from databases import postgres_database, sqlite_database
from sqlalchemy import insert, update

from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import Message, Throttle
from tidings.delivery.throttle import busiest
from tidings.delivery.worker import Worker
from tidings.queue.claimed import Claim, ClaimedMessage
from tidings.runtime import build_runtime
from tidings.services import tenants
from tidings.transports.factory import open_transport

SECRET = "bench-secret-" + "t" * 40
WINDOW = {"per_second": 1.0, "per_minute": 60.0}
RECEIVER_NICENESS = -10  # as tests/acceptance/throttled.py runs its receiver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the recording SMTP server, in its own process ---------------------------------------------


def record(port: int) -> None:
    """Serve SMTP on ``port`` until SIGTERM, then print {recipient: [[RCPT times], [end of DATA
    times]]}: every attempt's RCPT counts, a transaction abandoned before its final dot too."""
    from aiosmtpd.controller import Controller

    arrivals: dict[str, list[list[float]]] = {}

    class Recorder:
        async def handle_EHLO(
            self, _server: Any, session: Any, _envelope: Any, hostname: str, responses: list[str]
        ) -> list[str]:
            # As Postfix and the big providers do: MAIL, RCPT and DATA in one write.
            session.host_name = hostname
            responses.insert(-1, "250-PIPELINING")
            return responses

        async def handle_RCPT(
            self, _server: Any, _session: Any, envelope: Any, address: str, _options: Any
        ) -> str:
            arrivals.setdefault(address, [[], []])[0].append(time.monotonic())
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
            now = time.monotonic()
            for address in envelope.rcpt_tos:
                arrivals[address][1].append(now)
            return "250 OK"

    # A dedicated mail server is not slowed down by the sender's machine; here it shares the two
    # cores with up to 8 workers and PostgreSQL, so it goes first when allowed (as root): its own
    # lag would bunch the arrivals it notes, which no sender can prevent.
    with contextlib.suppress(OSError):
        os.nice(RECEIVER_NICENESS)
    controller = Controller(Recorder(), hostname="127.0.0.1", port=port)
    controller.start()
    # A collection in this process stalls every arrival behind it by 70-100 ms (measured): the
    # server's own pause, which no sender can keep from bunching arrivals. It records a few
    # thousand lists; no cycles to collect.
    gc.disable()
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    while not stop:
        time.sleep(0.05)
    controller.stop()
    print(json.dumps(arrivals), flush=True)


@contextmanager
def smtp_recorder() -> Iterator[tuple[int, dict[str, list[list[float]]]]]:
    """A recording server in a child process; the dict fills when the block ends."""
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--record", str(port)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    arrivals: dict[str, list[list[float]]] = {}
    try:
        yield port, arrivals
    finally:
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=60)
        arrivals.update(json.loads(out.strip().splitlines()[-1]))


# -- one case ----------------------------------------------------------------------------------


def prepare(runtime: Any, limit_name: str, limit: int, messages: int, label: str) -> int:
    """A tenant with the limit and a backlog of ``messages``; its id."""
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        tenant, _ = tenants.create_tenant(
            session=session, name=f"{label}-{uuid.uuid4().hex[:6]}", now=now
        )
        session.execute(
            update(Throttle)
            .where(Throttle.tenant_id == tenant.id)
            .values(enabled=True, **{limit_name: limit})
        )
        tenant_id = tenant.id
    rows = [
        {
            "tenant_id": tenant_id,
            "to_address": f"{label}-{i}@example.com",
            "subject": "Throttled",
            "text": "A message held to the tenant's limit.",
            "priority": 5,
            "status": "queued",
            "not_before": now,
            "expires_at": now + timedelta(days=1),
            "created_at": now,
            "updated_at": now,
        }
        for i in range(messages)
    ]
    with transaction(runtime.sessions) as session:
        for start in range(0, len(rows), 5000):
            session.execute(insert(Message), rows[start : start + 5000])
    return tenant_id


def run_case(
    url: str,
    data_dir: str,
    limit_name: str,
    limit: int,
    workers: int,
    period: float,
    concurrency: int | None,
) -> str:
    window = WINDOW[limit_name]
    runtime = build_runtime(
        Settings(database_url=url, secret_key=SECRET, data_dir=Path(data_dir)), migrate=True
    )
    label = f"{limit_name}{limit}w{workers}"
    wanted = int(limit * period / window)
    tenant_id = prepare(runtime, limit_name, limit, wanted + limit + 10, label)
    with smtp_recorder() as (port, arrivals):
        environment = {
            **os.environ,
            "TIDINGS_DATABASE_URL": url,
            "TIDINGS_TRANSPORT_URL": f"smtp://127.0.0.1:{port}?tls=none",
            "TIDINGS_SECRET_KEY": SECRET,
            "TIDINGS_DATA_DIR": data_dir,
        }
        options = [] if concurrency is None else ["--concurrency", str(concurrency)]
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "tidings", "worker", *options],
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        try:
            # Until the measured period has passed since the first arrival (which the recorder
            # only tells at the end): start-up plus the period plus a window to spare.
            time.sleep(period + window + 5)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(60)
    with transaction(runtime.sessions) as session:  # what is left must not go in the next case
        session.execute(
            update(Message)
            .where(Message.tenant_id == tenant_id, Message.status == "queued")
            .values(status="cancelled")
        )
    runtime.close()
    mine = [at for a, at in arrivals.items() if a.startswith(f"{label}-")]
    received = sorted(t for _, data in mine for t in data)
    first = received[0]
    delivered = sum(1 for t in received if t < first + period)
    share = delivered / (limit * period / window)
    worst_rcpt = busiest([t for rcpt, _ in mine for t in rcpt], window)
    worst_data = busiest(received, window)
    verdict = "ok" if max(worst_rcpt, worst_data) <= limit else "OVER THE LIMIT"
    return (
        f"{limit_name}={limit:<4} {workers} worker{'s' if workers > 1 else ' '}: "
        f"{delivered} in {period:.0f} s = {share:6.1%} of the limit; busiest {window:.0f} s "
        f"window {worst_rcpt} at RCPT, {worst_data} at end of DATA ({verdict})"
    )


# -- jitter: slot against arrival, one worker in this process ------------------------------------


class TimedWorker(Worker):
    """Notes each throttled message's slot (local time) and the moment its send started."""

    slots: dict[str, float]
    starts: dict[str, float]

    def _claim(self, limit: int) -> tuple[Claim, Any]:
        claim, context = super()._claim(limit)
        for m in claim.messages:
            if m.send_at is not None and claim.clock is not None:
                self.slots[m.to_address] = claim.clock.local_time(m.send_at)
        return claim, context

    async def _send(self, ready: list[tuple[ClaimedMessage, Any]], results: list[Any]) -> None:
        now = time.monotonic()
        for m, _ in ready:
            self.starts[m.to_address] = now
        await super()._send(ready, results)


def quantiles(values: list[float]) -> str:
    cuts = statistics.quantiles(values, n=1000)
    return (
        f"p50 {statistics.median(values) * 1000:.2f}  p99 {cuts[989] * 1000:.2f}  "
        f"p99.9 {cuts[998] * 1000:.2f}  max {max(values) * 1000:.2f} ms"
    )


def measure_jitter(url: str, data_dir: str, limit: int, seconds: float) -> None:
    settings = Settings(database_url=url, secret_key=SECRET, data_dir=Path(data_dir))
    runtime = build_runtime(settings, migrate=True)
    label = f"jitter{limit}"
    prepare(runtime, "per_second", limit, int(limit * seconds), label)
    with smtp_recorder() as (port, arrivals):
        transport = open_transport(f"smtp://127.0.0.1:{port}?tls=none", concurrency=20)
        worker = TimedWorker(runtime=runtime, transport=transport)
        worker.slots, worker.starts = {}, {}

        async def run() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            await asyncio.sleep(seconds + 3)
            stop.set()
            await task
            await transport.close()

        asyncio.run(run())
    runtime.close()
    sent = [a for a in worker.starts if a in worker.slots and a in arrivals]
    late = [worker.starts[a] - worker.slots[a] for a in sent]
    rcpt = [arrivals[a][0][0] - worker.starts[a] for a in sent]
    delay = [arrivals[a][0][0] - worker.slots[a] for a in sent]
    data = [arrivals[a][1][0] - worker.slots[a] for a in sent if arrivals[a][1]]
    print(f"per_second={limit}, one worker in this process, {len(sent)} messages:")
    print(f"  send start after its slot:          {quantiles(late)}")
    print(f"  RCPT at the server after the start: {quantiles(rcpt)}")
    for name, values in (("RCPT", delay), ("end of DATA", data)):
        ordered = sorted(values)
        spread = ordered[int(len(ordered) * 0.999)] - ordered[0]
        print(
            f"  {name} after the slot: min {ordered[0] * 1000:.2f} ms, spread to p99.9 "
            f"{spread * 1000:.2f} ms, to max {(ordered[-1] - ordered[0]) * 1000:.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--record", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--minute-windows", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--rates", type=int, nargs="+", default=[1, 5, 50, 500])
    parser.add_argument("--per-minute", type=int, default=600)
    parser.add_argument("--concurrency", type=int, help="tidings worker --concurrency")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument("--measure-jitter", action="store_true")
    args = parser.parse_args()
    if args.record:
        record(args.record)
        return
    database = sqlite_database() if args.sqlite else postgres_database(purpose="throttle")
    with tempfile.TemporaryDirectory() as data_dir, database as url:
        if args.measure_jitter:
            for rate in args.rates:
                measure_jitter(url, data_dir, rate, args.seconds)
            return
        for workers in args.workers:
            for rate in args.rates:
                result = run_case(
                    url, data_dir, "per_second", rate, workers, args.seconds, args.concurrency
                )
                print(result, flush=True)
            if args.minute_windows:
                period = 60.0 * args.minute_windows
                result = run_case(
                    url, data_dir, "per_minute", args.per_minute, workers, period, args.concurrency
                )
                print(result, flush=True)


if __name__ == "__main__":
    main()
