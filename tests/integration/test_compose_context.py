"""What the worker reads for a batch is its own tenant's, whatever ids the messages carry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.conftest import TenantKeys
from tests.integration.campaign_seed import contacts, template
from tidings.db.engine import transaction
from tidings.db.models import Campaign
from tidings.delivery.compose import load_context
from tidings.queue.claimed import ClaimedMessage
from tidings.runtime import Runtime


def _claimed(
    tenant_id: int, *, contact_id: int, campaign_id: int, template_id: int
) -> ClaimedMessage:
    return ClaimedMessage(
        id=1,
        tenant_id=tenant_id,
        campaign_id=campaign_id,
        contact_id=contact_id,
        to_address="x@example.com",
        template_id=template_id,
        subject=None,
        html=None,
        text=None,
        data=None,
        from_address=None,
        category=None,
        priority=5,
        attempts=0,
        expires_at=datetime.now(UTC) + timedelta(days=1),
        idempotency_key=None,
    )


def test_a_message_naming_another_tenants_ids_finds_none_of_their_rows(
    runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    """As if the ids had been reused: acme's message names rows that are globex's."""
    [theirs] = contacts(runtime, globex.tenant_id, ["b@example.com"])
    their_template = template(runtime, globex.tenant_id)
    with transaction(runtime.sessions) as session:
        campaign = Campaign(
            tenant_id=globex.tenant_id,
            name="c",
            template_id=their_template,
            list_ids=[],
            contact_ids=[],
            data={"secret": "globex"},
            status="running",
            created_at=datetime.now(UTC),
        )
        session.add(campaign)
        session.flush()
        their_campaign = campaign.id
    named = {"contact_id": theirs, "campaign_id": their_campaign, "template_id": their_template}
    with runtime.sessions() as session:
        mine = load_context(session, [_claimed(acme.tenant_id, **named)])
        assert (mine.contacts, mine.campaigns, mine.templates) == ({}, {}, {})
        # The same ids under their own tenant are found: the look-up works, it is just scoped.
        theirs_found = load_context(session, [_claimed(globex.tenant_id, **named)])
    assert list(theirs_found.contacts) == [(globex.tenant_id, theirs)]
    assert list(theirs_found.campaigns) == [(globex.tenant_id, their_campaign)]
    assert list(theirs_found.templates) == [(globex.tenant_id, their_template)]
