"""The CLI's client for a remote Tidings API (``--url`` and ``--key``): the same use cases, over HTTP.

Only what the commands need, each call one request. Every failure — the server cannot be reached,
it refused the key, it answered with an error — becomes a ``RemoteError`` carrying the server's
own message, so the CLI prints one line and never an httpx traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from tidings import __version__

TIMEOUT_SECONDS = 15.0  # per request: a start fans out the whole audience before it answers
CAMPAIGN_ACTIONS = ("start", "pause", "resume", "cancel")


class RemoteError(Exception):
    """The API could not be used; ``message`` says why in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RemoteApi:
    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float = TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RemoteError(f"--url must be an http:// or https:// address, not {url!r}")
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url,
            headers={
                "Authorization": f"Bearer {key.strip()}",
                "User-Agent": f"tidings-cli/{__version__}",
            },
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteApi:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def campaign(self, campaign_id: int) -> dict[str, Any]:
        return self._json("GET", f"/v1/campaigns/{campaign_id}")

    def campaign_action(self, campaign_id: int, action: str) -> dict[str, Any]:
        if action not in CAMPAIGN_ACTIONS:
            raise ValueError(action)
        return self._json("POST", f"/v1/campaigns/{campaign_id}/{action}")

    def update_campaign(self, campaign_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        return self._body(self._request("PATCH", f"/v1/campaigns/{campaign_id}", json=changes))

    def delete_campaign(self, campaign_id: int) -> None:
        self._request("DELETE", f"/v1/campaigns/{campaign_id}")

    def campaign_stats(self, campaign_id: int) -> dict[str, Any]:
        return self._json("GET", f"/v1/campaigns/{campaign_id}/stats")

    def download(self, path: str, params: dict[str, str], sink: Callable[[bytes], object]) -> None:
        """Stream the body of ``GET path`` into ``sink`` chunk by chunk (an export of any size)."""
        try:
            with self._client.stream("GET", path, params=params, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise RemoteError(_error_message(response))
                for chunk in response.iter_bytes():
                    sink(chunk)
        except httpx.HTTPError as exc:
            raise RemoteError(f"the download from {self.url} failed: {exc}") from None

    def send_message(
        self, body: dict[str, Any], *, idempotency_key: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """The message as the API answers it, and whether this call created it (False: a repeat)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self._request("POST", "/v1/messages", json=body, headers=headers)
        return self._body(response), response.status_code == httpx.codes.CREATED

    def create_reminders(self, body: dict[str, Any]) -> dict[str, Any]:
        """What ``POST /v1/reminders`` made, found made before, and skipped."""
        return self._body(self._request("POST", "/v1/reminders", json=body))

    # -- plumbing --------------------------------------------------------------------------------

    def _json(self, method: str, path: str) -> dict[str, Any]:
        return self._body(self._request(method, path))

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise RemoteError(f"{self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach {self.url}: {exc}") from None
        if response.status_code >= 400:
            raise RemoteError(_error_message(response))
        return response

    def _body(self, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise RemoteError(
                f"{self.url} did not answer with JSON; is it a Tidings API?"
            ) from None
        if not isinstance(body, dict):
            raise RemoteError(f"{self.url} answered with an unexpected document")
        return body


def _error_message(response: httpx.Response) -> str:
    """The API's ``{"error": {"message": ...}}``, or the status line when it is not one of ours."""
    try:
        error = response.json().get("error", {})
        message = str(error["message"])
    except (ValueError, AttributeError, KeyError, TypeError):
        return f"the server answered {response.status_code} {response.reason_phrase}"
    if response.status_code == httpx.codes.UNAUTHORIZED:
        return f"the API refused the key: {message}"
    return message
