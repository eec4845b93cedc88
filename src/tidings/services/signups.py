"""Public sign-up to a list (``/s/{public_id}``) and its double opt-in.

What a sign-up does depends on who the address belongs to, but the answer never does (the route
shows one page, so the form cannot tell whether an address is known):

* **Bounced, complained, or suppressed for a bounce, a complaint or by hand**: nothing. Those
  addresses must not be mailed at all, not even a confirmation.
* **Needs confirming**: the list has ``double_opt_in``, *or* the person unsubscribed (contact
  ``unsubscribed``, or the address suppressed with reason ``unsubscribe``). A contact that does
  not exist yet is created ``pending``; an existing one keeps its status, so a stranger's sign-up
  can never stop, start or change anyone's mail. A ``signups`` row keeps the list, the name and
  the categories chosen, and a confirmation message is queued (transactional, no category: it
  reaches a pending or unsubscribed contact, never a bounced one). Its ``confirm_url`` is minted
  by the worker while it renders (``tokens.py``): no API key can read a working link from the
  stored message, so re-subscribing someone stays their own act.
* **Otherwise** (single opt-in): the contact is created ``active`` (a ``pending`` one becomes
  ``active``) and added to the list at once. A new contact gets the categories chosen; an existing
  contact's category choices are left alone, since the form proves nothing about who sent it.

Confirming (``POST /s/confirm/{token}``) adds the contact to the list, makes it ``active`` (from
``pending`` or ``unsubscribed``: the one place a sign-up lifts an unsubscribe, together with the
``unsubscribe`` suppression; never a bounce or a complaint), and stores the categories chosen.
A sign-up not confirmed within ``PENDING_TTL`` (7 days) is purged by the workers' maintenance
(``queue/maintenance.purge_unconfirmed_signups``), and with it a contact still ``pending``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tidings.db.models import Category, Contact, ContactList, Signup, Suppression, Tenant
from tidings.domain import TRANSACTIONAL_PRIORITY_BOOST, ContactStatus, SuppressionReason
from tidings.errors import InvalidToken, NotFound
from tidings.queue.enqueue import NewMessage, enqueue_message
from tidings.queue.maintenance import SIGNUP_PENDING_TTL as PENDING_TTL
from tidings.services import categories, lists, preferences, suppressions
from tidings.services.contacts import clean_email, clean_text
from tidings.tokens import TokenClaims, contact_stamp

MAX_PUBLIC_ID_CHARS = 32  # the column; longer paths are not looked up
MAX_CATEGORIES_CHOSEN = 100  # names read from one form
#: Contact statuses and suppression reasons that a sign-up leaves alone entirely.
UNREACHABLE = frozenset({ContactStatus.bounced.value, ContactStatus.complained.value})
BLOCKING_SUPPRESSIONS = frozenset(
    {
        SuppressionReason.hard_bounce.value,
        SuppressionReason.complaint.value,
        SuppressionReason.manual.value,
    }
)

CONFIRM_SUBJECT = "Please confirm your subscription to {{ list_name }}"
CONFIRM_TEXT = """Hello,

someone, hopefully you, asked to receive {{ list_name }} from {{ sender }} at this address.

To confirm, open this link and press the button:
{{ confirm_url }}

