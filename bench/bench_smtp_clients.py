"""Which SMTP client should the transport use? Send N ~4 KB messages into Postfix's smtp-sink.

Compared, each with ``--concurrency`` persistent connections and the MIME bytes built per message:

* ``aiosmtplib sendmail``: a pool of ``aiosmtplib.SMTP`` connections, ``sendmail()`` per message;
* ``tidings pool``: ``tidings.transports.smtp.SmtpTransport`` (aiosmtplib opens the connection,
  transactions run pipelined on ``SmtpSession``), on asyncio and on uvloop;
* ``smtplib threads``: stdlib ``smtplib.SMTP`` connections, one per thread of a thread pool.

CPU is this process's user+system time per message (smtp-sink is a child, not counted).

Run ``bench/setup.sh`` once (installs smtp-sink), then::

    python bench/bench_smtp_clients.py --messages 5000 --concurrency 10

It prints figures; it asserts nothing about them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import queue
import resource
import shutil
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import aiosmtplib

from tidings.domain.message import OutgoingMessage, Sent
from tidings.transports.base import SmtpSettings
from tidings.transports.mime import build_message_bytes
from tidings.transports.smtp import SmtpTransport

uvloop: ModuleType | None
try:
    import uvloop
except ImportError:  # an optional extra
    uvloop = None

SMTP_SINK = "/usr/sbin/smtp-sink"
PARAGRAPH = "Hello {name}, here is this week's news from Acme. Thanks for reading us!\n"


def make_messages(count: int) -> list[OutgoingMessage]:
    """Messages of ~4 KB: a text part and an HTML part of ~2 KB each."""
    return [
        OutgoingMessage(
            message_id=i,
            tenant_id=1,
            from_address="Acme News <news@acme.test>",
            to_address=f"user{i}@example.com",
            to_name=f"User {i}",
            subject=f"Weekly news #{i} for you",
            text=PARAGRAPH.format(name=f"User {i}") * 26,
            html=("<p>" + PARAGRAPH.format(name=f"User {i}") + "</p>") * 24,
            message_id_header=f"<{i}.bench@acme.test>",
            headers=(
                ("List-Unsubscribe", f"<https://acme.test/u/{i}>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ),
        )
        for i in range(count)
    ]


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    """smtp-sink on a free high port; yields the port."""
    if not os.path.exists(SMTP_SINK):
        raise SystemExit(f"{SMTP_SINK} is missing: run bench/setup.sh first")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    user = ["-u", "postfix"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [SMTP_SINK, *user, f"127.0.0.1:{port}", "1000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("smtp-sink did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=5)


async def run_pool(port: int, messages: list[OutgoingMessage], concurrency: int) -> int:
    settings = SmtpSettings(host="127.0.0.1", port=port, tls="none", helo="bench.local")
    transport = SmtpTransport(settings, concurrency=concurrency)
    try:
        # The worker hands over batches; 100 is its default claim size.
        sent = 0
        for start in range(0, len(messages), 100):
            outcomes = await transport.send(messages[start : start + 100])
            sent += sum(isinstance(o, Sent) for o in outcomes)
        return sent
    finally:
        await transport.close()


async def run_aiosmtplib(port: int, messages: list[OutgoingMessage], concurrency: int) -> int:
    """Plain aiosmtplib: persistent connections, one ``sendmail`` per message."""
    idle: list[aiosmtplib.SMTP] = []
    slots = asyncio.Semaphore(concurrency)

    async def send(message: OutgoingMessage) -> bool:
        async with slots:
            if idle:
                smtp = idle.pop()
            else:
                smtp = aiosmtplib.SMTP(
                    hostname="127.0.0.1", port=port, local_hostname="bench.local", start_tls=False
                )
                await smtp.connect()
            try:
                raw = build_message_bytes(message)
                refused, _ = await smtp.sendmail("news@acme.test", [message.to_address], raw)
                return not refused
            finally:
                idle.append(smtp)

    sent = 0
    for start in range(0, len(messages), 100):
        results = await asyncio.gather(*(send(m) for m in messages[start : start + 100]))
        sent += sum(results)
    for smtp in idle:
        await smtp.quit()
    return sent


def run_smtplib(port: int, messages: list[OutgoingMessage], concurrency: int) -> int:
    """A thread pool where each thread keeps one smtplib connection open across messages."""
    connections: queue.LifoQueue[smtplib.SMTP] = queue.LifoQueue()
    opened: list[smtplib.SMTP] = []
    lock = threading.Lock()

    def send(message: OutgoingMessage) -> bool:
        try:
            smtp = connections.get_nowait()
        except queue.Empty:
            smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.local", timeout=30)
            with lock:
                opened.append(smtp)
        try:
            raw = build_message_bytes(message)
            refused = smtp.sendmail("news@acme.test", [message.to_address], raw)
            return not refused
        finally:
            connections.put(smtp)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        sent = sum(pool.map(send, messages))
    for smtp in opened:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()
    return sent


def measure(label: str, run: Callable[[], int], count: int) -> None:
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    sent = run()
    elapsed = time.perf_counter() - started
    cpu = (_cpu_seconds() - cpu_before) / count * 1e6
    print(
        f"{label:<30} {sent:>6} sent  {elapsed:6.2f} s  {count / elapsed:7.0f} messages/s"
        f"  {cpu:5.0f} us CPU/message"
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="repeat to see the noise")
    args = parser.parse_args()
    messages = make_messages(args.messages)
    size = len(build_message_bytes(messages[0]))
    print(
        f"{args.messages} messages of {size} bytes, {args.concurrency} connections, "
        f"into {shutil.which('smtp-sink') or SMTP_SINK}"
    )
    with smtp_sink() as port:
        # Warm-up: imports, connection set-up, smtp-sink's first fork.
        asyncio.run(run_pool(port, messages[:200], args.concurrency))
        for _ in range(args.rounds):
            measure(
                "aiosmtplib sendmail (asyncio)",
                lambda: asyncio.run(run_aiosmtplib(port, messages, args.concurrency)),
                args.messages,
            )
            measure(
                "tidings pool (asyncio)",
                lambda: asyncio.run(run_pool(port, messages, args.concurrency)),
                args.messages,
            )
            if uvloop is None:
                print("tidings pool (uvloop)          skipped: uvloop is not installed")
            else:
                measure(
                    "tidings pool (uvloop)",
                    lambda: uvloop.run(run_pool(port, messages, args.concurrency)),
                    args.messages,
                )
            measure(
                "smtplib thread pool",
                lambda: run_smtplib(port, messages, args.concurrency),
                args.messages,
            )


if __name__ == "__main__":
    main()
