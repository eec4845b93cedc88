"""Request bodies: capped by route, never read for a caller without a key, imports kept on disk.

Each test talks to a real uvicorn server (in a thread of this process) through a raw socket, so
that it sees whether the server answered while the body was still being sent, and measures this
process's peak memory around the request (``VmHWM``, reset through ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from tests.browser.dashboard_helpers import csrf_of, sign_in
from tests.conftest import TenantKeys
from tests.live_server import LiveServer
from tidings.api.deps import KeyFirstRoute, depends_on, get_principal
from tidings.app import ROUTERS, create_app
from tidings.runtime import Runtime

MB = 1024 * 1024
BODY_BYTES = 50 * MB
BLOCK = b"a" * 65_536  # what the client sends, again and again: nothing big in its own memory
#: Peak growth of this process's memory allowed while the server handles one request. A body read
#: into memory would be 50 MB at least; this leaves room for the server's and the test's own
#: allocations on a loaded machine.
MEMORY_SLACK = 12 * MB


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int  # bytes of the body on the wire when the answer came (or the body's size)
    closed: bool = field(default=False)  # the server ended the connection after answering


def send(
    port: int,
    method: str,
    path: str,
    *,
    size: int = BODY_BYTES,
    chunked: bool = False,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
) -> Answer | None:
    """Sends a ``size``-byte body, stopping as soon as the server answers (or after
    ``stop_after`` bytes, hanging up: None), and reads the answer."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = f"{method} {path} HTTP/1.1\r\nHost: tidings.test\r\n{framing}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        sock.sendall(head.encode() + b"\r\n")
        sock.setblocking(False)
        sent = _send_until_answered(sock, size, chunked, stop_after)
        if sent is None:
            return None
        sock.settimeout(30)
        return _read_answer(sock, sent)
    finally:
        sock.close()


def _send_until_answered(
    sock: socket.socket, size: int, chunked: bool, stop_after: int | None
) -> int | None:
    sent = 0
    pending = memoryview(b"")
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        while True:
            if not pending:
                if stop_after is not None and sent >= stop_after:
                    return None
                if sent >= size:
                    if chunked:
                        sock.setblocking(True)
                        sock.sendall(b"0\r\n\r\n")
                    return sent
                piece = BLOCK[: size - sent]
                pending = memoryview(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                return sent
            assert writable, "the server neither read the body nor answered for 30 s"
            with contextlib.suppress(BlockingIOError):
                count = sock.send(pending)
                pending = pending[count:]
                sent += count
    return sent


def _read_answer(sock: socket.socket, sent: int) -> Answer:
    data = b""
    closed = False
    with contextlib.suppress(ConnectionResetError):
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65_536)
            assert piece, f"the connection closed before an answer: {data!r}"
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        while len(body) < int(headers.get("content-length", "0")):
            piece = sock.recv(65_536)
            assert piece, "the connection closed in the middle of the answer"
            body += piece
        closed = headers.get("connection", "").lower() == "close"
    return Answer(int(lines[0].split()[1]), headers, body, sent, closed)


