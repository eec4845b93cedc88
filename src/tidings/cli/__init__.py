"""The ``tidings`` command line; the commands are in ``tidings.cli.app``.

``main`` imports them when it runs, not when this package is imported: ``tidings.demo`` uses
``tidings.cli.progress``, and the process commands import ``tidings.demo``, so a package that
imported its commands here would make importing ``tidings.demo`` first a cycle.
"""

from __future__ import annotations


def main() -> None:
    """The ``tidings`` entry point (``pyproject.toml``: ``tidings.cli:main``)."""
    from tidings.cli.app import main as run

    run()
