"""The database's clock: every worker schedules, leases and throttles on one clock, not its own."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.orm import Session


def db_now(session: Session) -> datetime:
    """Now, by the database server (PostgreSQL); SQLite lives on this machine, so its clock is ours."""
    if session.get_bind().dialect.name == "postgresql":
        value: datetime = (
            session.connection().execute(text("SELECT clock_timestamp()")).scalar_one()
        )
        return value.astimezone(UTC)
    return datetime.now(UTC)
