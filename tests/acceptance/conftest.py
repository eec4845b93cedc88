"""Acceptance fixtures: the API, real workers (in a thread or as processes) and a real SMTP server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TEST_SECRET, TenantKeys, make_settings
from tests.smtp_server import SmtpTestServer, smtp_server  # noqa: F401 - a fixture
from tidings.config import Settings
from tidings.delivery.worker import run_workers
from tidings.runtime import Runtime

#: Fast clocks for tests: retries after a fraction of a second, short leases, quick polls.
FAST = {
    "retry_base_seconds": 0.2,
    "retry_max_seconds": 0.4,
    "lease_seconds": 3.0,
    "poll_seconds": 0.2,
}


@pytest.fixture
def settings(tmp_path: Path, db_url: str, smtp_server: SmtpTestServer) -> Settings:  # noqa: F811
    return make_settings(tmp_path, db_url, transport_url=smtp_server.url, **FAST)


class WorkerThread:
    """A delivery worker on its own event loop in a thread, stopped like SIGTERM stops one."""

    def __init__(self, runtime: Runtime, concurrency: int = 10) -> None:
        self._runtime = runtime
        self._concurrency = concurrency
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await run_workers(self._runtime, self._stop, concurrency=self._concurrency)

        try:
            asyncio.run(run())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self) -> WorkerThread:
        self._thread.start()
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the worker did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def worker(runtime: Runtime) -> Iterator[Callable[..., WorkerThread]]:
    started: list[WorkerThread] = []

    def start(concurrency: int = 10) -> WorkerThread:
        thread = WorkerThread(runtime, concurrency).start()
        started.append(thread)
        return thread

    yield start
    for thread in started:
        thread.stop()


def process_environment(settings: Settings, **env: str) -> dict[str, str]:
    """The environment that gives a ``tidings`` process these settings."""
    return {
        **os.environ,
        "TIDINGS_DATABASE_URL": settings.resolved_database_url(),
        "TIDINGS_TRANSPORT_URL": settings.resolved_transport_url(),
        "TIDINGS_SECRET_KEY": TEST_SECRET,
        "TIDINGS_DATA_DIR": str(settings.data_dir),
        "TIDINGS_PUBLIC_URL": settings.public_url,
        "TIDINGS_RETRY_BASE_SECONDS": str(settings.retry_base_seconds),
        "TIDINGS_RETRY_MAX_SECONDS": str(settings.retry_max_seconds),
        "TIDINGS_LEASE_SECONDS": str(settings.lease_seconds),
        "TIDINGS_POLL_SECONDS": str(settings.poll_seconds),
        "TIDINGS_DATABASE_POOLING": settings.database_pooling,
        **(
            {"TIDINGS_DATABASE_LISTEN_URL": settings.database_listen_url}
            if settings.database_listen_url
            else {}
        ),
        **env,
    }


class WorkerProcess:
    """``tidings worker`` as a real process, as operators run it."""

    def __init__(self, settings: Settings, concurrency: int = 10, **env: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tidings", "worker", "--concurrency", str(concurrency)],
            env=process_environment(settings, **env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest.fixture
def worker_process(settings: Settings) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(concurrency: int = 10, **env: str) -> WorkerProcess:
        process = WorkerProcess(settings, concurrency, **env)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait(10)
        if process.process.stderr is not None:
            process.process.stderr.close()


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(interval)


def api_setup(
    client: TestClient, tenant: TenantKeys, people: list[tuple[str, str]], **template: Any
) -> dict[str, int]:
    """A template, contacts and a list holding them, through the public API; returns their ids."""
    auth = tenant.auth(tenant.admin)
    body = {
        "name": "reminder",
        "subject": "Reminder for {{ first_name }}",
        "html": "<p>Dear {{ first_name }}, {{ personal_message }} Deadline: {{ deadline }}.</p>"
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>',
        **template,
    }
    created = client.post("/v1/templates", json=body, headers=auth)
    assert created.status_code == 201, created.text
    template_id = created.json()["id"]
    contact_ids = []
    for email, first_name in people:
        answer = client.post(
            "/v1/contacts", json={"email": email, "first_name": first_name}, headers=auth
        )
        assert answer.status_code == 201, answer.text
        contact_ids.append(answer.json()["id"])
    listed = client.post("/v1/lists", json={"name": "instructors"}, headers=auth)
    assert listed.status_code == 201, listed.text
    list_id = listed.json()["id"]
    added = client.post(
        f"/v1/lists/{list_id}/members", json={"contact_ids": contact_ids}, headers=auth
    )
    assert added.status_code in (200, 201), added.text
    return {"template_id": template_id, "list_id": list_id}


def start_campaign(
    client: TestClient, tenant: TenantKeys, ids: dict[str, int], **fields: Any
) -> int:
    auth = tenant.auth(tenant.admin)
    body = {
        "name": "Term reminder",
        "template_id": ids["template_id"],
        "list_ids": [ids["list_id"]],
        "data": {"personal_message": "Please submit your grades.", "deadline": "Friday"},
        **fields,
    }
    created = client.post("/v1/campaigns", json=body, headers=auth)
    assert created.status_code == 201, created.text
    campaign_id: int = created.json()["id"]
    started = client.post(f"/v1/campaigns/{campaign_id}/start", headers=auth)
    assert started.status_code == 202, started.text
    return campaign_id


def wait_for_completion(
    client: TestClient, tenant: TenantKeys, campaign_id: int, timeout: float = 30.0
) -> dict[str, Any]:
    """The campaign's status answer once it completed (AssertionError after ``timeout`` seconds)."""

    def completed() -> dict[str, Any] | None:
        answer = client.get(f"/v1/campaigns/{campaign_id}", headers=tenant.auth(tenant.viewer))
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body if body["status"] == "completed" else None

    result: dict[str, Any] = wait_until(completed, timeout=timeout)
    return result
