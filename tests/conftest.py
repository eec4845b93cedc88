"""Fixtures shared by every tier: a real database per backend (SQLite file, PostgreSQL server) and the app.

Every database test runs twice, on SQLite and on PostgreSQL (``db_url`` is parametrised). Under
``CI=true`` a missing PostgreSQL server is an error; elsewhere those tests skip with the reason.
PostgreSQL tests share one freshly created database per test session, emptied before each test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.pg_replica import ReplicatedCluster, binaries, start_replicated_cluster
from tidings.app import create_app
from tidings.config import Settings
from tidings.db.engine import make_engine, transaction, upgrade
from tidings.db.models import Base
from tidings.domain import Role
from tidings.runtime import Runtime, build_runtime
from tidings.services import tenants

PG_ADMIN_URL = os.environ.get(
    "TIDINGS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TEST_SECRET = "test-secret-" + "x" * 40


def _pg_available() -> str | None:
    """None when the server answers, else the reason it does not."""
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.__class__.__name__}"
    return None


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    reason = _pg_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires PostgreSQL: {reason}")
        pytest.skip(reason)
    name = f"tidings_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


_TRUNCATING: dict[str, Any] = {}  # URL -> the engine that empties it between tests


def _truncate_pg(url: str) -> None:
    """Empty the tables a test wrote to (rows, or an identity it advanced), and only those:
    a TRUNCATE of every table cost ~0.25 s a test, most of it on tables nobody touched."""
    engine = _TRUNCATING.get(url)
    if engine is None:
        engine = _TRUNCATING[url] = create_engine(url, poolclass=NullPool)
    names = [t.name for t in Base.metadata.sorted_tables]
    probe = " UNION ALL ".join(f"SELECT '{n}' WHERE EXISTS (SELECT 1 FROM \"{n}\")" for n in names)
    with engine.begin() as conn:
        dirty = set(conn.execute(text(probe)).scalars())
        dirty |= {
            name.removesuffix("_id_seq")
            for name in conn.execute(
                text("SELECT sequencename FROM pg_sequences WHERE last_value IS NOT NULL")
            ).scalars()
        }
        tables = ", ".join(f'"{n}"' for n in names if n in dirty)
        if tables:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


#: PgBouncer in transaction mode, in front of the PostgreSQL test database: its URL -> the
#: server's own (for LISTEN, which a transaction pooler cannot carry).
POOLED: dict[str, str] = {}
PGBOUNCER = "/usr/sbin/pgbouncer"


@pytest.fixture(scope="session")
def pgbouncer_url(pg_database_url: str) -> Iterator[str]:
    """The PostgreSQL test database through a PgBouncer of our own, in transaction mode (as a
    site running many workers on many hosts would deploy it). PgBouncer refuses to run as root:
    under root it runs as ``postgres``, from a directory that user can read."""
    if not os.path.exists(PGBOUNCER):
        reason = f"PgBouncer is not installed at {PGBOUNCER} (scripts/install-pgbouncer)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires PgBouncer: {reason}")
        pytest.skip(reason)
    directory = Path(tempfile.mkdtemp(prefix="tidings-pgbouncer-"))
    directory.chmod(0o755)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = make_url(pg_database_url)
    (directory / "users.txt").write_text(f'"{server.username}" ""\n')
    (directory / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={server.host} port={server.port or 5432}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/users.txt
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 40
ignore_startup_parameters = extra_float_digits
"""
    )
    for each in directory.iterdir():
        each.chmod(0o644)
    command = [PGBOUNCER, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--", *command]
    log = (directory / "pgbouncer.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = server.set(port=port).render_as_string(hide_password=False)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                probe_engine = create_engine(url, connect_args={"prepare_threshold": None})
                with probe_engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                probe_engine.dispose()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        "PgBouncer did not start: " + (directory / "pgbouncer.log").read_text()
                    )
                time.sleep(0.1)
        POOLED[url] = pg_database_url
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_replicated() -> Iterator[ReplicatedCluster]:
    """A PostgreSQL primary of our own with a streaming replica, both on free ports, migrated;
    started once per test session (about 10 s: ``initdb`` is most of it)."""
    bin_dir = binaries()
    if bin_dir is None:
        reason = "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires them for the read-replica tests: {reason}")
        pytest.skip(reason)
    cluster = start_replicated_cluster(bin_dir)
    try:
        engine = make_engine(cluster.primary_url)
        upgrade(engine)
        engine.dispose()
        cluster.wait_caught_up()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once per test session: each test gets a copy. Running every
    migration for every test cost about 0.5 s a test, minutes over the suite."""
    path = tmp_path_factory.mktemp("sqlite-template") / "tidings.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()  # closes the last connection: the WAL is folded into the file
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL, empty and migrated: a new SQLite file, or the emptied PostgreSQL test
    database; ``pgbouncer`` (asked for by name) is that database through PgBouncer."""
    if request.param == "sqlite":
        path = tmp_path / "tidings.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_database_url")
    _truncate_pg(url)
    if request.param == "pgbouncer":
        pooled: str = request.getfixturevalue("pgbouncer_url")
        return pooled
    return url


def make_settings(tmp_path: Path, db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": db_url,
        "secret_key": TEST_SECRET,
        "transport_url": f"outbox://{tmp_path / 'outbox'}",
        "public_url": "http://tidings.test",
        # Sender-domain checks ask no resolver beyond loopback (nothing listens on port 9; tests
        # that verify domains run tests/dns_server.py and point this at it).
        "dns_resolver": "127.0.0.1:9",
    }
    if db_url in POOLED:
        values["database_pooling"] = "transaction"
        values["database_listen_url"] = POOLED[db_url]
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = build_runtime(settings, migrate=True)
    yield rt
    rt.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime)) as test_client:
        yield test_client


@dataclass
class TenantKeys:
    """A tenant and one key per role, with a helper to make authenticated requests."""

    tenant_id: int
    admin: str
    sender: str
    viewer: str

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


def create_tenant(runtime: Runtime, name: str) -> TenantKeys:
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        tenant, admin = tenants.create_tenant(session=session, name=name, now=now)
        sender = tenants.create_key(
            session=session, tenant_id=tenant.id, name="s", role=Role.sender, now=now
        )
        viewer = tenants.create_key(
            session=session, tenant_id=tenant.id, name="v", role=Role.viewer, now=now
        )
        return TenantKeys(tenant.id, admin.secret, sender.secret, viewer.secret)


@pytest.fixture
def tenant_factory(runtime: Runtime) -> Callable[[str], TenantKeys]:
    return lambda name: create_tenant(runtime, name)


@pytest.fixture
def acme(runtime: Runtime) -> TenantKeys:
    return create_tenant(runtime, "acme")


@pytest.fixture
def globex(runtime: Runtime) -> TenantKeys:
    """A second tenant, to prove that no tenant sees or touches another's rows."""
    return create_tenant(runtime, "globex")
