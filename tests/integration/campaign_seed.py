"""Rows the campaign and message tests need, written straight through the ORM (not through the
contacts / lists / templates APIs, so that these tests only depend on the code they test)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from tidings.db.engine import transaction
from tidings.db.models import (
    Campaign,
    Contact,
    ContactList,
    ListMember,
    Message,
    Preference,
    Suppression,
    Template,
)
from tidings.runtime import Runtime


def template(
    runtime: Runtime,
    tenant_id: int,
    *,
    name: str = "welcome",
    subject: str = "Hello {{ first_name }}",
    html: str | None = "<p>{{ personal_message }}</p>",
    text: str | None = None,
    category: str | None = None,
) -> int:
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        row = Template(
            tenant_id=tenant_id,
            name=name,
            subject=subject,
            html=html,
            text=text,
            category=category,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
        return row.id


def contacts(
    runtime: Runtime, tenant_id: int, emails: Iterable[str], *, status: str = "active"
) -> list[int]:
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        rows = [
            Contact(
                tenant_id=tenant_id,
                email=email,
                first_name=email.split("@")[0].title(),
                attributes={},
                status=status,
                created_at=now,
                updated_at=now,
            )
            for email in emails
        ]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def people(runtime: Runtime, tenant_id: int, count: int, *, prefix: str = "p") -> list[int]:
    return contacts(runtime, tenant_id, [f"{prefix}{i}@example.com" for i in range(count)])


def contact_list(runtime: Runtime, tenant_id: int, name: str, members: Sequence[int]) -> int:
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        row = ContactList(tenant_id=tenant_id, name=name, created_at=now)
        session.add(row)
        session.flush()
        session.add_all(
            ListMember(list_id=row.id, contact_id=cid, tenant_id=tenant_id, added_at=now)
            for cid in members
        )
        return row.id


def suppress(runtime: Runtime, tenant_id: int, email: str, reason: str = "hard_bounce") -> None:
    with transaction(runtime.sessions) as session:
        session.add(
            Suppression(
                tenant_id=tenant_id, email=email, reason=reason, created_at=datetime.now(UTC)
            )
        )


def opt_out(runtime: Runtime, tenant_id: int, contact_id: int, category: str) -> None:
    with transaction(runtime.sessions) as session:
        session.add(
            Preference(
                tenant_id=tenant_id,
                contact_id=contact_id,
                category=category,
                subscribed=False,
                updated_at=datetime.now(UTC),
            )
        )


def messages_of(runtime: Runtime, campaign_id: int) -> list[Message]:
    """The campaign's messages in the order of their contacts (the order they were created in)."""
    with runtime.sessions() as session:
        return list(
            session.scalars(
                select(Message)
                .where(Message.campaign_id == campaign_id)
                .order_by(Message.contact_id, Message.id)
            )
        )


def statuses(runtime: Runtime, campaign_id: int) -> dict[int | None, str]:
    """contact id -> message status."""
    return {m.contact_id: m.status for m in messages_of(runtime, campaign_id)}


def set_status(runtime: Runtime, message_ids: Iterable[int], status: str, **values: Any) -> None:
    """Stand in for the worker: move messages to ``status`` directly."""
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Message).where(Message.id.in_(list(message_ids))).values(status=status, **values)
        )


def campaign_row(runtime: Runtime, campaign_id: int) -> Campaign:
    with runtime.sessions() as session:
        row = session.get(Campaign, campaign_id)
        assert row is not None
        return row
