"""The time zone a tenant's recipients see times in when their contact has none of its own.

Templates show times in the recipient's zone (``rendering/localtime.py``) and sending windows open
in it (``scheduling/windows.py``): the contact's own zone, else its tenant's default from here
(``PUT /v1/settings``), else UTC. The worker reads it for each batch, the API for the message it
checks, the fan-out once per campaign.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidings.db.models import TenantSettings
from tidings.scheduling.windows import FALLBACK_TIMEZONE, known_time_zone


def tenant_timezones(session: Session, tenant_ids: Iterable[int]) -> dict[int, str]:
    """Each tenant's default zone (IANA name), in one read for a whole batch; UTC unless set."""
    wanted = set(tenant_ids)
    zones = dict.fromkeys(wanted, FALLBACK_TIMEZONE)
    if wanted:
        for tenant_id, zone in session.execute(
            select(TenantSettings.tenant_id, TenantSettings.timezone).where(
                TenantSettings.tenant_id.in_(sorted(wanted))
            )
        ):
            if zone and known_time_zone(zone):
                zones[tenant_id] = zone
    return zones


def tenant_timezone(session: Session, tenant_id: int) -> str:
    """One tenant's default zone."""
    return tenant_timezones(session, [tenant_id])[tenant_id]
