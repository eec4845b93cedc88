"""The time zone a tenant's recipients see times in when their contact has none of its own.

Templates show times in the recipient's zone (``rendering/localtime.py``): the contact's own,
else its tenant's default from here, else UTC. The worker reads it for each batch, the API for
the render it checks a message with.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

#: The zone of a tenant that has not chosen one.
DEFAULT_TIMEZONE = "UTC"


def tenant_timezones(session: Session, tenant_ids: Iterable[int]) -> dict[int, str]:  # noqa: ARG001
    """Each tenant's default zone (IANA name), in one read for a whole batch: tenants have no time
    zone setting, so it is ``DEFAULT_TIMEZONE`` for every tenant."""
    return dict.fromkeys(tenant_ids, DEFAULT_TIMEZONE)
