"""Delivery through Resend's HTTP API (https://resend.com/docs/api-reference), over one keep-alive
``httpx.AsyncClient``.

Messages go 100 at a time to ``POST /emails/batch`` (Resend's default rate limit is a few
requests a second, so one request per message would cap us far below our throughput); a lone
message goes to ``POST /emails``. A batch is validated as a whole, so when Resend refuses one
(4xx), its messages are sent one by one and only the bad one fails.

Idempotency: a single send carries a key derived from the message's own, so a retry never sends
twice. Resend keeps keys per account, and every tenant sends through our one account, so the
tenant's ``Idempotency-Key`` is scoped by its tenant before it goes out (``_single_key``): two
tenants' ``reset-42`` are two keys, and neither is answered with the other's email. A batch
carries a key derived from its message ids, which protects an identical retry of the same batch;
a message retried later in a different batch is not covered by Resend's key, which is the price
of batching (a whole batch that timed out is retried at once with the same key, see ``_post``).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from tidings import __version__
from tidings.domain.message import Outcome, OutgoingMessage, Permanent, Sent, Transient
from tidings.transports.base import DEFAULT_CONCURRENCY, Abandoned, ResendSettings, send_on_time

BATCH_LIMIT = 100  # messages per POST /emails/batch (Resend's documented maximum)
_SPECIALS = set('()<>[]:;@\\,."')

Payload = dict[str, Any]


class ResendTransport:
    def __init__(
        self,
        settings: ResendSettings,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        transport: httpx.AsyncBaseTransport | None = None,  # tests: httpx.MockTransport
    ) -> None:
        self.settings = settings
        self._slots = asyncio.Semaphore(concurrency)
        self._client = httpx.AsyncClient(
            base_url=settings.base_url,
            headers={
                "Authorization": f"Bearer {settings.api_key}",
                "User-Agent": f"tidings/{__version__}",
            },
            timeout=httpx.Timeout(settings.timeout),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            transport=transport,
        )

    async def send_at(
        self,
        batch: Sequence[OutgoingMessage],
        *,
        at: float,
        by: float,
        lead: float | None = None,  # noqa: ARG002 (nothing is written ahead)
    ) -> list[Outcome | Abandoned | None]:
        """One write, at ``at``: there is no envelope to send ahead (``lead`` is not used)."""
        return await send_on_time(self, batch, at=at, by=by)

    async def prepare(self, count: int) -> None:
        """Nothing to open ahead: httpx keeps the connections of earlier requests."""

    lead = 0.0  # nothing is written before the moment of a send_at

    async def send(self, batch: Sequence[OutgoingMessage]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        ready: list[tuple[int, OutgoingMessage, Payload]] = []
        for index, message in enumerate(batch):
            try:
                ready.append((index, message, email_payload(message)))
            except ValueError as exc:
                outcomes[index] = Permanent(f"message cannot be sent: {exc}")
        # Resend's batch endpoint takes no attachments: a message with some goes on its own.
        alone = [[item] for item in ready if item[1].attachments]
        together = [item for item in ready if not item[1].attachments]
        chunks = alone + [
            together[i : i + BATCH_LIMIT] for i in range(0, len(together), BATCH_LIMIT)
        ]
        results = await asyncio.gather(*(self._send_chunk(chunk) for chunk in chunks))
        for chunk, chunk_outcomes in zip(chunks, results, strict=True):
            for (index, _, _), outcome in zip(chunk, chunk_outcomes, strict=True):
                outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    async def close(self) -> None:
        await self._client.aclose()

    async def _send_chunk(self, chunk: list[tuple[int, OutgoingMessage, Payload]]) -> list[Outcome]:
        if len(chunk) == 1:
            _, message, payload = chunk[0]
            return [await self._send_single(message, payload)]
        messages = [message for _, message, _ in chunk]
        response = await self._post("/emails/batch", [p for _, _, p in chunk], _batch_key(messages))
        if isinstance(response, Transient):
            return [response] * len(chunk)
        if response.is_success:
            ids = _batch_ids(response)
            return [
                Sent(provider_id=ids[i] if i < len(ids) else None, delivery_reported_later=True)
                for i in range(len(chunk))
            ]
        failure = _failure(response)
        if isinstance(failure, Permanent):
            # Resend validates a batch as a whole: find out which message it minded.
            return list(await asyncio.gather(*(self._send_single(m, p) for _, m, p in chunk)))
        return [failure] * len(chunk)

    async def _send_single(self, message: OutgoingMessage, payload: Payload) -> Outcome:
        response = await self._post("/emails", payload, _single_key(message))
        if isinstance(response, Transient):
            return response
        if response.is_success:
            return Sent(provider_id=_json_str(response, "id"), delivery_reported_later=True)
        return _failure(response)

    async def _post(self, path: str, body: Any, key: str) -> httpx.Response | Transient:
        """POST with the idempotency key; a request that may have arrived but got no answer is
        repeated once at once with the same key, so Resend answers the first result instead of
        sending twice (for a batch, a later retry would regroup the messages under a new key)."""
        unanswered = Transient("Resend did not answer", may_have_arrived=True)
        for _ in range(2):
            async with self._slots:
                try:
                    return await self._client.post(
                        path, json=body, headers={"Idempotency-Key": key}
                    )
                except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                    return Transient(f"cannot reach Resend: {exc.__class__.__name__}: {exc}")
                except httpx.TransportError as exc:
                    # Sent, maybe received, never answered (read timeout, reset, bad response).
                    unanswered = Transient(
                        f"Resend did not answer: {exc.__class__.__name__}: {exc}".rstrip(": "),
                        may_have_arrived=True,
                    )
        return unanswered


async def probe(settings: ResendSettings) -> tuple[bool, str]:
    """An authenticated read that sends nothing (``GET /domains``): (whether the key works, the
    answer). A key restricted to sending answers 401 ``restricted_api_key``: it is valid."""
    async with httpx.AsyncClient(
        base_url=settings.base_url,
        headers={"Authorization": f"Bearer {settings.api_key}"},
        timeout=httpx.Timeout(settings.timeout),
    ) as client:
        try:
            response = await client.get("/domains")
        except httpx.TransportError as exc:
            return False, f"cannot reach Resend: {exc.__class__.__name__}: {exc}".rstrip(": ")
    name = _json_str(response, "name") if not response.is_success else None
    if response.is_success or name == "restricted_api_key":
        return True, f"{response.status_code} the API key is accepted"
    return False, f"{response.status_code} {name or response.reason_phrase}"


def email_payload(message: OutgoingMessage) -> Payload:
    """The JSON body of one email, as ``POST /emails`` documents it."""
    _no_line_breaks("from", message.from_address)
    _no_line_breaks("subject", message.subject)
    payload: Payload = {
        "from": message.from_address,
        "to": [_recipient(message)],
        "subject": message.subject,
        "text": message.text,
    }
    if message.html is not None:
        payload["html"] = message.html
    if message.reply_to is not None:
        _no_line_breaks("reply_to", message.reply_to)
        payload["reply_to"] = message.reply_to
    if message.attachments:
        payload["attachments"] = [
            {
                "filename": _checked_filename(a.filename),
                "content": a.content_base64,
                "content_type": a.content_type,
            }
            for a in message.attachments
        ]
    # Resend writes Message-ID, Date and MIME itself ("Resend already includes all the necessary
    # headers"); only ours go along: List-Unsubscribe, List-Unsubscribe-Post, X-Tidings-...
    headers: dict[str, str] = {}
    for name, value in message.headers:
        _no_line_breaks(f"header {name!r}", name + value)
        if name.lower() in (n.lower() for n in headers):
            raise ValueError(f"header {name} is given twice")
        headers[name] = value
    if headers:
        payload["headers"] = headers
    return payload


def _recipient(message: OutgoingMessage) -> str:
    _no_line_breaks("to", message.to_address)
    name = message.to_name
    if not name:
        return message.to_address
    _no_line_breaks("to_name", name)
    if _SPECIALS.intersection(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{message.to_address}>"


def _checked_filename(filename: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in filename):
        raise ValueError("an attachment's file name contains a control character")
    return filename


def _no_line_breaks(field: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValueError(f"{field} contains a line break (CR or LF)")


def _failure(response: httpx.Response) -> Transient | Permanent:
    """429 and 5xx are worth retrying; a rejected API key or unverified domain (401/403) is the
    operator's to fix, not the message's fault, so those retry too; any other 4xx is final."""
    status = response.status_code
    name, text = _error_fields(response)
    reason = f"Resend {status} {name}: {text}".rstrip(": ")
    retry_after = _retry_after(response.headers.get("Retry-After"))
    if status == 429:
        return Transient(reason, retry_after=retry_after, throttled=True)
    if status >= 500 or status in (401, 403) or name == "concurrent_idempotent_requests":
        return Transient(reason, retry_after=retry_after)
    return Permanent(reason)


def _error_fields(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:200]
    if not isinstance(body, dict):
        return "", str(body)[:200]
    nested = body.get("error")
    error: dict[str, Any] = nested if isinstance(nested, dict) else body
    return str(error.get("name", "")), str(error.get("message", ""))[:500]


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _batch_ids(response: httpx.Response) -> list[str | None]:
    try:
        data = response.json().get("data")
    except (ValueError, AttributeError):
        return []
    if not isinstance(data, list):
        return []
    return [item.get("id") if isinstance(item, dict) else None for item in data]


def _json_str(response: httpx.Response, key: str) -> str | None:
    try:
        value = response.json().get(key)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _single_key(message: OutgoingMessage) -> str:
    """The message's key, unique across tenants: its tenant id and a digest of the tenant's key.

    The digest covers ``"<tenant id>:<key>"``, and a tenant id holds no colon, so no choice of
    key by one tenant can produce another tenant's; it also keeps any key within Resend's limit.
    """
    if not message.idempotency_key:
        return f"tidings/{message.tenant_id}/{message.message_id}"
    scoped = f"{message.tenant_id}:{message.idempotency_key}"
    return f"tidings/{message.tenant_id}/{hashlib.sha256(scoped.encode()).hexdigest()}"


def _batch_key(messages: Sequence[OutgoingMessage]) -> str:
    ids = ",".join(f"{m.tenant_id}:{m.message_id}" for m in messages)
    return "tidings-batch/" + hashlib.sha256(ids.encode()).hexdigest()
