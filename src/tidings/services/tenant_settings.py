"""A tenant's settings that are not limits: its time zone (sending windows in ``"contact"`` time fall
back to it, the dashboard shows times in it) and whether its mail tracks opens and clicks (off
unless turned on). One row per tenant; no row means every default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tidings.db.models import TenantSettings
from tidings.db.timezones import tenant_timezone
from tidings.errors import InvalidInput
from tidings.scheduling.windows import FALLBACK_TIMEZONE, known_time_zone

#: The settings a caller may change.
SETTING_FIELDS = ("timezone", "track_opens", "track_clicks", "bounce_domain")
TRACKING_FIELDS = ("track_opens", "track_clicks")
#: A DNS name of two labels at least, each 1-63 letters, digits or hyphens (not at an end).
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def check_timezone(value: object, *, field: str = "timezone") -> str:
    if not isinstance(value, str) or not known_time_zone(value.strip()):
        raise InvalidInput(
            f"{field} must be an IANA time zone name such as 'Europe/Berlin' (the default is UTC)",
            field=field,
        )
    return value.strip()


def check_bounce_domain(value: object, *, field: str = "bounce_domain") -> str | None:
    """A domain whose mail comes back to us (its MX is our bounce mailbox), or None to stop VERP."""
    if value is None:
        return None
    domain = value.strip().lower().rstrip(".") if isinstance(value, str) else ""
    if not _DOMAIN.fullmatch(domain):
        raise InvalidInput(
            f"{field} must be a domain name such as bounces.example.com, or null", field=field
        )
    return domain


def get_settings(*, session: Session, tenant_id: int, now: datetime) -> TenantSettings:
    """The tenant's settings; a tenant without a row has the defaults (a detached, unsaved row)."""
    row = session.get(TenantSettings, tenant_id)
    if row is None:
        return TenantSettings(
            tenant_id=tenant_id,
            timezone=FALLBACK_TIMEZONE,
            track_opens=False,
            track_clicks=False,
            updated_at=now,
        )
    return row


def timezone_of(*, session: Session, tenant_id: int) -> str:
    """The tenant's time zone (UTC unless set)."""
    return tenant_timezone(session, tenant_id)


def update_settings(
    *, session: Session, tenant_id: int, changes: Mapping[str, object], now: datetime
) -> TenantSettings:
    """Change the given settings and nothing else; the first change creates the row."""
    values: dict[str, object] = {}
    for name, value in changes.items():
        if name == "timezone":
            values[name] = check_timezone(value)
        elif name in TRACKING_FIELDS:
            if not isinstance(value, bool):
                raise InvalidInput(f"{name} must be true or false", field=name)
            values[name] = value
        elif name == "bounce_domain":
            values[name] = check_bounce_domain(value)
        else:
            raise InvalidInput(f"unknown setting {name}", field=name)
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(TenantSettings).values(tenant_id=tenant_id, updated_at=now, **values)
    # One statement: two first writers cannot both insert, and a concurrent change of another
    # setting is not overwritten with what this request read.
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[TenantSettings.tenant_id], set_={**values, "updated_at": now}
        )
    )
    row = session.scalar(
        select(TenantSettings)
        .where(TenantSettings.tenant_id == tenant_id)
        .execution_options(populate_existing=True)
    )
    assert row is not None
    return row
