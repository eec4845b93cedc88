"""Structured logs: one JSON object per line when configured, readable lines otherwise."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from tidings.config import Settings
from tidings.errors import ConfigurationError
from tidings.logging import configure_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_are_one_object_per_line_with_the_extra_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(Settings(log_format="json", log_level="debug"))
    log = logging.getLogger("tidings.worker")
    log.info("batch %s sent", "b1", extra={"tenant_id": 7, "messages": 100})
    try:
        raise RuntimeError("smtp down")
    except RuntimeError:
        log.exception("send failed")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert set(first) == {"ts", "level", "logger", "msg", "tenant_id", "messages"}
    assert (first["level"], first["logger"], first["msg"]) == (
        "info",
        "tidings.worker",
        "batch b1 sent",
    )
    assert (first["tenant_id"], first["messages"]) == (7, 100)
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "error" and "RuntimeError: smtp down" in second["exc"]


def test_text_logs_are_readable_lines_and_configuring_twice_keeps_one_handler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(Settings(log_format="json"))
    configure_logging(Settings(log_format="text", log_level="WARNING"))
    log = logging.getLogger("tidings.api")
    log.info("not shown")
    log.warning("slow request", extra={"path": "/v1/messages"})
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "WARNING" in err and "tidings.api: slow request path=/v1/messages" in err
    assert not err.startswith("{")


def test_an_unknown_log_level_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="TIDINGS_LOG_LEVEL"):
        configure_logging(Settings(log_level="chatty"))