If this was not you, ignore this message: nothing will be sent to you. The link expires in 7 days.
"""
CONFIRM_HTML = """<p>Hello,</p>
<p>someone, hopefully you, asked to receive <strong>{{ list_name }}</strong> from {{ sender }}
at this address.</p>
<p><a href="{{ confirm_url }}">Confirm your subscription</a></p>
<p>If this was not you, ignore this message: nothing will be sent to you.
The link expires in 7 days.</p>
"""


def public_list(*, session: Session, public_id: str) -> ContactList:
    """The public list behind ``public_id``; NotFound for an unknown or non-public one alike."""
    if not public_id or len(public_id) > MAX_PUBLIC_ID_CHARS:
        raise NotFound("no such sign-up form")
    found = session.scalar(
        select(ContactList).where(ContactList.public_id == public_id, ContactList.public)
    )
    if found is None:
        raise NotFound("no such sign-up form")
    return found


@dataclass(frozen=True, slots=True)
class SignupForm:
    tenant_name: str
    list_name: str
    description: str | None
    categories: list[tuple[str, str | None]]  # (name, description), as the form offers them


def signup_form(*, session: Session, contact_list: ContactList) -> SignupForm:
    tenant = session.get(Tenant, contact_list.tenant_id)
    assert tenant is not None
    shown = categories.all_categories(session=session, tenant_id=contact_list.tenant_id)
    return SignupForm(
        tenant_name=tenant.name,
        list_name=contact_list.name,
        description=contact_list.description,
        categories=[(c.name, c.description) for c in shown],
    )


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _known_categories(session: Session, tenant_id: int, chosen: Collection[str]) -> list[str]:
    """The chosen names that are the tenant's categories (the form offers no others)."""
    wanted = sorted({c for c in chosen if isinstance(c, str)})[:MAX_CATEGORIES_CHOSEN]
    if not wanted:
        return []
    return sorted(
        session.scalars(
            select(Category.name).where(Category.tenant_id == tenant_id, Category.name.in_(wanted))
        )
    )


def _contact(
    session: Session, tenant_id: int, email: str, name: str | None, status: str, now: datetime
) -> tuple[Contact, bool]:
    """The tenant's contact with ``email``, created with ``status`` when there is none: (contact,
    created). A concurrent sign-up of the same address finds the row the other one wrote."""
    created = session.execute(
        _insert(session)(Contact)
        .values(
            tenant_id=tenant_id,
            email=email,
            name=name,
            attributes={},
            status=status,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["tenant_id", "email"])
        .returning(Contact.id)
    ).scalar_one_or_none()
    contact = session.scalar(
        select(Contact).where(Contact.tenant_id == tenant_id, Contact.email == email)
    )
    assert contact is not None
    return contact, created is not None


def sign_up(
    *,
    session: Session,
    contact_list: ContactList,
    email: object,
    name: object,
    chosen: Collection[str],
    now: datetime,
    address_key: bytes,
) -> None:
    """Record one sign-up to a public list (see the module docstring); InvalidInput for an
    address that is not one, and nothing else the caller could tell apart."""
    address = clean_email(email)
    clean_name = clean_text(name, field="name") if name else None
    tenant_id = contact_list.tenant_id
    # An erased person's address is listed only as its hash: back in plain form, what it says
    # (a complaint blocks, an unsubscribe asks for a confirmed opt-in) applies as to anyone.
    suppressions.restore_erased(
        session=session, tenant_id=tenant_id, addresses=[address], address_key=address_key
    )
    listed = session.scalar(
        select(Suppression.reason).where(
            Suppression.tenant_id == tenant_id, Suppression.email == address
        )
    )
    existing = session.scalar(
        select(Contact.status).where(Contact.tenant_id == tenant_id, Contact.email == address)
    )
    if existing in UNREACHABLE or listed in BLOCKING_SUPPRESSIONS:
        return
    confirm = (
        contact_list.double_opt_in
        or existing == ContactStatus.unsubscribed.value
        or listed == SuppressionReason.unsubscribe.value
    )
    status = ContactStatus.pending if confirm else ContactStatus.active
    contact, created = _contact(session, tenant_id, address, clean_name, status.value, now)
    wanted = _known_categories(session, tenant_id, chosen)
    if confirm:
        _await_confirmation(session, contact_list, contact, clean_name, wanted, now)
        return
    if contact.status == ContactStatus.pending.value:
        contact.status = ContactStatus.active.value
        contact.updated_at = now
    lists.add_contact_to_lists(
        session=session,
        tenant_id=tenant_id,
        contact_id=contact.id,
        list_ids=[contact_list.id],
        now=now,
    )
    if created:
        _choose(session, tenant_id, contact.id, wanted, now)


def _choose(
    session: Session, tenant_id: int, contact_id: int, wanted: Collection[str], now: datetime
) -> None:
    """Every offered category on when chosen, off when not."""
    offered = [c.name for c in categories.all_categories(session=session, tenant_id=tenant_id)]
    preferences.record_choices(
        session, tenant_id, contact_id, {n: n in wanted for n in offered}, now
    )


