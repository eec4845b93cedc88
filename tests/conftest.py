"""Fixtures shared by every tier: a real database per backend (SQLite file, PostgreSQL server) and the app.

Every database test runs twice, on SQLite and on PostgreSQL (``db_url`` is parametrised). Under
``CI=true`` a missing PostgreSQL server is an error; elsewhere those tests skip with the reason.
PostgreSQL tests share one freshly created database per test session, emptied before each test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from tidings.api.app import create_app
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


def _truncate_pg(url: str) -> None:
    engine = create_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL, empty and migrated: a new SQLite file, or the emptied PostgreSQL test database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tidings.db'}"
    url: str = request.getfixturevalue("pg_database_url")
    _truncate_pg(url)
    return url


def make_settings(tmp_path: Path, db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": db_url,
        "secret_key": TEST_SECRET,
        "transport_url": f"outbox://{tmp_path / 'outbox'}",
        "public_url": "http://tidings.test",
    }
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
