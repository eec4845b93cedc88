"""Throw-away databases for the benchmarks: a SQLite file in a temporary folder, or a PostgreSQL
database created for one run and dropped after it, whatever happens in between."""

from __future__ import annotations

import argparse
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tidings.config import Settings

#: The server every benchmark uses unless told otherwise (trust auth, as on the CI machine).
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as directory:
        yield f"sqlite:///{Path(directory) / 'bench.db'}"


@contextmanager
def postgres_database(admin_url: str = PG_ADMIN_URL, *, purpose: str = "bench") -> Iterator[str]:
    resolved = Settings(database_url=admin_url).resolved_database_url()
    name = f"tidings_bench_{purpose}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(resolved, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(resolved).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--pg", default=PG_ADMIN_URL)


def each_database(args: argparse.Namespace, *, purpose: str) -> Iterator[tuple[str, str]]:
    """(name, URL) of each database ``--databases`` asks for, in its order, each made for the
    run and removed once the caller moves on to the next."""
    for database in args.databases.split(","):
        if database == "sqlite":
            with sqlite_database() as url:
                yield "SQLite", url
        else:
            with postgres_database(args.pg, purpose=purpose) as url:
                yield "PostgreSQL", url