@contextlib.contextmanager
def peak_memory_growth() -> Iterator[list[int]]:
    """This process's peak resident memory during the block, over what it was when it began, in
    bytes (the list holds it once the block ends)."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident size
    start = _status_kb("VmRSS")
    growth: list[int] = []
    yield growth
    growth.append((_status_kb("VmHWM") - start) * 1024)


def _status_kb(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise LookupError(name)


@pytest.fixture
def server(runtime: Runtime) -> Iterator[LiveServer]:
    with LiveServer(create_app(runtime)) as live:
        yield live


@pytest.fixture
def news(runtime: Runtime, acme: TenantKeys, server: LiveServer) -> int:
    answer = httpx.post(
        f"{server.url}/v1/lists", json={"name": "news"}, headers=acme.auth(acme.sender)
    )
    list_id: int = answer.json()["id"]
    return list_id


FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}
CSV = {"Content-Type": "text/csv"}
MULTIPART = {"Content-Type": "multipart/form-data; boundary=xyz"}


@pytest.mark.parametrize(
    ("method", "path", "headers", "chunked", "status"),
    [
        # The body cap (1 MB) is over at once: the declared length tells it.
        ("PATCH", "/v1/contacts/import", CSV, False, 413),
        ("POST", "/p/import", FORM, False, 413),
        ("POST", "/v1/messages", JSON, False, 413),
        ("PUT", "/no/such/import", CSV, False, 413),
        # The real import route's cap is larger: the missing key is what refuses it.
        ("POST", "/v1/lists/{news}/import", CSV, False, 401),
        # Chunked: no length to go by. The key is checked before a byte is read ...
        ("PATCH", "/v1/contacts/import", JSON, True, 401),
        ("POST", "/v1/messages", JSON, True, 401),
        ("POST", "/v1/lists/{news}/import", CSV, True, 401),
        # ... the public form (its token is its key) reads no more than the body cap ...
        ("POST", "/p/import", FORM, True, 413),
        # ... and nothing reads a body that no route takes.
        ("PUT", "/no/such/import", CSV, True, 404),
        # The dashboard's import form has the import cap too, and reads nothing before the
        # session cookie is checked: the browser is sent to sign in.
        ("POST", "/lists/{news}/import", MULTIPART, False, 303),
        ("POST", "/lists/{news}/import", MULTIPART, True, 303),
    ],
)
def test_a_50_mb_body_without_a_key_is_refused_before_it_is_read(
    server: LiveServer,
    news: int,
    method: str,
    path: str,
    headers: dict[str, str],
    chunked: bool,
    status: int,
) -> None:
    send(server.port, "GET", "/healthz", size=0)  # warm-up: first-request allocations
    with peak_memory_growth() as growth:
        answer = send(server.port, method, path.format(news=news), headers=headers, chunked=chunked)
    assert answer is not None
    assert answer.status == status, answer.body
    assert answer.sent < BODY_BYTES // 2, f"the server answered after {answer.sent} bytes"
    assert growth[0] < MEMORY_SLACK, f"the server's memory grew by {growth[0] / MB:.0f} MB"
    assert answer.closed, "an answer before the body was read must end the connection"
    if status in (401, 413):
        assert answer.headers["content-type"] == "application/json"
        code = {401: "unauthenticated", 413: "payload_too_large"}[status]
        assert code in answer.body.decode()


def test_an_authenticated_body_over_the_cap_is_413_as_it_streams(
    server: LiveServer, acme: TenantKeys, news: int
) -> None:
    for target in ("/v1/messages", f"/v1/lists/{news}/members", "/v1/contacts/import"):
        for chunked in (False, True):
            answer = send(
                server.port,
                "POST" if target != "/v1/contacts/import" else "PATCH",
                target,
                chunked=chunked,
                headers={**JSON, **acme.auth(acme.sender)},
            )
            assert answer is not None
            assert answer.status == 413, (target, chunked, answer.body)
            assert b'"payload_too_large"' in answer.body
            # Chunked, the cap (1 MB) is passed after a megabyte, and answered at once.
            assert answer.sent < BODY_BYTES // 2, (target, chunked, answer.sent)


def test_every_route_that_needs_a_key_checks_it_before_reading_the_body() -> None:
    """A router added without ``route_class=KeyFirstRoute`` would read bodies of callers
    without a key (FastAPI reads a body before it solves any dependency)."""
    keyed = [
        route
        for router in ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute) and depends_on(route.dependant, get_principal)
    ]
    assert len(keyed) > 50
    assert [r.path for r in keyed if not isinstance(r, KeyFirstRoute)] == []


def _csv_rows(rows: int) -> Iterator[bytes]:
    """A CSV of ``rows`` contacts with a 900-byte attribute each, made as it is sent."""
    note = "n" * 900
    yield b"email,name,note\n"
    for start in range(0, rows, 1000):
        yield "".join(
            f"user{i}@example.com,User {i},{note}\n" for i in range(start, min(start + 1000, rows))
        ).encode()


def test_the_dashboard_import_takes_a_file_over_the_body_cap(
    client: TestClient, acme: TenantKeys
) -> None:
    token = sign_in(client, acme.sender)
    client.post("/lists", data={"csrf_token": token, "name": "Staff"})
    list_id = client.get("/v1/lists", headers=acme.auth(acme.viewer)).json()["items"][0]["id"]
    csv = b"".join(_csv_rows(3_000))  # 2.8 MB, over the 1 MB body cap
    answer = client.post(
        f"/lists/{list_id}/import",
        data={"csrf_token": token},
        files={"file": ("staff.csv", csv, "text/csv")},
    )
    assert answer.status_code == 200, re.findall(r"(?s)<main.*?</main>", answer.text)
    assert re.search(r'data-report="created">3\D?000<', answer.text)  # 3 000, as shown
    missing = client.post(f"/lists/{list_id}/import", data={"csrf_token": token})
    assert missing.status_code == 422
    assert "choose a file" in missing.text


def test_a_slow_dashboard_upload_does_not_hold_up_other_writers(
    server: LiveServer, acme: TenantKeys, news: int
) -> None:
    """The form is read before the request's transaction begins and after the signed-in key was
    looked up in a transaction of its own: on SQLite, neither holds the write lock meanwhile."""
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        form = browser.get("/login")
        browser.post(
            "/login",
            data={"api_key": acme.sender, "csrf_token": csrf_of(form.text), "next": "/"},
        )
        token = csrf_of(browser.get("/").text)
        head = (
            f'--xyz\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{token}\r\n'
            '--xyz\r\nContent-Disposition: form-data; name="file"; filename="slow.csv"\r\n'
            "Content-Type: text/csv\r\n\r\nemail\r\n"
        ).encode()

        def slowly() -> Iterator[bytes]:
            yield head
            for i in range(20):
                time.sleep(0.1)
                yield b"slow%d@example.com\r\n" % i
            yield b"\r\n--xyz--\r\n"

        answers: dict[str, httpx.Response] = {}

        def upload() -> None:
            answers["import"] = browser.post(
                f"/lists/{news}/import", content=slowly(), headers=MULTIPART
            )

        uploading = threading.Thread(target=upload)
        uploading.start()
        time.sleep(0.5)  # a quarter of the upload sent
        started = time.monotonic()
        sent = httpx.post(
            f"{server.url}/v1/messages",
            json={"to": "meanwhile@example.com", "subject": "Hi", "text": "x"},
            headers=acme.auth(acme.sender),
            timeout=30,
        )
        waited = time.monotonic() - started
        upload_went_on = uploading.is_alive()
        uploading.join(30)
    assert sent.status_code == 201, sent.text
    assert waited < 1.0, f"POST /v1/messages waited {waited:.1f} s behind the upload"
    assert upload_went_on, "the upload ended before the message was accepted: no overlap tested"
    assert answers["import"].status_code == 200
    assert re.search(r'data-report="created">20<', answers["import"].text)


def _open_files_under(directory: Path) -> list[str]:
    """Files under ``directory`` this process holds open, named or not (``O_TMPFILE``)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(directory)):
                found.append(target)
    return found


