"""stdlib smtplib sending pre-built message bytes into smtp-sink: the ceiling of a Python client.

    python bench/peers/smtplib_ceiling.py [--messages 20000] [--processes 2] [--threads 10]
        [--size 3000] [--port P]

``--processes`` processes of ``--threads`` threads, each thread with one persistent connection
(opened before the clock starts) and ``sendmail()`` per message, no pipelining (smtplib has none).
The messages are built before the clock starts; a process cycles through 100 of them. Timed from
the start signal to the last message's reply. Without ``--port`` it starts a fresh smtp-sink on a
free port of 127.0.0.1. It prints messages/s and asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import smtplib
import sys
import threading
import time
from email.utils import formatdate
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

PROCESSES = 2
THREADS = 10  # connections per process
BODY_BYTES = 3_000  # bytes of message body
DISTINCT = 100  # pre-built messages a process cycles through
LINE = b"Hello, here is this week's news from Acme. Thanks for reading us, see you soon!!\r\n"


def build_message(number: int, size: int) -> bytes:
    """A plain-text message of ``size`` body bytes in 80-byte lines, ready for DATA."""
    head = (
        "From: Acme News <news@acme.test>\r\n"
        f"To: User {number} <user{number}@example.com>\r\n"
        f"Subject: Weekly news #{number}\r\n"
        f"Date: {formatdate()}\r\n"
        f"Message-ID: <{number}.ceiling@acme.test>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
    ).encode()
    return head + (LINE * (size // len(LINE) + 1))[:size]


def _send_share(
    port: int, count: int, threads: int, messages: list[bytes], ready: Queue[int], start: Event
) -> tuple[int, float]:
    """One process: its threads connect, report ready, wait for the start, send ``count`` in all."""
    shares = [count // threads + (i < count % threads) for i in range(threads)]
    connections = [
        smtplib.SMTP("127.0.0.1", port, local_hostname="bench.local", timeout=60) for _ in shares
    ]
    sent = [0] * len(shares)

    def send(index: int) -> None:
        smtp = connections[index]
        start.wait()
        for n in range(shares[index]):
            smtp.sendmail("news@acme.test", ["user@example.com"], messages[n % len(messages)])
            sent[index] += 1

    senders = [threading.Thread(target=send, args=(i,)) for i in range(len(shares))]
    for sender in senders:
        sender.start()
    ready.put(len(shares))
    for sender in senders:
        sender.join()
    finished = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on Linux
    for smtp in connections:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()
    return sum(sent), finished


def _process(
    port: int,
    count: int,
    threads: int,
    size: int,
    ready: Queue[int],
    start: Event,
    done: Queue[tuple[int, float]],
) -> None:
    messages = [build_message(n, size) for n in range(DISTINCT)]
    done.put(_send_share(port, count, threads, messages, ready, start))


def smtplib_seconds(
    port: int,
    *,
    messages: int,
    processes: int = PROCESSES,
    threads: int = THREADS,
    size: int = BODY_BYTES,
) -> float:
    """Seconds ``processes`` x ``threads`` smtplib connections take to deliver ``messages`` to
    the SMTP server on 127.0.0.1:``port``; raises if any was not accepted."""
    context = multiprocessing.get_context("spawn")  # no fork of a caller's threads or pools
    ready: Queue[int] = context.Queue()
    done: Queue[tuple[int, float]] = context.Queue()
    start = context.Event()
    shares = [messages // processes + (i < messages % processes) for i in range(processes)]
    workers = [
        context.Process(target=_process, args=(port, share, threads, size, ready, start, done))
        for share in shares
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            ready.get(timeout=60)
        started = time.monotonic()
        start.set()
        results = [done.get(timeout=3600) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=60)
    sent = sum(count for count, _ in results)
    if sent != messages:
        raise RuntimeError(f"smtplib ceiling: {sent} of {messages} messages accepted")
    return max(finished for _, finished in results) - started


def measure(
    port: int,
    *,
    messages: int,
    processes: int = PROCESSES,
    threads: int = THREADS,
    size: int = BODY_BYTES,
) -> float:
    """A short warm-up, then the timed run; prints the figure and returns messages/s."""
    shape = {"processes": processes, "threads": threads, "size": size}
    smtplib_seconds(port, messages=min(messages, 200), **shape)
    seconds = smtplib_seconds(port, messages=messages, **shape)
    rate = messages / seconds
    print(
        f"smtplib ceiling: {messages} pre-built messages of a {size}-byte body, {processes} "
        f"processes x {threads} connections, in {seconds:.2f} s = {rate:,.0f} messages/s"
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=PROCESSES)
    parser.add_argument("--threads", type=int, default=THREADS, help="connections per process")
    parser.add_argument("--size", type=int, default=BODY_BYTES, help="body bytes")
    parser.add_argument("--port", type=int, help="an smtp-sink already listening on 127.0.0.1")
    args = parser.parse_args()
    shape = {"processes": args.processes, "threads": args.threads, "size": args.size}
    if args.port is not None:
        measure(args.port, messages=args.messages, **shape)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: the shared helper
    from bench_smtp_clients import smtp_sink

    with smtp_sink() as port:
        measure(port, messages=args.messages, **shape)


if __name__ == "__main__":
    main()