def _await_confirmation(
    session: Session,
    contact_list: ContactList,
    contact: Contact,
    name: str | None,
    wanted: list[str],
    now: datetime,
) -> None:
    """Queue the confirmation message and (re)write the list's sign-up row for this contact."""
    tenant = session.get(Tenant, contact_list.tenant_id)
    assert tenant is not None
    enqueued = enqueue_message(
        session=session,
        new=NewMessage(
            tenant_id=contact_list.tenant_id,
            to_address=contact.email,
            contact_id=contact.id,
            template_id=None,
            subject=CONFIRM_SUBJECT,
            html=CONFIRM_HTML,
            text=CONFIRM_TEXT,
            data={"list_name": contact_list.name, "sender": tenant.name},
            from_address=None,
            category=None,  # transactional: it must reach a pending or unsubscribed contact
            priority=5 + TRANSACTIONAL_PRIORITY_BOOST,
            not_before=now,
            expires_at=now + PENDING_TTL,
            idempotency_key=None,
            reference=None,
        ),
        now=now,
    )
    values = {
        "message_id": enqueued.message.id,
        "name": name,
        "categories": wanted,
        "created_at": now,
        "confirmed_at": None,
    }
    statement = _insert(session)(Signup).values(
        list_id=contact_list.id, contact_id=contact.id, tenant_id=contact_list.tenant_id, **values
    )
    session.execute(
        statement.on_conflict_do_update(index_elements=["list_id", "contact_id"], set_=values)
    )
    if contact.status == ContactStatus.pending.value:
        contact.updated_at = now  # a pending contact lives PENDING_TTL from its last sign-up


@dataclass(frozen=True, slots=True)
class Confirmation:
    """A sign-up a confirmation link names, still waiting or already confirmed."""

    signup: Signup
    list_name: str
    tenant_name: str
    email: str


def confirmation(*, session: Session, claims: TokenClaims, now: datetime) -> Confirmation:
    """The sign-up a valid ``confirm`` token speaks for; InvalidToken when there is none (another
    message's link, a sign-up replaced by a newer one, purged, or of a contact since deleted)."""
    if claims.kind != "confirm" or claims.message_id is None:
        raise InvalidToken()
    found = session.execute(
        select(Signup, Contact, ContactList, Tenant)
        .join(Contact, Contact.id == Signup.contact_id)
        .join(ContactList, ContactList.id == Signup.list_id)
        .join(Tenant, Tenant.id == Signup.tenant_id)
        .where(Signup.tenant_id == claims.tenant_id, Signup.message_id == claims.message_id)
    ).first()
    if found is None:
        raise InvalidToken()
    signup, contact, contact_list, tenant = found
    if (
        contact.tenant_id != claims.tenant_id
        or contact_list.tenant_id != claims.tenant_id
        or claims.contact_created != contact_stamp(contact.created_at)
        or signup.created_at + PENDING_TTL < now
    ):
        raise InvalidToken()
    return Confirmation(signup, contact_list.name, tenant.name, contact.email)


def confirm(*, session: Session, found: Confirmation, now: datetime) -> bool:
    """Confirm the sign-up (see the module docstring); False when it already was."""
    signup = found.signup
    if signup.confirmed_at is not None:
        return False
    tenant_id = signup.tenant_id
    contact = session.get(Contact, signup.contact_id)
    assert contact is not None
    if contact.status in (ContactStatus.pending.value, ContactStatus.unsubscribed.value):
        contact.status = ContactStatus.active.value
    if signup.name and not contact.name:
        contact.name = signup.name
    contact.updated_at = now
    session.execute(
        delete(Suppression).where(
            Suppression.tenant_id == tenant_id,
            Suppression.email == contact.email,
            Suppression.reason == SuppressionReason.unsubscribe.value,
        )
    )
    lists.add_contact_to_lists(
        session=session,
        tenant_id=tenant_id,
        contact_id=contact.id,
        list_ids=[signup.list_id],
        now=now,
    )
    _choose(session, tenant_id, contact.id, signup.categories, now)
    signup.confirmed_at = now
    session.flush()
    return True
