"""Wake idle workers when work is enqueued: PostgreSQL ``NOTIFY`` (polling remains the guarantee)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

#: The channel workers ``LISTEN`` on.
CHANNEL = "tidings_queue"


def notify_new_work(session: Session) -> None:
    """Signal new work; delivered when (and only if) the caller's transaction commits.

    PostgreSQL folds identical notifications in one transaction, so calling this once per enqueued
    row costs nothing more than once per batch. SQLite has no NOTIFY: there the worker's short poll
    (and, in one process, the in-process wake-up of the embedded worker) does the job.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"NOTIFY {CHANNEL}"))
