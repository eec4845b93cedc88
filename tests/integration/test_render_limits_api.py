"""Render limits through the API: a 422 naming the template part at accept and preview, and the
service keeps answering while pathological templates render."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.browser.dashboard_helpers import make_contacts, make_template, sign_in
from tests.conftest import TenantKeys, make_settings
from tests.live_server import LiveServer
from tidings.app import create_app
from tidings.config import Settings
from tidings.runtime import Runtime

#: 209 MB of text while len() sees 30 items: a hard limit of the render process stops it.
MEMORY_BOMB = "{% set big = (range(100000)|list) * 10 %}<p>{{ ([big] * 30)|string|length }}</p>"
CPU_BOMB = "{% set big = (range(100000)|list) * 10 %}{{ ([big] * 10)|pprint|length }}"
#: One C call of seconds (a list compared with a thousand equal-but-last ones): it holds the GIL.
GIL_BOMB = (
    "{% set big = (range(100000)|list) * 10 %}"
    "{% set other = (range(100000)|list) * 9 + (range(99999)|list) + [7] %}"
    "{{ big in [other] * 10000 }}"
)
#: pprint of ten million numbers runs out of time or of memory, whichever comes first.
LIMIT_BROKEN = re.compile(r"time limit|memory")
HEALTH_LATENCY_BOUND = 0.1  # seconds, for nine answers in ten
HEALTH_LATENCY_CEILING = 1.0  # seconds, for every answer


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """Rendering does not depend on the database: SQLite is enough."""
    return f"sqlite:///{tmp_path / 'tidings.db'}"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url, render_timeout_seconds=1.0)


def _template(client: TestClient, tenant: TenantKeys, **parts: str) -> int:
    body = {"name": "t", "subject": "Hello", **parts}
    created = client.post("/v1/templates", json=body, headers=tenant.auth(tenant.admin))
    assert created.status_code == 201, created.text
    template_id: int = created.json()["id"]
    return template_id


def test_accepting_inline_content_over_a_render_limit_is_a_422_naming_the_part(
    client: TestClient, acme: TenantKeys
) -> None:
    for part in ("html", "text"):
        answer = client.post(
            "/v1/messages",
            json={"to": "ann@example.com", "subject": "Hi", part: MEMORY_BOMB},
            headers=acme.auth(acme.sender),
        )
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert (error["code"], error["field"]) == ("render_failed", part)
    answer = client.post(
        "/v1/messages",
        json={"to": "ann@example.com", "subject": CPU_BOMB, "text": "body"},
        headers=acme.auth(acme.sender),
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == "subject"
    assert LIMIT_BROKEN.search(answer.json()["error"]["message"])


def test_accepting_a_stored_template_over_a_render_limit_is_a_422_naming_the_part(
    client: TestClient, acme: TenantKeys
) -> None:
    template_id = _template(client, acme, html=MEMORY_BOMB, text="plain")
    answer = client.post(
        "/v1/messages",
        json={"to": "ann@example.com", "template_id": template_id},
        headers=acme.auth(acme.sender),
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == "html"


def test_previewing_a_template_over_a_render_limit_is_a_422_naming_the_part(
    client: TestClient, acme: TenantKeys
) -> None:
    template_id = _template(client, acme, text=CPU_BOMB)
    answer = client.post(
        f"/v1/templates/{template_id}/preview",
        json={"email": "ann@example.com"},
        headers=acme.auth(acme.viewer),
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == ("render_failed", "text")
    assert LIMIT_BROKEN.search(error["message"])


def test_a_template_too_deeply_nested_to_compile_is_a_422_naming_the_part(
    client: TestClient, acme: TenantKeys
) -> None:
    nested = "{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}"
    answer = client.post(
        "/v1/templates",
        json={"name": "t", "subject": "s", "html": nested},
        headers=acme.auth(acme.admin),
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == "html"


def test_the_dashboard_preview_shows_a_broken_render_limit_as_its_problem(
    client: TestClient, acme: TenantKeys
) -> None:
    template_id = make_template(client, acme.admin, html=CPU_BOMB)
    (ann,) = make_contacts(client, acme.admin, ["ann@example.com"])
    sign_in(client, acme.viewer)
    answer = client.get(
        "/campaigns/new/preview", params={"template_id": template_id, "preview_contact_id": ann}
    )
    assert answer.status_code == 200
    assert re.search(r"html: (rendering took longer than the time limit|[^<]*memory)", answer.text)


@pytest.fixture
def server(runtime: Runtime) -> Iterator[LiveServer]:
    with LiveServer(create_app(runtime)) as live:
        yield live


def test_healthz_answers_within_100_ms_while_pathological_templates_render(
    server: LiveServer, client: TestClient, acme: TenantKeys
) -> None:
    template_id = _template(client, acme, text=GIL_BOMB)
    answers: list[int] = []

    def preview() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            answer = http.post(
                f"/v1/templates/{template_id}/preview",
                json={"email": "ann@example.com"},
                headers=acme.auth(acme.viewer),
            )
            answers.append(answer.status_code)

    def accept() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            answer = http.post(
                "/v1/messages",
                json={"to": "ann@example.com", "subject": "s", "html": MEMORY_BOMB},
                headers=acme.auth(acme.sender),
            )
            answers.append(answer.status_code)

    latencies: list[float] = []
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/healthz").status_code == 200  # the connection is open
        renders = [threading.Thread(target=preview) for _ in range(3)]
        renders += [threading.Thread(target=accept) for _ in range(3)]
        for thread in renders:
            thread.start()
        while any(thread.is_alive() for thread in renders):
            started = time.perf_counter()
            assert http.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
        for thread in renders:
            thread.join()
    latencies.sort()
    # This machine's own noise (2 cores, many processes) puts a few answers past 100 ms even with
    # no render at all; a render holding this process (the GIL, the loop) stalls it for seconds.
    assert latencies[int(len(latencies) * 0.9)] < HEALTH_LATENCY_BOUND, latencies[-10:]
    assert latencies[-1] < HEALTH_LATENCY_CEILING, latencies[-10:]
    assert len(latencies) > 20  # the renders took a while, and health was asked all along
    assert answers == [422] * 6


def test_a_render_holds_no_database_lock_while_it_runs(
    server: LiveServer, client: TestClient, acme: TenantKeys, globex: TenantKeys
) -> None:
    """On SQLite a transaction holds the one write lock from its BEGIN: a request's reads end
    before its render, so another tenant's write never waits for a pathological template."""
    template_id = _template(client, acme, text=GIL_BOMB)  # killed after 3 s of wall clock

    def preview() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            http.post(
                f"/v1/templates/{template_id}/preview",
                json={"email": "ann@example.com"},
                headers=acme.auth(acme.viewer),
            )

    def accept() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            http.post(
                "/v1/messages",
                json={"to": "ann@example.com", "template_id": template_id},
                headers=acme.auth(acme.sender),
            )

    renders = [threading.Thread(target=preview), threading.Thread(target=accept)]
    for thread in renders:
        thread.start()
    time.sleep(1.0)  # both are rendering now
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for n in range(3):
            started = time.perf_counter()
            answer = http.post(
                "/v1/contacts",
                json={"email": f"bob{n}@example.com"},
                headers=globex.auth(globex.admin),
            )
            assert answer.status_code == 201, answer.text
            assert time.perf_counter() - started < 1.0
    for thread in renders:
        thread.join()
