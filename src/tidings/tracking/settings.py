"""Each tenant's tracking settings (``PUT /v1/settings``), read by the worker once per batch."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidings.db.models import TenantSettings


@dataclass(frozen=True, slots=True)
class TrackingDefaults:
    """What a tenant's mail tracks unless its campaign or message says otherwise: nothing, by
    default (no row, or never turned on)."""

    opens: bool = False
    clicks: bool = False


def tenant_tracking(session: Session, tenant_ids: Iterable[int]) -> dict[int, TrackingDefaults]:
    """Each tenant's settings in one read for a whole batch."""
    wanted = sorted(set(tenant_ids))
    found = dict.fromkeys(wanted, TrackingDefaults())
    if wanted:
        for tenant_id, opens, clicks in session.connection().execute(
            select(
                TenantSettings.tenant_id, TenantSettings.track_opens, TenantSettings.track_clicks
            ).where(TenantSettings.tenant_id.in_(wanted))
        ):
            found[tenant_id] = TrackingDefaults(opens=bool(opens), clicks=bool(clicks))
    return found
