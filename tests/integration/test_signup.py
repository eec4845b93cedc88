"""Public sign-up (``/s/{public_id}``) and double opt-in (``/s/confirm/{token}``) through HTTP."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import TEST_SECRET, TenantKeys
from tests.integration.test_public_pages import add_categories
from tidings import tokens
from tidings.api.routes import signup as signup_routes
from tidings.db.engine import transaction
from tidings.db.models import Contact, ListMember, Message, Preference, Signup, Suppression
from tidings.domain import SuppressionReason
from tidings.queue.maintenance import purge_unconfirmed_signups
from tidings.queue.suppress import suppress
from tidings.runtime import Runtime


@pytest.fixture(autouse=True)
def quick_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signup_routes, "ANSWER_SECONDS", 0.02)


def make_list(client: TestClient, tenant: TenantKeys, **fields: Any) -> dict[str, Any]:
    body = {"name": "news", "public": True, "double_opt_in": True, **fields}
    answer = client.post("/v1/lists", json=body, headers=tenant.auth(tenant.admin))
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def contact_row(runtime: Runtime, tenant_id: int, email: str) -> Contact | None:
    with runtime.sessions() as session:
        return session.scalar(
            select(Contact).where(Contact.tenant_id == tenant_id, Contact.email == email)
        )


def add_contact(client: TestClient, tenant: TenantKeys, email: str, status: str = "active") -> int:
    answer = client.post(
        "/v1/contacts", json={"email": email, "status": status}, headers=tenant.auth(tenant.admin)
    )
    assert answer.status_code in (200, 201), answer.text
    contact_id: int = answer.json()["id"]
    return contact_id


def confirm_token(
    runtime: Runtime,
    tenant_id: int,
    email: str,
    *,
    secret: str = TEST_SECRET,
    now: datetime | None = None,
) -> str:
    """The token the worker puts into the confirmation mail to ``email``."""
    with runtime.sessions() as session:
        contact, signup = session.execute(
            select(Contact, Signup)
            .join(Signup, Signup.contact_id == Contact.id)
            .where(Contact.tenant_id == tenant_id, Contact.email == email)
        ).one()
        assert signup.message_id is not None
        return tokens.make_token(
            secret,
            kind="confirm",
            tenant_id=tenant_id,
            message_id=signup.message_id,
            contact_created=tokens.contact_stamp(contact.created_at),
            category=None,
            now=now or datetime.now(UTC),
        )


def snapshot(runtime: Runtime, tenant_id: int) -> dict[str, object]:
    """Everything a sign-up or a confirmation could change."""
    with runtime.sessions() as session:
        return {
            "contacts": sorted(
                session.execute(
                    select(Contact.email, Contact.status, Contact.name).where(
                        Contact.tenant_id == tenant_id
                    )
                ).all()
            ),
            "members": sorted(
                session.execute(
                    select(ListMember.list_id, ListMember.contact_id).where(
                        ListMember.tenant_id == tenant_id
                    )
                ).all()
            ),
            "suppressions": sorted(
                session.execute(
                    select(Suppression.email, Suppression.reason).where(
                        Suppression.tenant_id == tenant_id
                    )
                ).all()
            ),
            "preferences": sorted(
                session.execute(
                    select(Preference.contact_id, Preference.category, Preference.subscribed).where(
                        Preference.tenant_id == tenant_id
                    )
                ).all()
            ),
            "signups": sorted(
                session.execute(
                    select(Signup.contact_id, Signup.confirmed_at).where(
                        Signup.tenant_id == tenant_id
                    )
                ).all()
            ),
            "messages": session.scalar(
                select(func.count()).select_from(Message).where(Message.tenant_id == tenant_id)
            ),
        }


def without_nonces(html: str) -> str:
    return re.sub(r"nonce(-|=\")[^\"';]*", "", html)


def nonce_of(html: str) -> str:
    found = re.search(r'name="form_nonce" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


# -- lists API -------------------------------------------------------------------------------


def test_lists_carry_public_double_opt_in_and_an_unguessable_public_id(
    client: TestClient, acme: TenantKeys
) -> None:
    auth = acme.auth(acme.admin)
    plain = client.post("/v1/lists", json={"name": "plain"}, headers=auth).json()
    assert plain["public"] is False and plain["double_opt_in"] is False
    assert plain["signup_url"] is None
    public_id = plain["public_id"]
    assert len(public_id) >= 22 and str(plain["id"]) != public_id
    patched = client.patch(
        f"/v1/lists/{plain['id']}", json={"public": True, "double_opt_in": True}, headers=auth
    ).json()
    assert patched["public"] is True and patched["double_opt_in"] is True
    assert patched["public_id"] == public_id
    assert patched["signup_url"].endswith(f"/s/{public_id}")
    listed = client.get("/v1/lists", headers=auth).json()["items"]
    assert listed[0]["public"] is True
    bad = client.patch(f"/v1/lists/{plain['id']}", json={"public": "yes"}, headers=auth)
    assert bad.status_code == 422


# -- the form ----------------------------------------------------------------------------------


def test_the_form_shows_email_name_categories_and_a_hidden_honeypot(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    add_categories(runtime, acme.tenant_id, "offers", "updates")
    created = make_list(client, acme)
    page = client.get(f"/s/{created['public_id']}")
    assert page.status_code == 200
    assert 'name="email"' in page.text and 'name="name"' in page.text
    assert 'value="offers"' in page.text and 'value="updates"' in page.text
    assert 'name="website"' in page.text and 'class="away" aria-hidden="true"' in page.text
    assert "<script" not in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_unknown_and_non_public_forms_answer_the_same_404(
    client: TestClient, acme: TenantKeys
) -> None:
    hidden = make_list(client, acme, public=False)
    unknown = client.get("/s/AAAAAAAAAAAAAAAAAAAAAA")
    private = client.get(f"/s/{hidden['public_id']}")
    by_id = client.get(f"/s/{hidden['id']}")
    assert unknown.status_code == private.status_code == by_id.status_code == 404
    assert (
        without_nonces(unknown.text) == without_nonces(private.text) == without_nonces(by_id.text)
    )
    posted = client.post(f"/s/{hidden['public_id']}", data={"email": "ann@example.com"})
    assert posted.status_code == 404


# -- the whole double opt-in -------------------------------------------------------------------


def test_sign_up_queues_a_confirmation_and_only_the_post_confirms(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    add_categories(runtime, acme.tenant_id, "offers", "updates")
    created = make_list(client, acme)
    answer = client.post(
        f"/s/{created['public_id']}",
        data={"email": "Ann@Example.com", "name": "Ann", "categories": ["updates"]},
    )
    assert answer.status_code == 200
    assert "Please check your inbox" in answer.text
    ann = contact_row(runtime, acme.tenant_id, "Ann@example.com")
    assert ann is not None and ann.status == "pending"
    with runtime.sessions() as session:
        [message] = session.scalars(select(Message).where(Message.contact_id == ann.id)).all()
        assert message.status == "queued" and message.category is None
        assert "{{ confirm_url }}" in (message.text or "")
    assert snapshot(runtime, acme.tenant_id)["members"] == []

    token = confirm_token(runtime, acme.tenant_id, "Ann@example.com")
    before = snapshot(runtime, acme.tenant_id)
    shown = client.get(f"/s/confirm/{token}")
    assert shown.status_code == 200
    assert "<button" in shown.text and "A…@example.com" in shown.text
    assert snapshot(runtime, acme.tenant_id) == before

    done = client.post(f"/s/confirm/{token}", data={"form_nonce": nonce_of(shown.text)})
    assert done.status_code == 200 and "You are subscribed" in done.text
    after = snapshot(runtime, acme.tenant_id)
    assert after["contacts"] == [("Ann@example.com", "active", "Ann")]
    assert after["members"] == [(created["id"], ann.id)]
    assert after["preferences"] == [(ann.id, "offers", False), (ann.id, "updates", True)]
    again = client.post(f"/s/confirm/{token}", data={"form_nonce": nonce_of(shown.text)})
    assert again.status_code == 200
    assert snapshot(runtime, acme.tenant_id)["members"] == after["members"]


def test_a_json_sign_up_is_accepted_like_a_form(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    created = make_list(client, acme)
    answer = client.post(f"/s/{created['public_id']}", json={"email": "bob@example.com"})
    assert answer.status_code == 202
    assert answer.json() == {"status": "accepted", "double_opt_in": True}
    bob = contact_row(runtime, acme.tenant_id, "bob@example.com")
    assert bob is not None and bob.status == "pending"
    bad = client.post(f"/s/{created['public_id']}", json={"email": "not an address"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "email"


def test_without_double_opt_in_a_new_contact_is_active_on_the_list_at_once(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    created = make_list(client, acme, double_opt_in=False)
    answer = client.post(f"/s/{created['public_id']}", data={"email": "cy@example.com"})
    assert answer.status_code == 200
    state = snapshot(runtime, acme.tenant_id)
    assert state["contacts"] == [("cy@example.com", "active", None)]
    assert len(state["members"]) == 1 and state["messages"] == 0


def test_a_confirmation_post_without_the_page_nonce_changes_nothing(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    created = make_list(client, acme)
    client.post(f"/s/{created['public_id']}", data={"email": "dee@example.com"})
    token = confirm_token(runtime, acme.tenant_id, "dee@example.com")
    before = snapshot(runtime, acme.tenant_id)
    answer = client.post(f"/s/confirm/{token}", data={"form_nonce": "1.forged"})
    assert answer.status_code == 400
    assert snapshot(runtime, acme.tenant_id) == before


# -- protections -----------------------------------------------------------------------------


def test_a_filled_honeypot_pretends_success_and_does_nothing(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    created = make_list(client, acme)
    real = client.post(f"/s/{created['public_id']}", data={"email": "eve@example.com"})
    before = snapshot(runtime, acme.tenant_id)
    bot = client.post(
        f"/s/{created['public_id']}",
        data={"email": "bot@example.com", "website": "http://spam.example"},
    )
    assert bot.status_code == real.status_code == 200
    assert without_nonces(bot.text) == without_nonces(real.text)
    assert snapshot(runtime, acme.tenant_id) == before


def test_the_answer_is_the_same_for_new_known_unsubscribed_and_bounced_addresses(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    created = make_list(client, acme)
    add_contact(client, acme, "known@example.com")
    add_contact(client, acme, "gone@example.com", status="unsubscribed")
    add_contact(client, acme, "dead@example.com", status="bounced")
    answers = [
        client.post(f"/s/{created['public_id']}", data={"email": email})
        for email in (
            "new@example.com",
            "known@example.com",
            "gone@example.com",
            "dead@example.com",
        )
    ]
    assert {a.status_code for a in answers} == {200}
    assert len({without_nonces(a.text) for a in answers}) == 1
    # And the same in JSON.
    json_answers = [
        client.post(f"/s/{created['public_id']}", json={"email": email})
        for email in ("new2@example.com", "known@example.com")
    ]
    assert {a.status_code for a in json_answers} == {202}
    assert len({a.text for a in json_answers}) == 1


def test_every_sign_up_answer_waits_the_same_minimum_time(
    client: TestClient, acme: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signup_routes, "ANSWER_SECONDS", 0.3)
    created = make_list(client, acme)
    add_contact(client, acme, "dead@example.com", status="bounced")
    for email in ("fresh@example.com", "dead@example.com"):
        started = time.monotonic()
        answer = client.post(f"/s/{created['public_id']}", data={"email": email})
        assert answer.status_code == 200
        assert 0.3 <= time.monotonic() - started < 1.5


def test_sign_ups_are_limited_per_address_and_per_client(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    created = make_list(client, acme)
    url = f"/s/{created['public_id']}"
    per_email = signup_routes.rate_limit.SIGNUP_PER_EMAIL.requests
    for _ in range(per_email):
        assert client.post(url, data={"email": "flood@example.com"}).status_code == 200
    limited = client.post(url, data={"email": "flood@example.com"})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    with runtime.sessions() as session:
        sent = session.scalar(select(func.count()).select_from(Message))
    assert sent == per_email
    per_client = signup_routes.rate_limit.SIGNUP_PER_CLIENT.requests
    for n in range(per_client - per_email):
        assert client.post(url, data={"email": f"p{n}@example.com"}).status_code == 200
    assert client.post(url, data={"email": "one-more@example.com"}).status_code == 429


def test_forged_altered_and_expired_confirmation_links_change_nothing(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    created = make_list(client, acme)
    client.post(f"/s/{created['public_id']}", data={"email": "fay@example.com"})
    good = confirm_token(runtime, acme.tenant_id, "fay@example.com")
    nonce = nonce_of(client.get(f"/s/confirm/{good}").text)
    altered = good[:-3] + ("AAA" if good[-3:] != "AAA" else "BBB")
    forged = confirm_token(runtime, acme.tenant_id, "fay@example.com", secret="another-secret-" * 3)
    expired = confirm_token(
        runtime, acme.tenant_id, "fay@example.com", now=datetime.now(UTC) - timedelta(days=8)
    )
    unsubscribe_kind = tokens.make_token(
        TEST_SECRET,
        kind="unsubscribe",
        tenant_id=acme.tenant_id,
        message_id=1,
        contact_created=None,
        category=None,
        now=datetime.now(UTC),
    )
    before = snapshot(runtime, acme.tenant_id)
    for bad in (altered, forged, expired, unsubscribe_kind, "x" * 40):
        for answer in (
            client.get(f"/s/confirm/{bad}"),
            client.post(f"/s/confirm/{bad}", data={"form_nonce": nonce}),
        ):
            assert answer.status_code == 404
            assert "This link is not valid" in answer.text
    assert snapshot(runtime, acme.tenant_id) == before


# -- unsubscribed people ---------------------------------------------------------------------


@pytest.mark.parametrize("double_opt_in", [True, False])
def test_an_unsubscribed_contact_comes_back_only_by_confirming(
    client: TestClient, runtime: Runtime, acme: TenantKeys, double_opt_in: bool
) -> None:
    created = make_list(client, acme, double_opt_in=double_opt_in)
    gus = add_contact(client, acme, "gus@example.com")
    auth = acme.auth(acme.admin)
    listed = client.post(
        "/v1/suppressions", json={"email": "gus@example.com", "reason": "unsubscribe"}, headers=auth
    )
    assert listed.status_code in (200, 201), listed.text
    assert contact_row(runtime, acme.tenant_id, "gus@example.com").status == "unsubscribed"  # type: ignore[union-attr]
    client.post(f"/s/{created['public_id']}", data={"email": "gus@example.com"})
    state = snapshot(runtime, acme.tenant_id)
    assert state["contacts"] == [("gus@example.com", "unsubscribed", None)]
    assert state["suppressions"] == [("gus@example.com", "unsubscribe")]
    assert state["members"] == []
    token = confirm_token(runtime, acme.tenant_id, "gus@example.com")
    nonce = nonce_of(client.get(f"/s/confirm/{token}").text)
    assert client.post(f"/s/confirm/{token}", data={"form_nonce": nonce}).status_code == 200
    state = snapshot(runtime, acme.tenant_id)
    assert state["contacts"] == [("gus@example.com", "active", None)]
    assert state["suppressions"] == []
    assert state["members"] == [(created["id"], gus)]


def test_a_bounced_or_complained_address_is_never_signed_up(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    created = make_list(client, acme, double_opt_in=False)
    add_contact(client, acme, "hal@example.com", status="complained")
    auth = acme.auth(acme.admin)
    client.post(
        "/v1/suppressions", json={"email": "ivy@example.com", "reason": "hard_bounce"}, headers=auth
    )
    before = snapshot(runtime, acme.tenant_id)
    for email in ("hal@example.com", "ivy@example.com"):
        assert client.post(f"/s/{created['public_id']}", data={"email": email}).status_code == 200
    assert snapshot(runtime, acme.tenant_id) == before


@pytest.mark.parametrize("double_opt_in", [True, False])
def test_a_sign_up_never_changes_an_existing_contacts_status_or_choices(
    client: TestClient, runtime: Runtime, acme: TenantKeys, double_opt_in: bool
) -> None:
    add_categories(runtime, acme.tenant_id, "offers")
    created = make_list(client, acme, double_opt_in=double_opt_in)
    jo = add_contact(client, acme, "jo@example.com")
    client.put(
        f"/v1/contacts/{jo}/preferences",
        json={"categories": {"offers": False}},
        headers=acme.auth(acme.admin),
    )
    before = snapshot(runtime, acme.tenant_id)
    client.post(
        f"/s/{created['public_id']}",
        data={"email": "jo@example.com", "categories": ["offers"], "name": "Mallory"},
    )
    after = snapshot(runtime, acme.tenant_id)
    assert after["contacts"] == before["contacts"] == [("jo@example.com", "active", None)]
    assert after["preferences"] == before["preferences"]
    # Single opt-in adds the known contact to the list, and changes nothing else about them.
    assert after["members"] == ([] if double_opt_in else [(created["id"], jo)])


# -- purge and tenants -----------------------------------------------------------------------


def test_unconfirmed_sign_ups_are_purged_after_seven_days(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    created = make_list(client, acme)
    add_contact(client, acme, "kim@example.com")
    for email in ("new@example.com", "kim@example.com"):
        client.post(f"/s/{created['public_id']}", data={"email": email})
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        assert purge_unconfirmed_signups(session=session, now=now + timedelta(days=6)) == 0
    assert len(snapshot(runtime, acme.tenant_id)["signups"]) == 2  # type: ignore[arg-type]
    with transaction(runtime.sessions) as session:
        assert purge_unconfirmed_signups(session=session, now=now + timedelta(days=8), batch=1) == 1
    with transaction(runtime.sessions) as session:
        assert purge_unconfirmed_signups(session=session, now=now + timedelta(days=8)) == 1
    state = snapshot(runtime, acme.tenant_id)
    assert state["signups"] == []
    # The pending contact went, the known one stays as it was.
    assert state["contacts"] == [("kim@example.com", "active", None)]
    with runtime.sessions() as session:
        orphans = session.scalars(
            select(Message.contact_id).where(Message.tenant_id == acme.tenant_id)
        ).all()
    assert None in orphans


def test_one_tenants_form_and_links_never_reach_another_tenants_list(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    mine = make_list(client, acme)
    theirs = make_list(client, globex)
    client.post(f"/s/{mine['public_id']}", data={"email": "lee@example.com"})
    assert contact_row(runtime, globex.tenant_id, "lee@example.com") is None
    token = confirm_token(runtime, acme.tenant_id, "lee@example.com")
    claims = tokens.read_token(TEST_SECRET, token, kind="confirm", now=datetime.now(UTC))
    as_globex = tokens.make_token(
        TEST_SECRET,
        kind="confirm",
        tenant_id=globex.tenant_id,
        message_id=claims.message_id or 0,
        contact_created=claims.contact_created,
        category=None,
        now=datetime.now(UTC),
    )
    before = snapshot(runtime, globex.tenant_id), snapshot(runtime, acme.tenant_id)
    assert client.get(f"/s/confirm/{as_globex}").status_code == 404
    assert client.post(f"/s/confirm/{as_globex}", data={"form_nonce": "x"}).status_code == 404
    assert (snapshot(runtime, globex.tenant_id), snapshot(runtime, acme.tenant_id)) == before
    assert theirs["public_id"] != mine["public_id"]


def test_a_bounced_confirmation_makes_the_pending_contact_bounced(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    created = make_list(client, acme)
    client.post(f"/s/{created['public_id']}", data={"email": "max@example.com"})
    with transaction(runtime.sessions) as session:
        suppress(
            session,
            tenant_id=acme.tenant_id,
            entries={"max@example.com": "550 5.1.1 no such user"},
            reason=SuppressionReason.hard_bounce,
            now=datetime.now(UTC),
        )
    assert snapshot(runtime, acme.tenant_id)["contacts"] == [("max@example.com", "bounced", None)]