def test_a_large_import_is_read_to_disk_with_flat_memory(
    server: LiveServer, runtime: Runtime, acme: TenantKeys, news: int
) -> None:
    rows = 64_000  # 60 MB
    small = httpx.post(
        f"{server.url}/v1/lists/{news}/import",
        content=b"email\nwarm@example.com\n",
        headers={**CSV, **acme.auth(acme.sender)},
    )
    assert small.status_code == 200, small.text
    with peak_memory_growth() as growth:
        answer = httpx.post(
            f"{server.url}/v1/lists/{news}/import",
            content=_csv_rows(rows),
            headers={**CSV, **acme.auth(acme.sender)},
            timeout=300,
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["created"] == rows
    assert growth[0] < 3 * MEMORY_SLACK, f"a 60 MB import grew memory by {growth[0] / MB:.0f} MB"
    data_dir = runtime.settings.data_dir
    assert _open_files_under(data_dir) == []
    assert sorted(p.name for p in data_dir.iterdir()) == []


def test_the_upload_file_is_gone_after_an_error_or_a_client_that_hangs_up(
    server: LiveServer, runtime: Runtime, acme: TenantKeys, news: int
) -> None:
    auth = {**CSV, **acme.auth(acme.sender)}
    broken = httpx.post(
        f"{server.url}/v1/lists/{news}/import",
        content=b"email\n" + b"a@example.com\n" * 50_000 + b"\x00\n",
        headers=auth,
        timeout=60,
    )
    assert broken.status_code == 422, broken.text
    wrong_list = httpx.post(
        f"{server.url}/v1/lists/999999/import", content=b"email\na@example.com\n", headers=auth
    )
    assert wrong_list.status_code == 404, wrong_list.text
    # The client hangs up with 5 MB of the 50 MB sent, while the file is being written: the
    # server ends the request quietly (no "Exception in ASGI application" traceback).
    errors = _Records()
    logging.getLogger("uvicorn.error").addHandler(errors)
    try:
        hung_up = send(
            server.port, "POST", f"/v1/lists/{news}/import", headers=auth, stop_after=5 * MB
        )
        assert hung_up is None
        data_dir = runtime.settings.data_dir
        deadline = time.monotonic() + 10
        while _open_files_under(data_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _open_files_under(data_dir) == []
        assert sorted(p.name for p in data_dir.iterdir()) == []
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        logging.getLogger("uvicorn.error").removeHandler(errors)
    assert [r.getMessage() for r in errors.records if r.levelno >= logging.ERROR] == []


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
