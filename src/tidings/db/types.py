"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

#: 64-bit ids on PostgreSQL; SQLite only autoincrements a column declared exactly INTEGER.
BigId = BigInteger().with_variant(Integer(), "sqlite")
#: JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
Json = JSON().with_variant(JSONB(), "postgresql")
#: The same, for a nullable column: Python None is SQL NULL (``Json`` writes the JSON text null,
#: which ``IS NULL`` does not find).
NullableJson = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on both dialects.

    PostgreSQL stores ``timestamptz``. SQLite has no time type: values are stored as naive UTC text
    in one fixed format, so that string comparison in SQL (``not_before <= :now``) is time order.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, _dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        parsed: datetime = (
            datetime.fromisoformat(value) if isinstance(value, str) else value
        )  # str: raw SQL on SQLite
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
