"""A tenant's webhook endpoint for tests: records every request and answers as scripted::

receiver = WebhookReceiver()
receiver.answer(500, 500)        # the next two requests fail, then 200s again
with LiveServer(receiver.app) as server:
    url = f"{server.url}/hooks"
    ... receiver.requests ...
"""

from __future__ import annotations

import asyncio
import threading
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
