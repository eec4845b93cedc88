"""The delivery engine stands on the queue and the database, never on the service layer above it.

``services`` is what the API and the CLI call: it may use the queue, not the other way round.
A worker (and the metrics it serves) that imported a service would drag the API's validation and
its dependencies into every worker process, and a change to a service could break delivery.
Checked in a fresh interpreter, because this test process has imported everything already.

The transport port (``transports/base.py``) likewise knows no concrete transport: the concrete
ones import it, and the factory above them all turns a URL into one, so there is no cycle.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

import tidings.transports.base

ENGINE_MODULES = ("tidings.delivery.worker", "tidings.metrics", "tidings.queue.status")


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_the_delivery_engine_does_not_load_the_service_layer(module: str) -> None:
    probe = (
        f"import json, sys, {module}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('tidings.services'))))"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(output) == []


CONCRETE_TRANSPORTS = {"outbox", "smtp", "smtp_session", "resend", "memory", "factory", "routing"}


def _imported_modules(path: str) -> set[str]:
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    found: set[str] = set()
    for node in ast.walk(tree):  # function-level imports count too: they are a cycle all the same
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_transport_port_imports_no_concrete_transport() -> None:
    assert tidings.transports.base.__file__ is not None
    imported = _imported_modules(tidings.transports.base.__file__)
    concrete = {f"tidings.transports.{name}" for name in CONCRETE_TRANSPORTS}
    assert imported & concrete == set()


def test_loading_the_port_loads_no_transport_library() -> None:
    probe = (
        "import json, sys, tidings.transports.base; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith("
        "('tidings.transports.', 'aiosmtplib', 'httpx')))))"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(output) == ["tidings.transports.base"]
