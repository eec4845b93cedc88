"""The packages' import directions: the API never imports the dashboard (the application that
mounts both is ``tidings.app``), and the command line's modules import cleanly in any order."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _imported_after(statement: str) -> set[str]:
    script = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


def test_the_api_never_imports_the_dashboard() -> None:
    modules = _imported_after(
        "import tidings.api.routes, tidings.api.errors, tidings.api.body_limits, tidings.api.deps"
    )
    assert "tidings.api.routes.campaigns" in modules
    assert sorted(m for m in modules if m == "tidings.web" or m.startswith("tidings.web.")) == []


@pytest.mark.parametrize(
    "first", ["tidings.demo", "tidings.cli.progress", "tidings.cli.app", "tidings.app"]
)
def test_each_entry_module_imports_first_without_a_cycle(first: str) -> None:
    modules = _imported_after(f"import {first}\nimport tidings.cli.app")
    assert {first, "tidings.cli.app"} <= modules
