"""What a recipient decides through the links in a mail: unsubscribe (RFC 8058 one-click, or the
confirmation page) and the preference centre (categories on or off, everything off, back on).

Every change is written in the caller's transaction before it answers, and is honoured at send
time by ``queue/compliance.py``, so mail already queued obeys it too. What each decision writes:

* **Unsubscribe from everything** (a token without a category, or "unsubscribe from everything"
  on the preference page): the contact becomes ``unsubscribed`` (a ``bounced`` or ``complained``
  contact keeps that stronger status) *and* the address joins the suppression list with reason
  ``unsubscribe``. The address entry is what protects the person if the contact row is deleted
  and imported again, or when mail goes to the bare address; the contact status is what the
  tenant sees. An address already listed keeps its reason (a complaint is not "downgraded").
* **Unsubscribe from one category** (a token naming the mail's category): that category's
  preference becomes ``subscribed = false``; other categories and transactional mail go on, which
  is what RFC 8058 asks (the list the header belongs to, not everything the sender ever sends).
  An ad-hoc recipient without a contact row has nowhere to keep a per-category choice, so the
  address is suppressed as a whole: erring towards the recipient's wish.
* **Preference centre**: one row per shown category with the ticked state.
* **Subscribe again** (preference page only): an ``unsubscribed`` contact becomes active and an
  ``unsubscribe`` entry leaves the suppression list. Bounces and complaints are never undone here.

Each effective unsubscribe records one ``unsubscribed`` event (``message_id`` null); a repeated
request changes nothing and records nothing, so one-click is idempotent.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tidings.db.models import Contact, Event, Message, Preference, Suppression, Tenant
from tidings.domain import ContactStatus, EventType, SuppressionReason
from tidings.errors import InvalidInput, InvalidToken, NotFound
from tidings.queue.suppress import suppress
from tidings.services import categories
from tidings.tokens import CLOCK_SKEW, V1_SEND_WINDOW, TokenClaims, contact_stamp
from tidings.tracking.record import count_unsubscribe

#: Contact statuses the recipient may turn back to active through the preference page.
RESUBSCRIBABLE = frozenset({ContactStatus.active.value, ContactStatus.unsubscribed.value})


@dataclass(frozen=True, slots=True)
class Subscriber:
    """The person a valid link speaks for: the recipient of one sent message, within its tenant."""

    tenant_id: int
    tenant_name: str
    email: str
    contact_id: int | None  # None: an ad-hoc address without a contact row
    category: str | None  # the category the link was made for, if any
    message_id: int  # the sent message the link came in: further links name it too
    contact_created: int | None  # the contact's ``tokens.contact_stamp``, when the link named one


@dataclass(frozen=True, slots=True)
class CategoryChoice:
    name: str
    description: str | None
    subscribed: bool


@dataclass(frozen=True, slots=True)
class PreferencesView:
    subscriber: Subscriber
    categories: Sequence[CategoryChoice]
    #: No bulk mail at all: the contact is not active, or the address is suppressed.
    receives_nothing: bool
    #: Whether "subscribe again" is offered (never after a bounce or a complaint).
    can_resubscribe: bool


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def resolve(*, session: Session, claims: TokenClaims) -> Subscriber:
    """Whom the link speaks for; ``InvalidToken`` unless it came in a message of its tenant that
    was sent, to a recipient who is still the one it was sent to (``tokens.py`` says why).

    Everything is looked up *within the token's tenant*: a token naming another tenant's message
    or contact finds nothing and is refused exactly like a forged one.
    """
    tenant_name = session.scalar(select(Tenant.name).where(Tenant.id == claims.tenant_id))
    if tenant_name is None:
        raise InvalidToken()
    if claims.message_id is None:
        message_id, contact_id, email = _legacy_message(session, claims)
    else:
        row = session.execute(
            select(Message.contact_id, Message.to_address).where(
                Message.tenant_id == claims.tenant_id,
                Message.id == claims.message_id,
                Message.sent_at.is_not(None),
            )
        ).first()
        if row is None:
            raise InvalidToken()
        message_id, contact_id, email = claims.message_id, row.contact_id, row.to_address
    contact_created = claims.contact_created
    if claims.contact_id is not None or contact_created is not None:
        # The link was for a contact: that very contact, not one created later under its id.
        contact = session.execute(
            select(Contact.email, Contact.created_at).where(
                Contact.tenant_id == claims.tenant_id, Contact.id == contact_id
            )
        ).first()
        if contact is None:
            raise InvalidToken()
        stamp = contact_stamp(contact.created_at)
        if claims.message_id is not None and stamp != contact_created:
            raise InvalidToken()
        email, contact_created = contact.email, stamp
    else:
        # An ad-hoc address may have become a contact since the mail was sent.
        contact_id = session.scalar(
            select(Contact.id).where(Contact.tenant_id == claims.tenant_id, Contact.email == email)
        )
    return Subscriber(
        tenant_id=claims.tenant_id,
        tenant_name=tenant_name,
        email=email,
        contact_id=contact_id,
        category=claims.category,
        message_id=message_id,
        contact_created=contact_created,
    )


def _legacy_message(session: Session, claims: TokenClaims) -> tuple[int, int | None, str]:
    """The sent message a version 1 token came in: (id, contact id, address), else
    ``InvalidToken``.

    Version 1 named a contact or an address, and previews made such tokens too. One counts only
    if a message to that recipient was sent within ``V1_SEND_WINDOW`` of its issue time (the
    worker renders, then sends) by a contact that already existed then (a contact created later
    under a reused id is not the one it was sent to).
    """
    issued = claims.issued_at
    recipient = (
        Message.contact_id == claims.contact_id
        if claims.contact_id is not None
        else Message.to_address == claims.email
    )
    query = (
        select(Message.id, Message.contact_id, Message.to_address)
        .where(
            Message.tenant_id == claims.tenant_id,
            recipient,
            Message.sent_at >= issued - CLOCK_SKEW,
            Message.sent_at <= issued + V1_SEND_WINDOW,
        )
        .order_by(Message.id)
        .limit(1)
    )
    if claims.contact_id is not None:
        query = query.join(
            Contact,
            (Contact.tenant_id == Message.tenant_id)
            & (Contact.id == Message.contact_id)
            & (Contact.created_at < issued + timedelta(seconds=1)),
        )
    row = session.execute(query).first()
    if row is None:
        raise InvalidToken()
    return row.id, row.contact_id, row.to_address


def unsubscribe(
    *,
    session: Session,
    subscriber: Subscriber,
    category: str | None,
    source: str,
    now: datetime,
) -> bool:
    """Unsubscribe from ``category``, or from everything when it is None; whether anything changed.

    ``source`` says where the request came from, for the event ("one-click", "preference centre").
    """
    if category is not None and subscriber.contact_id is not None:
        changed = bool(
            _set_choices(
                session, subscriber.tenant_id, subscriber.contact_id, {category: False}, now
            )
        )
        scope = f"category {category}"
    else:
        changed = _unsubscribe_all(session, subscriber, now)
        scope = "all mail"
    if changed:
        _record_unsubscribe(session, subscriber, f"{subscriber.email} from {scope} ({source})", now)
    return changed


def preferences_view(*, session: Session, subscriber: Subscriber) -> PreferencesView:
    """What the preference page shows: the tenant's categories with the contact's choices."""
    shown = categories.all_categories(session=session, tenant_id=subscriber.tenant_id)
    opted_out: set[str] = set()
    status = ContactStatus.active.value
    if subscriber.contact_id is not None:
        opted_out = set(
            session.scalars(
                select(Preference.category).where(
                    Preference.tenant_id == subscriber.tenant_id,
                    Preference.contact_id == subscriber.contact_id,
                    Preference.subscribed.is_(False),
                )
            )
        )
        status = (
            session.scalar(
                select(Contact.status).where(
                    Contact.tenant_id == subscriber.tenant_id,
                    Contact.id == subscriber.contact_id,
                )
            )
            or ContactStatus.active.value
        )
    listed = session.scalar(
        select(Suppression.reason).where(
            Suppression.tenant_id == subscriber.tenant_id, Suppression.email == subscriber.email
        )
    )
    receives_nothing = status != ContactStatus.active.value or listed is not None
    return PreferencesView(
        subscriber=subscriber,
        categories=[
            CategoryChoice(
                name=c.name, description=c.description, subscribed=c.name not in opted_out
            )
            for c in shown
        ],
        receives_nothing=receives_nothing,
        can_resubscribe=receives_nothing
        and status in RESUBSCRIBABLE
        and listed in (None, SuppressionReason.unsubscribe.value),
    )


def save_preferences(
    *, session: Session, subscriber: Subscriber, subscribed: Collection[str], now: datetime
) -> list[str]:
    """Every shown category on when ticked, off when not; the categories newly turned off.

    Names that are not among the tenant's categories are ignored: the form only offers those.
    """
    if subscriber.contact_id is None:
        return []
    shown = [
        c.name for c in categories.all_categories(session=session, tenant_id=subscriber.tenant_id)
    ]
    wanted = set(subscribed)
    turned_off = _set_choices(
        session, subscriber.tenant_id, subscriber.contact_id, {n: n in wanted for n in shown}, now
    )
    if turned_off:
        _record_unsubscribe(
            session,
            subscriber,
            f"{subscriber.email} from category {', '.join(turned_off)} (preference centre)",
            now,
        )
    return turned_off


def resubscribe(*, session: Session, subscriber: Subscriber, now: datetime) -> bool:
    """Undo an unsubscribe (never a bounce or a complaint); whether anything changed."""
    changed = False
    if subscriber.contact_id is not None:
        result = session.execute(
            update(Contact)
            .where(
                Contact.tenant_id == subscriber.tenant_id,
                Contact.id == subscriber.contact_id,
                Contact.status == ContactStatus.unsubscribed.value,
            )
            .values(status=ContactStatus.active.value, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        changed = bool(result.rowcount)  # type: ignore[attr-defined]
    removed = session.execute(
        delete(Suppression).where(
            Suppression.tenant_id == subscriber.tenant_id,
            Suppression.email == subscriber.email,
            Suppression.reason == SuppressionReason.unsubscribe.value,
        )
    )
    return changed or bool(removed.rowcount)  # type: ignore[attr-defined]


def contact_choices(*, session: Session, tenant_id: int, contact_id: int) -> dict[str, bool]:
    """Each of the tenant's categories, and any other the contact has a stored choice for, with
    whether the contact receives it (no stored choice: subscribed)."""
    _tenant_contact(session, tenant_id, contact_id)
    choices = {
        c.name: True for c in categories.all_categories(session=session, tenant_id=tenant_id)
    }
    stored = session.execute(
        select(Preference.category, Preference.subscribed).where(
            Preference.tenant_id == tenant_id, Preference.contact_id == contact_id
        )
    )
    for category, subscribed in stored:
        choices[category] = subscribed
    return dict(sorted(choices.items()))


def set_contact_choices(
    *,
    session: Session,
    tenant_id: int,
    contact_id: int,
    choices: Mapping[str, bool],
    now: datetime,
) -> dict[str, bool]:
    """Set the named categories on or off for a contact, as the tenant (an import from another
    system, a support request); the others keep their choice. Each category turned off is
    recorded as the preference centre records it. Answers ``contact_choices``."""
    contact = _tenant_contact(session, tenant_id, contact_id)
    known = {c.name for c in categories.all_categories(session=session, tenant_id=tenant_id)}
    for name in choices:
        if name not in known:
            raise InvalidInput(
                f"no category named {name!r}: create it first (POST /v1/categories)",
                field=f"categories.{name}",
            )
    turned_off = _set_choices(session, tenant_id, contact_id, choices, now)
    if turned_off:
        _record_unsubscribe(
            session,
            contact,
            f"{contact.email} from category {', '.join(turned_off)} (set by the tenant)",
            now,
        )
    return contact_choices(session=session, tenant_id=tenant_id, contact_id=contact_id)


def record_choices(
    session: Session, tenant_id: int, contact_id: int, choices: Mapping[str, bool], now: datetime
) -> list[str]:
    """Store a contact's own choices (a confirmed sign-up's categories); those turned off."""
    return _set_choices(session, tenant_id, contact_id, choices, now)


def _tenant_contact(session: Session, tenant_id: int, contact_id: int) -> Contact:
    contact = session.scalar(
        select(Contact).where(Contact.tenant_id == tenant_id, Contact.id == contact_id)
    )
    if contact is None:
        raise NotFound("no such contact")
    return contact


# -- writing ----------------------------------------------------------------------------------


def _unsubscribe_all(session: Session, subscriber: Subscriber, now: datetime) -> bool:
    added, changed = suppress(
        session,
        tenant_id=subscriber.tenant_id,
        entries={subscriber.email: "the recipient unsubscribed"},
        reason=SuppressionReason.unsubscribe,
        now=now,
        contact_ids=[subscriber.contact_id] if subscriber.contact_id is not None else [],
    )
    return added > 0 or changed > 0


def _set_choices(
    session: Session,
    tenant_id: int,
    contact_id: int | None,
    choices: Mapping[str, bool],
    now: datetime,
) -> list[str]:
    """Store each category's choice in one statement; the categories this call turned off.

    ``ON CONFLICT DO UPDATE … WHERE`` only touches rows whose value differs, and ``RETURNING``
    names the rows written: those now ``false`` were turned off by this very statement (a new row
    or a changed one), so two identical requests at once record one change, not two.
    """
    if not choices or contact_id is None:
        return []
    statement = _insert(session)(Preference).values(
        [
            {
                "contact_id": contact_id,
                "category": name,
                "tenant_id": tenant_id,
                "subscribed": on,
                "updated_at": now,
            }
            for name, on in choices.items()
        ]
    )
    written = session.execute(
        statement.on_conflict_do_update(
            index_elements=["contact_id", "category"],
            set_={"subscribed": statement.excluded.subscribed, "updated_at": now},
            where=Preference.subscribed != statement.excluded.subscribed,
        ).returning(Preference.category, Preference.subscribed)
    ).all()
    return sorted(category for category, on in written if not on)


def _record_unsubscribe(
    session: Session, subscriber: Subscriber | Contact, detail: str, now: datetime
) -> None:
    """The event, and one more unsubscribe in the statistics of the campaign whose mail carried
    the link (none for a transactional message's)."""
    campaign_id = (
        session.scalar(
            select(Message.campaign_id).where(
                Message.tenant_id == subscriber.tenant_id, Message.id == subscriber.message_id
            )
        )
        if isinstance(subscriber, Subscriber)
        else None  # through the API (a Contact): no mail carried it
    )
    if campaign_id is not None:
        count_unsubscribe(session, tenant_id=subscriber.tenant_id, campaign_id=campaign_id, now=now)
    session.add(
        Event(
            tenant_id=subscriber.tenant_id,
            message_id=None,
            campaign_id=campaign_id,
            contact_id=subscriber.contact_id
            if isinstance(subscriber, Subscriber)
            else subscriber.id,
            type=EventType.unsubscribed.value,
            detail=detail,
            created_at=now,
        )
    )
