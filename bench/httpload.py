"""An open-loop HTTP/1.1 load generator, lean enough not to compete with the server it measures.

httpx spends about a millisecond of CPU a request; on a 2-core machine that shares its cores with
the API, the worker and PostgreSQL, the load generator was using more CPU than the server. This
one writes pre-built requests on keep-alive connections and parses only the status line and
``Content-Length``: tens of microseconds a request.

Open loop: request ``i`` is due at ``start + i / rate`` whether or not earlier ones have answered,
and its latency is measured from that due time. A server that falls behind is charged for the
queue it causes (no "coordinated omission").
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # connection failures: no status
    elapsed: float = 0.0


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def post_json(path: str, body: object, headers: dict[str, str], host: str) -> bytes:
    payload = json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def open_loop(
    host: str,
    port: int,
    request_for: Callable[[int], bytes],
    *,
    rate: float,
    seconds: float,
    max_connections: int = 100,
) -> LoadResult:
    """Send ``rate * seconds`` requests at a steady rate; ``request_for(i)`` builds request ``i``."""
    result = LoadResult()
    idle: list[_Connection] = []
    slots = asyncio.Semaphore(max_connections)

    async def one(i: int, due: float) -> None:
        async with slots:
            # A kept-alive connection the server has since closed fails at once: like any HTTP
            # client, try once more on a new connection before counting an error.
            for reused in (bool(idle), False):
                conn = idle.pop() if reused else None
                try:
                    if conn is None:
                        conn = _Connection(*await asyncio.open_connection(host, port))
                    status = await conn.exchange(request_for(i))
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    if conn is not None:
                        conn.close()
                    if reused:
                        continue
                    result.errors += 1
                else:
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    idle.append(conn)
                break
            result.latencies_ms.append((time.perf_counter() - due) * 1000)

    count = int(rate * seconds)
    tasks = []
    begin = time.perf_counter()
    for i in range(count):
        due = begin + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    result.elapsed = time.perf_counter() - begin
    for conn in idle:
        conn.close()
    return result
