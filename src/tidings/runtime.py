"""The composition root: everything a process needs, built once from ``Settings``."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from tidings.clock import Clock, SystemClock
from tidings.config import SECRET_FILE_NAME, Settings
from tidings.db.engine import make_engine, make_session_factory, upgrade
from tidings.db.replica import ReadReplica, open_replica
from tidings.errors import ConfigurationError
from tidings.private_files import warn_if_open_to_others
from tidings.queue.notify import NEW_WORK_FLAG
from tidings.services.tenants import PrincipalCache
from tidings.tracking.hits import HitBuffer
from tidings.transports.factory import parse_outbox_url

if TYPE_CHECKING:
    from tidings.rendering.pool import RenderPool


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    secret_key: str
    clock: Clock = field(default_factory=SystemClock)
    #: Called after any commit in this process that enqueued work: the embedded workers' wake-up.
    wakeups: set[Callable[[], None]] = field(default_factory=set)
    #: API keys recently authenticated by this process (see ``PrincipalCache`` for the trade-off).
    principals: PrincipalCache = field(default_factory=PrincipalCache)
    #: The read replica (``TIDINGS_DATABASE_REPLICA_URL``), or None: every read goes to ``engine``.
    replica: ReadReplica | None = None
    #: Opens and clicks the public routes saw, waiting for the next flush (``tracking/hits.py``).
    hits: HitBuffer = field(default_factory=HitBuffer)

    def __post_init__(self) -> None:
        @event.listens_for(self.sessions, "after_commit")
        def _after_commit(session: Session) -> None:
            if session.info.pop(NEW_WORK_FLAG, False):
                for wake in list(self.wakeups):
                    wake()

        @event.listens_for(self.sessions, "after_rollback")
        def _after_rollback(session: Session) -> None:
            session.info.pop(NEW_WORK_FLAG, None)

    def read_session(self) -> Session:
        """A session for reads that may lag the primary (dashboards, campaign status): on the
        replica when there is one and it answers, else on the primary. Never for a read that a
        write depends on; a worker never uses it."""
        if self.replica is None:
            return self.sessions()
        return self.replica.session()

    @cached_property
    def renderer(self) -> RenderPool:
        """Where every tenant template renders; its processes start at the first render."""
        from tidings.rendering.pool import RenderPool

        return RenderPool(settings=self.settings, secret_key=self.secret_key, clock=self.clock)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def stop_rendering(self) -> None:
        """Stop the render processes, if any were started (a later render starts them again)."""
        if "renderer" in self.__dict__:  # the cached_property was used
            self.renderer.close()

    def close(self) -> None:
        self.stop_rendering()
        if self.replica is not None:
            self.replica.close()
        self.engine.dispose()


def build_runtime(
    settings: Settings, *, migrate: bool | None = None, clock: Clock | None = None
) -> Runtime:
    """Engine, sessions and secret for ``settings``.

    ``migrate=None`` applies migrations on SQLite only: a new SQLite file just works, while a shared
    PostgreSQL database is migrated deliberately with ``tidings db upgrade``.
    """
    replica_url = settings.replica_url()  # refused before anything starts, if it cannot work
    transaction_pooling = settings.database_pooling == "transaction"
    engine = make_engine(settings.resolved_database_url(), transaction_pooling=transaction_pooling)
    if migrate or (migrate is None and engine.dialect.name == "sqlite"):
        upgrade(engine)
    sessions = make_session_factory(engine)
    runtime = Runtime(
        settings=settings,
        engine=engine,
        sessions=sessions,
        secret_key=settings.resolved_secret_key(),
        clock=clock or SystemClock(),
        replica=(
            open_replica(replica_url, primary=sessions, transaction_pooling=transaction_pooling)
            if replica_url is not None
            else None
        ),
    )
    warn_if_open_to_others(private_paths(settings))
    return runtime


def private_paths(settings: Settings) -> list[Path]:
    """Where this instance keeps contact data and secrets on disk: the data directory, the
    generated secret, the SQLite database with its ``-wal`` and ``-shm``, the outbox maildir."""
    paths = [settings.data_dir, settings.data_dir / SECRET_FILE_NAME]
    database = make_url(settings.resolved_database_url())
    if database.get_backend_name() == "sqlite" and database.database not in (None, "", ":memory:"):
        file = Path(str(database.database))
        paths += [file, file.with_name(f"{file.name}-wal"), file.with_name(f"{file.name}-shm")]
    transport = settings.resolved_transport_url()
    if transport.lower().startswith("outbox:"):
        try:
            paths.append(parse_outbox_url(transport))
        except ConfigurationError:
            pass  # the worker reports a bad URL when it builds the transport
    return list(dict.fromkeys(paths))


def freeze_startup_objects() -> None:
    """Take what start-up allocated (modules, mappers, routes, compiled statements) out of the
    garbage collector's sight, once a long-running process is ready.

    A full collection then scans only what work allocates since, instead of pausing every request
    in flight for tens of milliseconds: the API's tail latency is mostly those pauses.
    """
    gc.collect()
    gc.freeze()
