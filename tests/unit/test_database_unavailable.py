"""An unreachable database is a retryable 503 with the error body, never a 500 traceback."""

from __future__ import annotations

import socket
from pathlib import Path

from fastapi.testclient import TestClient

from tests.conftest import make_settings
from tidings.app import create_app
from tidings.runtime import build_runtime


def test_an_unreachable_database_answers_503(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(tmp_path, f"postgresql://postgres@127.0.0.1:{port}/nothing")
    runtime = build_runtime(settings, migrate=False)
    try:
        with TestClient(create_app(runtime)) as client:
            answer = client.get("/v1/keys", headers={"Authorization": "Bearer td_000000000000_x"})
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["error"]["code"] == "unavailable"
    finally:
        runtime.close()
