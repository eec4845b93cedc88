"""Wake idle workers when work is enqueued: PostgreSQL ``NOTIFY`` (polling remains the guarantee)."""

from __future__ import annotations

from sqlalchemy.orm import Session

#: The channel workers ``LISTEN`` on.
CHANNEL = "tidings_queue"
#: Set in ``session.info``; the runtime wakes this process's own workers after the commit.
NEW_WORK_FLAG = "tidings.new_work"


def notify_new_work(session: Session) -> None:
    """Signal new work; delivered when (and only if) the caller's transaction commits.

    PostgreSQL folds identical notifications in one transaction, so calling this once per enqueued
    row costs nothing more than once per batch. Workers in this process (``tidings serve``) are
    woken directly after the commit, which is all SQLite has: it has no NOTIFY, and other
    processes on SQLite find the work at their next poll.
    """
    session.info[NEW_WORK_FLAG] = True
    if session.get_bind().dialect.name == "postgresql":
        # Straight to the driver: it runs for every message accepted by the API, and the ORM's
        # execute path costs several times the statement.
        session.connection().exec_driver_sql(f"NOTIFY {CHANNEL}")
