"""A local stand-in for Resend's email API (``POST /emails``, ``POST /emails/batch``).

It follows the documented contract closely enough to test our client: Bearer key, JSON bodies,
``{"id"}`` and ``{"data": [{"id"}]}`` answers, errors as ``{"statusCode", "name", "message"}``,
strict batch validation (one invalid email fails the whole batch with 422), and idempotency
keys as Resend documents them: one key space per account (this server is one account, whatever
sender uses it), a key of 1 to 256 characters (else 400 ``invalid_idempotency_key``); within 24
hours of an accepted email, the same key with the same body answers the first response again
and sends nothing, the same key with another body is 409 ``invalid_idempotent_request`` (a
key's first request is never still in progress here, so ``concurrent_idempotent_requests`` is
only ever scripted). It runs under uvicorn in a thread on 127.0.0.1 and a free port::

    with ResendTestServer(api_key="re_test") as api:
        api.fail_next(429, retry_after="7")         # the next request answers 429
        api.reject("bad@example.com")               # validation error for that recipient
        url = api.url                               # resend+http://re_test@127.0.0.1:PORT
        ... api.requests, api.emails ...
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.live_server import LiveServer

BATCH_LIMIT = 100
IDEMPOTENCY_KEY_LIMIT = 256  # characters
IDEMPOTENCY_WINDOW = 24 * 3600.0  # seconds a key is remembered after its email was accepted


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any


@dataclass
class _Failure:
    status: int
    name: str
    message: str
    retry_after: str | None
    delay: float  # seconds before answering (to test client timeouts)


class ResendTestServer:
    def __init__(self, *, api_key: str = "re_test_key") -> None:
        self.api_key = api_key
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._emails: list[dict[str, Any]] = []  # accepted emails, with their "id"
        self._failures: list[_Failure] = []
        self._rejected: dict[str, str] = {}  # recipient -> validation message
        #: key -> (body, answer, accepted at on the monotonic clock); the account's keys
        self._idempotent: dict[str, tuple[str, Any, float]] = {}
        app = Starlette(
            routes=[
                Route("/emails", self._single, methods=["POST"]),
                Route("/emails/batch", self._batch, methods=["POST"]),
            ]
        )
        self._live = LiveServer(app)
        self.port: int = self._live.port

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> ResendTestServer:
        self._live.start()
        return self

    def stop(self) -> None:
        self._live.stop()

    def __enter__(self) -> ResendTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"resend+http://{self.api_key}@127.0.0.1:{self.port}"

    # --- behaviour -------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        name: str | None = None,
        message: str = "scripted failure",
        retry_after: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``times`` requests (either endpoint) with ``status``."""
        default_name = {429: "rate_limit_exceeded", 422: "validation_error"}.get(
            status, "application_error"
        )
        failure = _Failure(status, name or default_name, message, retry_after, delay)
        with self._lock:
            self._failures.extend([failure] * times)

    def reject(self, recipient: str, message: str | None = None) -> None:
        """Emails to ``recipient`` fail validation (422), and so does any batch holding one."""
        with self._lock:
            self._rejected[recipient.lower()] = message or f"Invalid `to` field: {recipient}"

    def reset(self) -> None:
        """Forget everything: requests, emails, scripted failures, rejections, keys."""
        with self._lock:
            self._requests.clear()
            self._emails.clear()
            self._failures.clear()
            self._rejected.clear()
            self._idempotent.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def emails(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._emails)

    # --- the API ---------------------------------------------------------------------------

    async def _single(self, request: Request) -> JSONResponse:
        return await self._handle(request, batch=False)

    async def _batch(self, request: Request) -> JSONResponse:
        return await self._handle(request, batch=True)

    async def _handle(self, request: Request, *, batch: bool) -> JSONResponse:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            self._requests.append(
                RecordedRequest(
                    request.url.path, {k.lower(): v for k, v in request.headers.items()}, body
                )
            )
            failure = self._failures.pop(0) if self._failures else None
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "missing_api_key", "Missing API key in the authorization header.")
        key = request.headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= IDEMPOTENCY_KEY_LIMIT:
            return _error(400, "invalid_idempotency_key", "The key must be between 1-256 chars.")
        if failure is not None:
            if failure.delay:
                await asyncio.sleep(failure.delay)
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
            return _error(failure.status, failure.name, failure.message, headers)
        # The check and the store below run without an await between them, on the server's one
        # event loop, so no second request with the key can be in progress meanwhile (Resend
        # answers that case 409 concurrent_idempotent_requests).
        if key is not None:
            with self._lock:
                seen = self._idempotent.get(key)
            if seen is not None and time.monotonic() - seen[2] < IDEMPOTENCY_WINDOW:
                if seen[0] != raw.decode():
                    return _error(
                        409,
                        "invalid_idempotent_request",
                        "Same idempotency key used with a different request payload.",
                    )
                return JSONResponse(seen[1])
        status, answer = self._accept(body, batch=batch)
        if key is not None and status == 200:
            with self._lock:
                self._idempotent[key] = (raw.decode(), answer, time.monotonic())
        return JSONResponse(answer, status_code=status)

    def _accept(self, body: Any, *, batch: bool) -> tuple[int, Any]:
        """Validate and send: 200 and the new ids, or 422 and nothing sent."""
        emails = body if batch else [body]
        if not isinstance(emails, list) or not emails or (batch and len(emails) > BATCH_LIMIT):
            return _problem(422, "validation_error", f"A batch holds 1 to {BATCH_LIMIT} emails.")
        if batch and any(isinstance(e, dict) and "attachments" in e for e in emails):
            # As documented: "The attachments ... field is not supported yet" in batches.
            return _problem(422, "validation_error", "Attachments are not supported in batch.")
        for email in emails:
            problem = self._validate(email)
            if problem is not None:
                return _problem(422, "validation_error", problem)
        accepted = [{**email, "id": str(uuid.uuid4())} for email in emails]
        answer: Any = (
            {"data": [{"id": e["id"]} for e in accepted]} if batch else {"id": accepted[0]["id"]}
        )
        with self._lock:
            self._emails.extend(accepted)
        return 200, answer

    def _validate(self, email: Any) -> str | None:
        if not isinstance(email, dict):
            return "An email must be an object."
        for field in ("from", "to", "subject"):
            if not email.get(field):
                return f"Missing `{field}` field."
        to = email["to"] if isinstance(email["to"], list) else [email["to"]]
        with self._lock:
            for recipient in to:
                address = str(recipient).rsplit("<", 1)[-1].rstrip(">").lower()
                if address in self._rejected:
                    return self._rejected[address]
        if "html" not in email and "text" not in email:
            return "Missing `html` or `text` field."
        for attachment in email.get("attachments", ()):
            if not isinstance(attachment, dict) or not attachment.get("filename"):
                return "An attachment needs a `filename`."
            if not attachment.get("content") and not attachment.get("path"):
                return "An attachment needs `content` or `path`."
        return None


def _problem(status: int, name: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"statusCode": status, "name": name, "message": message}


def _error(
    status: int, name: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    status, body = _problem(status, name, message)
    return JSONResponse(body, status_code=status, headers=headers)


@pytest.fixture(scope="session")
def _resend_server_process() -> Iterator[ResendTestServer]:
    with ResendTestServer() as server:
        yield server


@pytest.fixture
def resend_server(_resend_server_process: ResendTestServer) -> ResendTestServer:
    """A running server, emptied for each test (starting uvicorn costs ~0.3 s, so it is shared)."""
    _resend_server_process.reset()
    return _resend_server_process
