"""The delivery engine stands on the queue and the database, never on the service layer above it.

``services`` is what the API and the CLI call: it may use the queue, not the other way round.
A worker (and the metrics it serves) that imported a service would drag the API's validation and
its dependencies into every worker process, and a change to a service could break delivery.
Checked in a fresh interpreter, because this test process has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
