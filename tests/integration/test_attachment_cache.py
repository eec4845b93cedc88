"""A worker reads and encodes a file once, not once per message: batch after batch of a campaign's
messages share one encoded copy, read from the database once; the cache is bounded, and it only
ever hands a message its own tenant's file."""

from __future__ import annotations

from base64 import b64decode, b64encode
from datetime import UTC, datetime, timedelta

from tests.conftest import TenantKeys
from tests.integration.campaign_seed import template
from tidings.db.engine import transaction
from tidings.db.models import Campaign
from tidings.delivery.compose import Composer, load_context
from tidings.delivery.features import AttachmentCache
from tidings.queue.claimed import ClaimedMessage
from tidings.rendering import RenderedContent
from tidings.runtime import Runtime
from tidings.services.message_features import AttachmentIn, FeaturesIn, store_features

FILE = bytes(range(256)) * 400  # 100 KB


def _campaign(runtime: Runtime, tenant_id: int, content: bytes = FILE) -> int:
    now = datetime.now(UTC)
    template_id = template(runtime, tenant_id, name=f"t{content[0]}-{len(content)}")
    with transaction(runtime.sessions) as session:
        features = store_features(
            session=session,
            tenant_id=tenant_id,
            given=FeaturesIn(
                attachments=[AttachmentIn("s.pdf", "application/pdf", b64encode(content).decode())]
            ),
            max_attachment_bytes=10_000_000,
            now=now,
        )
        campaign = Campaign(
            tenant_id=tenant_id,
            name=f"c{content[0]}-{len(content)}",
            template_id=template_id,
            list_ids=[],
            contact_ids=[],
            data={},
            status="running",
            created_at=now,
            features=features,
        )
        session.add(campaign)
        session.flush()
        return campaign.id


def _claimed(message_id: int, tenant_id: int, campaign_id: int, template_id: int) -> ClaimedMessage:
    return ClaimedMessage(
        id=message_id,
        tenant_id=tenant_id,
        campaign_id=campaign_id,
        contact_id=None,
        to_address=f"r{message_id}@example.com",
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


def test_batches_of_a_campaign_share_one_encoded_copy_read_once(
    runtime: Runtime, acme: TenantKeys
) -> None:
    campaign_id = _campaign(runtime, acme.tenant_id)
    with runtime.sessions() as session:
        template_id = session.get(Campaign, campaign_id).template_id  # type: ignore[union-attr]
    composer = Composer(settings=runtime.settings, secret_key=runtime.secret_key)
    outgoing = []
    for batch in range(3):
        messages = [
            _claimed(batch * 100 + i + 1, acme.tenant_id, campaign_id, template_id)
            for i in range(50)
        ]
        with runtime.sessions() as session:
            context = load_context(session, messages, composer.attachments)
        for m in messages:
            prepared = composer.prepare(m, context)
            outgoing.append(
                composer.finish(m, prepared, RenderedContent("s", None, "t"), datetime.now(UTC))
            )
    assert composer.attachments.loads == 1
    bodies = {id(o.attachments[0].mime_body) for o in outgoing}
    assert len(outgoing) == 150 and len(bodies) == 1
    assert b64decode(outgoing[0].attachments[0].content_base64) == FILE


def test_the_cache_is_bounded_and_keeps_the_recently_used(
    runtime: Runtime, acme: TenantKeys
) -> None:
    ids = [_campaign(runtime, acme.tenant_id, bytes([n]) * 30_000) for n in range(3)]
    keys = []
    with runtime.sessions() as session:
        for campaign_id in ids:
            features = session.get(Campaign, campaign_id).features  # type: ignore[union-attr]
            keys.append((acme.tenant_id, features["attachments"][0]["id"]))
    cache = AttachmentCache(max_bytes=90_000)  # two encoded files (40,5xx bytes each), not three
    with runtime.sessions() as session:
        for key in keys:
            cache.load(session, {key})
        assert cache.loads == 3
        cache.load(session, {keys[2]})  # the newest is still there
        assert cache.loads == 3
        cache.load(session, {keys[0]})  # the oldest was dropped
        assert cache.loads == 4


def test_the_cache_never_hands_out_another_tenants_file(
    runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    campaign_id = _campaign(runtime, globex.tenant_id)
    with runtime.sessions() as session:
        features = session.get(Campaign, campaign_id).features  # type: ignore[union-attr]
    their_file = features["attachments"][0]["id"]
    cache = AttachmentCache()
    with runtime.sessions() as session:
        assert cache.load(session, {(acme.tenant_id, their_file)}) == {}
        assert cache.load(session, {(globex.tenant_id, their_file)}) != {}
        assert (
            cache.load(session, {(acme.tenant_id, their_file)}) == {}
        )  # not from the cache either
