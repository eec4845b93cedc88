"""The composition root: everything a process needs, built once from ``Settings``."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tidings.clock import Clock, SystemClock
from tidings.config import Settings
from tidings.db.engine import make_engine, make_session_factory, upgrade


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    secret_key: str
    clock: Clock = field(default_factory=SystemClock)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()


def build_runtime(
    settings: Settings, *, migrate: bool | None = None, clock: Clock | None = None
) -> Runtime:
    """Engine, sessions and secret for ``settings``.

    ``migrate=None`` applies migrations on SQLite only: a new SQLite file just works, while a shared
    PostgreSQL database is migrated deliberately with ``tidings db upgrade``.
    """
    engine = make_engine(settings.resolved_database_url())
    if migrate or (migrate is None and engine.dialect.name == "sqlite"):
        upgrade(engine)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        secret_key=settings.resolved_secret_key(),
        clock=clock or SystemClock(),
    )
