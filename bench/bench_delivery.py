"""Delivery benchmarks on PostgreSQL: fan-out, end-to-end throughput, wake-up latency, API latency.

    python bench/bench_delivery.py [--recipients 100000] [--workers 2] [--concurrency N]
        [--peers [--peer-messages 20000]] [--skip-throughput] [--skip-latency]
        [--api-processes 1] [--api-rate 200]

``--peers``: before the workers start, the peers of ``bench/peers/`` send into the same smtp-sink
(smtp-source, the physical limit; smtplib with pre-built bytes, the Python ceiling), and the
throughput is also printed as a share of each.

Needs PostgreSQL at 127.0.0.1:5432 (user postgres) and Postfix's smtp-sink and smtp-source
(bench/setup.sh installs them). Everything runs on 127.0.0.1. It prints figures and asserts
nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from aiosmtpd.controller import Controller
from bench_smtp_clients import smtp_sink
from databases import postgres_database
from httpload import open_loop, post_json
from peers import smtp_source, smtplib_ceiling
from sqlalchemy import text

from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import Template
from tidings.runtime import build_runtime
from tidings.services import campaigns, domains, tenants
from tidings.transports.dkim_sign import ALGORITHMS

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-" + "y" * 40
HTML = (
    "<p>Dear {{ first_name }},</p><p>{{ personal_message }}</p>"
    + "<p>"
    + "Lorem ipsum dolor sit amet. " * 120
    + "</p>"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(url: str, transport: str, data_dir: str) -> dict[str, str]:
    return {
        **os.environ,
        "TIDINGS_DATABASE_URL": url,
        "TIDINGS_TRANSPORT_URL": transport,
        "TIDINGS_SECRET_KEY": SECRET,
        "TIDINGS_DATA_DIR": data_dir,
        "TIDINGS_POLL_SECONDS": "1",
    }


def bench_campaign(
    url: str,
    data_dir: str,
    recipients: int,
    workers: int,
    concurrency: int | None,
    peer_messages: int | None = None,
    dkim: str | None = None,
) -> None:
    runtime = build_runtime(
        Settings(database_url=url, secret_key=SECRET, data_dir=Path(data_dir)), migrate=True
    )
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        tenant, _ = tenants.create_tenant(session=session, name="bench", now=now)
        tid = tenant.id
        session.execute(
            text(
                "INSERT INTO contacts (tenant_id, email, first_name, attributes, status, created_at, updated_at) "
                "SELECT :t, 'user' || g || '@example.com', 'User' || g, '{}'::jsonb, 'active', now(), now() "
                "FROM generate_series(1, :n) g"
            ),
            {"t": tid, "n": recipients},
        )
        session.execute(
            text("INSERT INTO lists (tenant_id, name, created_at) VALUES (:t, 'all', now())"),
            {"t": tid},
        )
        list_id = session.scalar(text("SELECT id FROM lists WHERE tenant_id = :t"), {"t": tid})
        session.execute(
            text(
                "INSERT INTO list_members (list_id, contact_id, tenant_id, added_at) SELECT :l, id, :t, now() FROM contacts WHERE tenant_id = :t"
            ),
            {"l": list_id, "t": tid},
        )
        template = Template(
            tenant_id=tid,
            name="news",
            subject="Hello {{ first_name }}",
            html=HTML,
            created_at=now,
            updated_at=now,
        )
        session.add(template)
        session.flush()
        from_address = None
        if dkim is not None:
            # A sender domain as if its DNS record had been verified: every message is signed.
            sender = domains.create_domain(
                session=session,
                tenant_id=tid,
                domain="mail.example.com",
                algorithm=dkim,
                secret_key=SECRET,
                now=now,
            )
            sender.status = domains.VERIFIED
            from_address = "News <news@mail.example.com>"
        draft = campaigns.CampaignDraft(
            name="bench",
            template_id=template.id,
            list_ids=[list_id],
            data={"personal_message": "Grades are due Friday."},
            from_address=from_address,
        )
        campaign = campaigns.create_campaign(session=session, tenant_id=tid, draft=draft, now=now)
        campaign_id = campaign.id
    started = time.perf_counter()
    with transaction(runtime.sessions) as session:
        campaign = campaigns.start_campaign(
            session=session,
            tenant_id=tid,
            campaign_id=campaign_id,
            now=datetime.now(UTC),
            ttl_seconds=86400,
        )
        queued = campaign.recipient_count
    fan_out = time.perf_counter() - started
    # An audience over one chunk starts preparing: the workers write the rest as they send, so
    # the throughput below, timed from their start, includes that part of the fan-out.
    print(
        f"start: {queued} of {recipients} recipients queued by the start itself in {fan_out:.2f} s"
    )

    sink = contextlib.ExitStack()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        port = sink.enter_context(smtp_sink())
        peers = run_peers(port, peer_messages) if peer_messages else {}
        environment = env_for(url, f"smtp://127.0.0.1:{port}?tls=none", data_dir)
        procs = [start_worker(environment, concurrency) for _ in range(workers)]
        started = time.perf_counter()
        sent = 0
        progress: list[tuple[float, int]] = [(0.0, 0)]  # (seconds since the workers started, sent)
        peak_rss = 0
        cpu = 0.0
        while time.perf_counter() - started < 3600:
            time.sleep(0.5)
            # The triggers' running count (migration 0014): a count of the campaign's rows would
            # itself slow down as they pile up, and take CPU from what is measured.
            with runtime.sessions() as session:
                sent = int(
                    session.scalar(
                        text(
                            "SELECT coalesce(sum(count), 0) FROM message_counts "
                            "WHERE tenant_id = :t AND status = 'sent'"
                        ),
                        {"t": tid},
                    )
                )
            progress.append((time.perf_counter() - started, sent))
            peak_rss = max(peak_rss, *(resident_bytes(proc.pid) for proc in procs))
            cpu = sum(cpu_seconds(proc.pid) for proc in procs)
            if sent >= recipients:
                break
        elapsed = time.perf_counter() - started
        options = "default options" if concurrency is None else f"--concurrency {concurrency}"
        print(
            f"throughput: {sent} messages through {workers} worker processes ({options}) into smtp-sink "
            f"in {elapsed:.1f} s = {sent / elapsed:,.0f} messages/s"
        )
        first, last = share_rate(progress, 0.0, 0.1), share_rate(progress, 0.9, 1.0)
        print(
            f"  first 10 %: {first:,.0f} messages/s, last 10 %: {last:,.0f} messages/s "
            f"({(last / first - 1) * 100:+.1f} %); peak worker RSS {peak_rss / 2**20:.0f} MB"
        )
        # CPU time does not depend on what else the machine runs as much as the rate does.
        print(
            f"  worker CPU (render processes included): {cpu / max(sent, 1) * 1e6:,.0f} µs a message"
        )
        if peers:
            print(
                f"Tidings {sent / elapsed:,.0f} msg/s = "
                + ", ".join(
                    f"{sent / elapsed / rate:.1%} of {name}" for name, rate in peers.items()
                )
            )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
        sink.close()
        runtime.close()


def run_peers(port: int, messages: int) -> dict[str, float]:
    """The peers' messages/s into the smtp-sink on ``port``, each printed as it is measured."""
    return {
        "smtp-source": smtp_source.measure(port, messages=messages),
        "smtplib ceiling": smtplib_ceiling.measure(port, messages=messages),
    }


