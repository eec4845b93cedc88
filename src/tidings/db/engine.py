"""Engines and sessions for SQLite and PostgreSQL, and the migration runner.

SQLite is tuned for a queue shared by threads and processes on one machine: WAL (readers never
block the writer), a busy timeout, foreign keys on, and every transaction opened with
``BEGIN IMMEDIATE``. The last one matters: a deferred transaction that reads and then writes can
fail with SQLITE_BUSY at once, without waiting, when another writer got there first; taking the
write lock at BEGIN makes writers queue politely behind the busy timeout instead.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from tidings.private_files import create_private_file, make_private_dir

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Connections per process: ``POOL_SIZE`` kept open, up to ``POOL_OVERFLOW`` more under load.
POOL_SIZE = 10
POOL_OVERFLOW = 20
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def make_engine(url: str, *, transaction_pooling: bool = False, **kwargs: Any) -> Engine:
    """An engine for ``url`` (already resolved by ``Settings.resolved_database_url``).

    ``transaction_pooling``: the URL is a pooler in transaction mode (PgBouncer before 1.21 keeps
    no prepared statement across transactions), so psycopg never prepares statements on the
    server; each one is parsed per execution instead."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _create_private_database(Path(parsed.database))
            kwargs.setdefault("pool_size", POOL_SIZE)
            kwargs.setdefault("max_overflow", POOL_OVERFLOW)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            **kwargs,
        )
        _tune_sqlite(engine)
        return engine
    kwargs.setdefault("pool_size", POOL_SIZE)
    kwargs.setdefault("max_overflow", POOL_OVERFLOW)
    kwargs.setdefault("pool_pre_ping", True)
    if transaction_pooling:
        kwargs.setdefault("connect_args", {})["prepare_threshold"] = None
    return create_engine(url, **kwargs)


def _create_private_database(path: Path) -> None:
    """Create the SQLite file empty and 0600 before SQLite opens it: SQLite would make it 0644
    less the umask, and gives ``-wal`` and ``-shm`` the database file's mode. An empty file is an
    empty database to SQLite."""
    make_private_dir(path.parent)
    try:
        fd = create_private_file(path)
    except OSError:  # a read-only directory, say: SQLite says what is wrong when it opens it
        return
    if fd is not None:
        os.close(fd)


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit when the block ends normally, roll back on any exception.

    Not ``session.begin()`` as a context: that refuses the early end of a read (``end_reads``).
    """
    with factory() as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        session.commit()


def end_reads(session: Session) -> None:
    """End a transaction that has only read, before a wait of seconds (a template render).

    On SQLite every transaction holds the database's one write lock from its ``BEGIN IMMEDIATE``:
    kept open across the wait, it would hold every other writer (other tenants' requests, the
    workers' lease renewals) back for as long. What was read stays loaded; the next statement
    begins a new transaction.
    """
    session.commit()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations on ``engine`` (idempotent: a current database is left as it is).

    On SQLite, foreign keys are off while migrations run, as SQLite's own procedure for
    rebuilding a table says: batch mode drops the old table, and with foreign keys on, dropping
    a parent (contacts, templates …) would delete its children by cascade or fail on a RESTRICT.
    ``PRAGMA foreign_key_check`` must then find nothing, or the whole upgrade rolls back.
    """
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as connection:
        # The pragma is a no-op inside a transaction: set it on the driver before BEGIN.
        driver = connection.connection.driver_connection if _is_sqlite(engine) else None
        if driver is not None:
            driver.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
                if driver is not None:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"migration broke foreign keys: {broken[:5]}")
        finally:
            if driver is not None:
                driver.execute("PRAGMA foreign_keys=ON")


def _is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def pending_migrations(engine: Engine) -> bool:
    """True when the database is behind the code's newest migration (``/readyz`` reports it)."""
    script = ScriptDirectory.from_config(
        alembic_config(engine.url.render_as_string(hide_password=False))
    )
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_heads()
    return set(current) != set(script.get_heads())
