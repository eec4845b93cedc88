"""Reads served by a PostgreSQL hot standby (``TIDINGS_DATABASE_REPLICA_URL``), and the fallback
to the primary when it cannot be reached.

The replica takes the dashboard's pages and the campaign status reads off the primary: grouped
counts repeated every second by every open campaign page, while the primary's own work is the
queue. Which reads may go to it is decided by their callers (``api/deps.py``, ``ReadSessionDep``):
only requests that write nothing, never a worker. A replica that cannot be reached must not turn
dashboards into error pages: such a read goes to the primary, and the replica is left alone for
``RETRY_SECONDS``, so that reads do not each pay for a failing connection and the warning is
logged once per attempt, not once per read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from tidings.db.engine import make_engine, make_session_factory

log = logging.getLogger("tidings.db.replica")

#: After a failed connection to the replica, reads go to the primary for this long (seconds).
RETRY_SECONDS = 10.0
#: A replica that does not answer (a host that drops packets) costs a read at most this (seconds).
CONNECT_TIMEOUT_SECONDS = 2

#: Seconds the replica's data is behind the primary's: since the last commit it replayed, unless
#: it is streaming and has replayed all it received (then 0: the time since the last commit alone
#: would grow while the primary is idle). Not streaming (its link to the primary is cut), it
#: cannot know what it misses, and the time since its last commit is the honest figure. Zero for
#: a server that is not a standby at all (a URL pointing at the primary itself).
LAG_SQL = text(
    """
    SELECT CASE
        WHEN NOT pg_is_in_recovery() THEN 0.0
        WHEN EXISTS (SELECT FROM pg_stat_wal_receiver)
            AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
        ELSE EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())
    END
    """
)


class ReadReplica:
    """The replica's engine, with the primary's sessions to fall back on."""

    def __init__(
        self,
        engine: Engine,
        *,
        primary: sessionmaker[Session],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self._sessions = make_session_factory(engine)
        self._primary = primary
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._down_until: float | None = None  # set while reads avoid the replica

    def session(self) -> Session:
        """A session on the replica, connected already (so that a failure is known before the
        caller reads anything); a session on the primary when the replica cannot be reached."""
        down_until = self._down_until
        if down_until is not None and self._monotonic() < down_until:
            return self._primary()
        session = self._sessions()
        try:
            session.connection()
        except SQLAlchemyError as exc:
            session.close()
            self._failed(exc)
            return self._primary()
        self._answered()
        return session

    def lag_seconds(self) -> float | None:
        """How far the replica's data is behind the primary's; None when it cannot tell yet (it
        has not replayed a transaction since it started). Raises when it cannot be reached."""
        try:
            with self.engine.connect() as connection:
                value = connection.execute(LAG_SQL).scalar()
        except SQLAlchemyError as exc:
            self._failed(exc)
            raise
        self._answered()
        return None if value is None else max(0.0, float(value))

    def close(self) -> None:
        self.engine.dispose()

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            now = self._monotonic()
            if self._down_until is not None and now < self._down_until:
                return  # another thread has just reported it
            self._down_until = now + RETRY_SECONDS
        log.warning(
            "the read replica cannot be reached; reading the primary for the next %.0f s: %s",
            RETRY_SECONDS,
            _reason(exc),
        )

    def _answered(self) -> None:
        if self._down_until is None:
            return
        with self._lock:
            was_down, self._down_until = self._down_until is not None, None
        if was_down:
            log.info("the read replica answers again; reads go to it")


def _reason(exc: Exception) -> str:
    """The driver's own first line (``connection refused``), without SQLAlchemy's wrapping."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0][:300] if lines else exc.__class__.__name__


def open_replica(
    url: str, *, primary: sessionmaker[Session], transaction_pooling: bool
) -> ReadReplica:
    """The replica at ``url`` (resolved by ``Settings.replica_url``); nothing connects yet, so a
    process starts while its replica is down, reading the primary until it is up."""
    engine = make_engine(
        url,
        transaction_pooling=transaction_pooling,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
    )
    return ReadReplica(engine, primary=primary)
