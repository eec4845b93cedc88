"""Where a worker LISTENs: straight to PostgreSQL, never through a transaction pooler."""

from __future__ import annotations

import pytest

from tidings.config import Settings
from tidings.errors import ConfigurationError

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
