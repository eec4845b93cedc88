"""Enums and frozen value objects shared by every layer: statuses, roles and their rules."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    """What an API key may do; each role includes the ones below it."""

    admin = "admin"  # everything, including keys and tenant settings (throttle)
    sender = "sender"  # contacts, lists, templates, campaigns, messages
    viewer = "viewer"  # read only

    def allows(self, needed: Role) -> bool:
        return _ROLE_RANK[self] >= _ROLE_RANK[needed]


_ROLE_RANK = {Role.viewer: 0, Role.sender: 1, Role.admin: 2}


class ContactStatus(enum.StrEnum):
    active = "active"
    #: Signed up through a public form, not confirmed yet: receives the confirmation mail (and
    #: other transactional mail without a category), never bulk mail.
    pending = "pending"
    unsubscribed = "unsubscribed"
    bounced = "bounced"
    complained = "complained"


class CampaignStatus(enum.StrEnum):
    draft = "draft"
    scheduled = "scheduled"
    preparing = "preparing"  # its messages are being written, in chunks; the first ones are sending
    running = "running"
    paused = "paused"
    completed = "completed"
    cancelled = "cancelled"
    failed = "failed"


#: Statuses a campaign never leaves: its progress stops changing (its opens and clicks do not).
FINAL_CAMPAIGN_STATUSES = frozenset(
    {CampaignStatus.completed, CampaignStatus.cancelled, CampaignStatus.failed}
)


class MessageStatus(enum.StrEnum):
    queued = "queued"
    paused = (
        "paused"  # its campaign is paused: not claimable until resumed (keeps the claim index lean)
    )
    sending = "sending"
    sent = "sent"
    failed = "failed"  # permanent failure, no retry
    dead = "dead"  # transient failures until its time to live ran out
    cancelled = "cancelled"
    suppressed = "suppressed"  # never sent: unsubscribed, bounced, suppressed or opted out


#: Statuses a message never leaves; everything else still counts as pending.
FINAL_MESSAGE_STATUSES = frozenset(
    {
        MessageStatus.sent,
        MessageStatus.failed,
        MessageStatus.dead,
        MessageStatus.cancelled,
        MessageStatus.suppressed,
    }
)
PENDING_MESSAGE_STATUSES = frozenset(
    {MessageStatus.queued, MessageStatus.paused, MessageStatus.sending}
)
#: Ended without being delivered: given up at once (failed) or after retrying until the TTL (dead).
FAILED_MESSAGE_STATUSES = frozenset({MessageStatus.failed, MessageStatus.dead})


class SuppressionReason(enum.StrEnum):
    unsubscribe = "unsubscribe"
    hard_bounce = "hard_bounce"
    complaint = "complaint"
    manual = "manual"


class FrequencyCapMode(enum.StrEnum):
    """What happens to a message over its category's frequency cap."""

    delay = "delay"  # it waits for the next free slot in the rolling day
    suppress = "suppress"  # it is not sent at all


class EventType(enum.StrEnum):
    queued = "queued"
    claimed = "claimed"
    sent = "sent"
    deferred = "deferred"  # transient failure, retried later
    throttled = "throttled"  # provider asked us to slow down; the attempt did not count
    failed = "failed"
    dead = "dead"
    cancelled = "cancelled"
    suppressed = "suppressed"
    lease_expired = "lease_expired"
    bounced = "bounced"
    complained = "complained"
    unsubscribed = "unsubscribed"
    #: Sent without a DKIM signature: the From domain is not a verified sender domain (a warning).
    unsigned = "unsigned"
    # Campaign-level happenings (``message_id`` null): a campaign's fan-out writes no event per message.
    campaign_scheduled = "campaign_scheduled"
    campaign_started = "campaign_started"
    campaign_paused = "campaign_paused"
    campaign_resumed = "campaign_resumed"
    campaign_cancelled = "campaign_cancelled"
    campaign_completed = "campaign_completed"
    campaign_failed = "campaign_failed"  # it ended with nothing sent and failures (status_reason)
    campaign_updated = "campaign_updated"  # a draft or scheduled campaign was changed (PATCH)
    campaign_deleted = "campaign_deleted"  # a draft was deleted; the event keeps its name
    campaign_retried = "campaign_retried"  # its failed and dead messages went back to the queue
    # A contact was erased (GDPR): ``contact_id`` names it, the detail never holds the address.
    contact_erased = "contact_erased"


#: Priority added to transactional messages so that they always outrank campaign traffic.
TRANSACTIONAL_PRIORITY_BOOST = 100
#: API-level priorities run from 0 (lowest) to 9; the default sits in the middle.
MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 9, 5
