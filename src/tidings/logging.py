"""Process-wide logging, set up once by each entry point (``serve``, ``worker``, ``demo``).

``TIDINGS_LOG_FORMAT=json`` writes one JSON object per line — ``ts``, ``level``, ``logger``,
``msg``, then any ``extra={...}`` fields and ``exc`` for a traceback — for log collectors;
``text`` (the default) writes readable lines for people. Everything goes to standard error.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from tidings.config import Settings
from tidings.errors import ConfigurationError

#: Attributes every ``LogRecord`` has; anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: Libraries whose INFO lines are noise next to ours.
QUIET_LOGGERS = ("httpx", "httpcore", "aiosmtplib", "alembic", "uvicorn.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; values JSON cannot hold are written with ``str()``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value …`` with the ``extra`` fields at the end."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
        ]
        if not extras:
            return line
        first, newline, rest = line.partition("\n")  # keep a traceback below the extras
        return f"{first} {' '.join(extras)}{newline}{rest}"


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time of the record (test runners replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging(settings: Settings) -> logging.Handler:
    """Install the one Tidings handler on the root logger (replacing an earlier one); returns it."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _StderrHandler):
            root.removeHandler(old)
    level = logging.getLevelNamesMapping().get(settings.log_level.strip().upper())
    if level is None:
        raise ConfigurationError(
            "TIDINGS_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR", field="TIDINGS_LOG_LEVEL"
        )
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, level))
    return handler
