"""Where a worker LISTENs (straight to PostgreSQL, never through a transaction pooler), and which
read replica may serve the dashboards (only one of a PostgreSQL primary)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.config import Settings
from tidings.errors import ConfigurationError
from tidings.runtime import build_runtime

SERVER = "postgresql://tidings@db.internal:5432/tidings"
POOLER = "postgresql://tidings@pgbouncer.internal:6432/tidings"


def test_a_worker_listens_on_the_database_it_uses() -> None:
    assert Settings(database_url=SERVER).listen_url() == SERVER


def test_behind_a_transaction_pooler_it_listens_on_the_direct_url_it_is_given() -> None:
    settings = Settings(
        database_url=POOLER, database_pooling="transaction", database_listen_url=SERVER
    )
    assert settings.listen_url() == SERVER
    assert settings.resolved_database_url() == POOLER.replace("postgresql:", "postgresql+psycopg:")


def test_behind_a_transaction_pooler_without_a_direct_url_it_only_polls() -> None:
    assert Settings(database_url=POOLER, database_pooling="transaction").listen_url() is None


def test_sqlite_has_nothing_to_listen_on() -> None:
    assert Settings(database_url="sqlite:///tidings.db").listen_url() is None


def test_a_listen_url_that_is_not_postgresql_is_refused() -> None:
    settings = Settings(database_url=SERVER, database_listen_url="mysql://x@y/z")
    with pytest.raises(ConfigurationError) as refused:
        settings.listen_url()
    assert refused.value.field == "TIDINGS_DATABASE_LISTEN_URL"


REPLICA = "postgresql://tidings@replica.internal:5432/tidings"


def test_without_a_replica_url_every_read_goes_to_the_primary(tmp_path: Path) -> None:
    assert Settings(database_url=SERVER).replica_url() is None
    runtime = build_runtime(Settings(data_dir=tmp_path, secret_key="k" * 40))
    try:
        assert runtime.replica is None
        with runtime.read_session() as session:
            assert session.get_bind() is runtime.engine
    finally:
        runtime.close()


def test_a_replica_url_is_pinned_to_psycopg_like_the_primary() -> None:
    settings = Settings(database_url=SERVER, database_replica_url=REPLICA)
    assert settings.replica_url() == REPLICA.replace("postgresql:", "postgresql+psycopg:")


@pytest.mark.parametrize("primary", [None, "sqlite:///tidings.db"])
def test_a_replica_of_sqlite_is_refused_at_start_up(tmp_path: Path, primary: str | None) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url=primary, database_replica_url=REPLICA, secret_key="k" * 40
    )
    with pytest.raises(ConfigurationError) as refused:
        build_runtime(settings)
    assert refused.value.field == "TIDINGS_DATABASE_REPLICA_URL"
    assert "SQLite has no replicas" in refused.value.message
    assert not (tmp_path / "tidings.db").exists()  # refused before anything was made


@pytest.mark.parametrize("url", ["sqlite:///replica.db", "mysql://x@y/z"])
def test_a_replica_that_is_not_postgresql_is_refused(url: str) -> None:
    settings = Settings(database_url=SERVER, database_replica_url=url)
    with pytest.raises(ConfigurationError) as refused:
        settings.replica_url()
    assert refused.value.field == "TIDINGS_DATABASE_REPLICA_URL"
