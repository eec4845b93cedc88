"""Postfix's smtp-source into smtp-sink: the physical limit of SMTP on this machine's loopback.

    python bench/peers/smtp_source.py [--messages 20000] [--sessions 10] [--size 3000] [--port P]

``--sessions`` parallel sessions, each keeping its connection for the next message (``-d``),
``--messages`` messages in all with a body of ``--size`` bytes (``-l``; smtp-source adds a few
headers). Without ``--port`` it starts a fresh smtp-sink on a free port of 127.0.0.1 and stops it
after. Timed from smtp-source's start to its exit; it prints messages/s and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

SMTP_SOURCE = "/usr/sbin/smtp-source"
SESSIONS = 10  # parallel sessions, as the smtplib ceiling's threads per process
BODY_BYTES = 3_000  # bytes of message body


def smtp_source_seconds(
    port: int, *, messages: int, sessions: int = SESSIONS, size: int = BODY_BYTES
) -> float:
    """Seconds smtp-source takes to deliver ``messages`` over ``sessions`` persistent sessions
    to the SMTP server on 127.0.0.1:``port`` (it exits non-zero on any refusal)."""
    if not os.path.exists(SMTP_SOURCE):
        raise SystemExit(f"{SMTP_SOURCE} is missing: run bench/setup.sh first")
    command = [
        SMTP_SOURCE,
        "-d",  # one connection per session, kept for the next message
        "-s", str(sessions),
        "-m", str(messages),
        "-l", str(size),
        "-M", "bench.local",
        "-f", "news@acme.test",
        "-t", "user@example.com",
        f"127.0.0.1:{port}",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def measure(port: int, *, messages: int, sessions: int = SESSIONS, size: int = BODY_BYTES) -> float:
    """A short warm-up, then the timed run; prints the figure and returns messages/s."""
    smtp_source_seconds(port, messages=min(messages, 200), sessions=sessions, size=size)
    seconds = smtp_source_seconds(port, messages=messages, sessions=sessions, size=size)
    rate = messages / seconds
    print(
        f"smtp-source: {messages} messages of a {size}-byte body over {sessions} sessions "
        f"in {seconds:.2f} s = {rate:,.0f} messages/s"
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=SESSIONS)
    parser.add_argument("--size", type=int, default=BODY_BYTES, help="body bytes")
    parser.add_argument("--port", type=int, help="an smtp-sink already listening on 127.0.0.1")
    args = parser.parse_args()
    if args.port is not None:
        measure(args.port, messages=args.messages, sessions=args.sessions, size=args.size)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: the shared helper
    from bench_smtp_clients import smtp_sink

    with smtp_sink() as port:
        measure(port, messages=args.messages, sessions=args.sessions, size=args.size)


if __name__ == "__main__":
    main()