def share_rate(progress: list[tuple[float, int]], low: float, high: float) -> float:
    """Messages per second between the moments ``low`` and ``high`` shares of the total were sent
    (each moment interpolated between the two readings around it)."""
    total = progress[-1][1]

    def moment(count: float) -> float:
        for (t0, n0), (t1, n1) in itertools.pairwise(progress):
            if n1 >= count:
                return t0 if n1 == n0 else t0 + (t1 - t0) * (count - n0) / (n1 - n0)
        return progress[-1][0]

    start, end = moment(total * low), moment(total * high)
    return total * (high - low) / (end - start) if end > start else float("nan")


def resident_bytes(pid: int) -> int:
    """Resident memory of a process and its render processes (Linux, from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0
    own = int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    return own + sum(resident_bytes(int(child)) for child in children)


class Arrivals:
    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    async def handle_DATA(self, _server: object, _session: object, envelope: object) -> str:
        content: bytes = envelope.content  # type: ignore[attr-defined]
        for line in content.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                self.at[line[9:].decode()] = time.perf_counter()
                break
        return "250 OK"


def wait_http(url: str) -> None:
    for _ in range(200):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def percentile(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1] if len(values) >= 2 else values[0]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time so far of a process and its children (Linux, from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(cpu_seconds(int(child)) for child in children)


def start_worker(environment: dict[str, str], concurrency: int | None) -> subprocess.Popen[bytes]:
    options = [] if concurrency is None else ["--concurrency", str(concurrency)]
    return subprocess.Popen(
        [sys.executable, "-m", "tidings", "worker", *options],
        env=environment,
        stdout=subprocess.DEVNULL,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(60)


def bench_latency(url: str, data_dir: str, processes: int, rate: int) -> None:
    arrivals = Arrivals()
    smtp = Controller(arrivals, hostname="127.0.0.1", port=free_port())
    smtp.start()
    api_port = free_port()
    environment = env_for(url, f"smtp://127.0.0.1:{smtp.port}?tls=none", data_dir)
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidings",
            "serve",
            "--port",
            str(api_port),
            "--workers",
            "0",
            "--processes",
            str(processes),
        ],
        env=environment,
        stdout=subprocess.DEVNULL,
    )
    worker = start_worker(environment, 20)
    try:
        base = f"http://127.0.0.1:{api_port}"
        wait_http(f"{base}/healthz")
        key = (
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tidings",
                    "tenant",
                    "create",
                    f"lat-{uuid.uuid4().hex[:6]}",
                ],
                env=environment,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        headers = {"Authorization": f"Bearer {key}"}
        time.sleep(2)  # the worker is idle and listening
        latencies: list[float] = []
        with httpx.Client(base_url=base, headers=headers) as client:
            for i in range(100):
                subject = f"latency {i}"
                posted = time.perf_counter()
                answer = client.post(
                    "/v1/messages",
                    json={"to": f"l{i}@example.com", "subject": subject, "text": "x"},
                )
                answer.raise_for_status()
                while subject not in arrivals.at and time.perf_counter() - posted < 10:
                    time.sleep(0.0005)
                latencies.append((arrivals.at[subject] - posted) * 1000)
                time.sleep(0.05)
        print(
            f"latency POST /v1/messages -> SMTP receipt, idle worker: p50 {statistics.median(latencies):.1f} ms, "
            f"p95 {percentile(latencies, 95):.1f} ms, max {max(latencies):.1f} ms (n={len(latencies)})"
        )
        # Under load the worker delivers into smtp-sink, as in production to a remote server:
        # an in-process Python SMTP server would take the CPU the API is being measured on.
        stop(worker)
        sink_port = free_port()
        sink = subprocess.Popen(
            ["/usr/sbin/smtp-sink", "-u", "postfix", f"127.0.0.1:{sink_port}", "1000"]
        )
        worker = start_worker(env_for(url, f"smtp://127.0.0.1:{sink_port}?tls=none", data_dir), 50)
        try:
            api_load(api_port, headers, api.pid, processes, rate)
        finally:
            sink.terminate()
    finally:
        stop(api)
        stop(worker)
        smtp.stop()


def api_load(
    port: int, headers: dict[str, str], pid: int, processes: int, rate: int = 200, seconds: int = 10
) -> None:
    host = f"127.0.0.1:{port}"

    def request(i: int) -> bytes:
        body = {"to": f"a{i}@example.com", "subject": f"load {i}", "text": "x"}
        return post_json("/v1/messages", body, headers, host)

    asyncio.run(open_loop("127.0.0.1", port, request, rate=50, seconds=2))  # warm-up
    cpu = cpu_seconds(pid)
    result = asyncio.run(open_loop("127.0.0.1", port, request, rate=rate, seconds=seconds))
    per_request = (cpu_seconds(pid) - cpu) / len(result.latencies_ms) * 1000
    latencies = result.latencies_ms
    print(
        f"API ({processes} process{'es' if processes > 1 else ''}) POST /v1/messages at {rate} req/s "
        f"for {seconds} s, open loop: "
        f"{len(latencies) / result.elapsed:.0f}/s answered, statuses {result.statuses}, "
        f"{result.errors} connection errors; p50 {statistics.median(latencies):.1f} ms, "
        f"p99 {percentile(latencies, 99):.1f} ms; API process CPU {per_request:.2f} ms a request"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="tidings worker --concurrency; by default the worker is started without options",
    )
    parser.add_argument("--api-processes", type=int, default=1, help="tidings serve --processes")
    parser.add_argument(
        "--api-rate", type=int, default=200, help="requests/s of the open-loop load"
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="run bench/peers/ into the same smtp-sink first; print the throughput as a share of each",
    )
    parser.add_argument(
        "--peer-messages", type=int, default=20_000, help="messages each peer sends"
    )
    parser.add_argument(
        "--dkim",
        choices=sorted(ALGORITHMS),
        default=None,
        help="send from a verified sender domain with a key of this algorithm: every message "
        "DKIM-signed",
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    subprocess.run(
        ["bash", str(ROOT / "bench" / "setup.sh")], check=True, stdout=subprocess.DEVNULL
    )
    with tempfile.TemporaryDirectory() as data_dir:
        if not args.skip_throughput:
            with postgres_database(purpose="delivery") as url:
                bench_campaign(
                    url,
                    data_dir,
                    args.recipients,
                    args.workers,
                    args.concurrency,
                    args.peer_messages if args.peers else None,
                    args.dkim,
                )
        if args.skip_latency:
            return
        with postgres_database(purpose="latency") as url:
            subprocess.run(
                [sys.executable, "-m", "tidings", "db", "upgrade"],
                env=env_for(url, "memory://", data_dir),
                check=True,
                stdout=subprocess.DEVNULL,
            )
            bench_latency(url, data_dir, args.api_processes, args.api_rate)


if __name__ == "__main__":
    main()
