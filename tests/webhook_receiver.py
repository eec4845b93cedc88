"""A tenant's webhook endpoint for tests: records every request and answers as scripted::

receiver = WebhookReceiver()
receiver.answer(500, 500)        # the next two requests fail, then 200s again
with LiveServer(receiver.app) as server:
    url = f"{server.url}/hooks"
    ... receiver.requests ...

and ``DripEndpoint``, a raw socket server that answers a header byte every few seconds, forever.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class WebhookReceiver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[ReceivedRequest] = []
        self._answers: list[int] = []
        self.delay = 0.0  # seconds before answering (to test the client timeout)
        self.app = Starlette(routes=[Route("/{path:path}", self._receive, methods=["POST", "GET"])])

    def answer(self, *statuses: int) -> None:
        """The next requests get these statuses (then 200)."""
        with self._lock:
            self._answers.extend(statuses)

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    async def _receive(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            self._requests.append(
                ReceivedRequest(
                    request.url.path, {k.lower(): v for k, v in request.headers.items()}, body
                )
            )
            status = self._answers.pop(0) if self._answers else 200
        if self.delay:
            await asyncio.sleep(self.delay)
        if status in (301, 302, 307, 308):
            return RedirectResponse("/elsewhere", status_code=status)
        return PlainTextResponse("ok" if status < 300 else "nope", status_code=status)


class DripEndpoint:
    """An endpoint that reads a request, then answers one byte of its status line and headers
    every ``interval`` seconds and never finishes: every read the client makes gets a byte long
    before any per-read timeout, so only a bound on the whole request ends it::

        with DripEndpoint(interval=2.0) as drip:
            url = f"{drip.url}/hooks"
            ... drip.arrivals (time.monotonic() of each request), drip.closed ...
    """

    ANSWER = b"HTTP/1.1 200 OK\r\nX-Drip: " + b"." * 100_000

    def __init__(self, *, interval: float = 2.0) -> None:
        self.interval = interval
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._arrivals: list[float] = []
        self._closed: list[float] = []
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def arrivals(self) -> list[float]:
        """When each request had arrived in full (``time.monotonic()``)."""
        with self._lock:
            return list(self._arrivals)

    @property
    def closed(self) -> list[float]:
        """When the client gave up on each connection (``time.monotonic()``)."""
        with self._lock:
            return list(self._closed)

    def __enter__(self) -> DripEndpoint:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=self.interval + 5)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self._spawn(self._drip, connection)

    def _drip(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(10)
            request = b""
            try:
                while b"\r\n\r\n" not in request:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    request += chunk
                head, _, body = request.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(body) < length:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    body += chunk
                with self._lock:
                    self._arrivals.append(time.monotonic())
                for byte in self.ANSWER:
                    connection.sendall(bytes([byte]))
                    if self._stop.wait(self.interval):
                        return
                    # A peer that closed shows as a readable socket with nothing to read.
                    connection.setblocking(False)
                    try:
                        if connection.recv(1) == b"":
                            break
                    except BlockingIOError:
                        pass
                    finally:
                        connection.setblocking(True)
            except OSError:
                pass
            with self._lock:
                self._closed.append(time.monotonic())
