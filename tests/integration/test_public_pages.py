"""The recipient's pages: RFC 8058 one-click unsubscribe, its confirmation page, the preference centre."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select, update

from tests.conftest import TEST_SECRET, TenantKeys
from tests.integration.campaign_seed import contacts, opt_out
from tests.integration.sent_mail import sent_link
from tests.token_formats import make_v1_token
from tidings import tokens
from tidings.api import rate_limit
from tidings.api.routes.public import form_nonce
from tidings.db.engine import transaction
from tidings.db.models import Category, Contact, Event, Message, Preference, Suppression
from tidings.runtime import Runtime

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def token(
    runtime: Runtime,
    tenant_id: int,
    *,
    contact_id: int | None = None,
    email: str | None = None,
    category: str | None = None,
    kind: tokens.TokenKind = "unsubscribe",
    secret: str = TEST_SECRET,
    now: datetime | None = None,
) -> str:
    """The token of a link in a mail really sent to the contact or address."""
    return sent_link(
        runtime,
        tenant_id,
        contact_id=contact_id,
        email=email,
        category=category,
        kind=kind,
        secret=secret,
        now=now,
    )


def state(runtime: Runtime, tenant_id: int) -> dict[str, object]:
    """Everything an unsubscribe could change, to prove that something did not."""
    with runtime.sessions() as session:
        return {
            "statuses": sorted(
                session.execute(
                    select(Contact.email, Contact.status).where(Contact.tenant_id == tenant_id)
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
                    select(Preference.contact_id, Preference.category, Preference.subscribed)
                ).all()
            ),
            "events": session.scalar(select(func.count()).select_from(Event)),
        }


def unsubscribed_events(runtime: Runtime, tenant_id: int) -> list[Event]:
    with runtime.sessions() as session:
        return list(
            session.scalars(
                select(Event).where(Event.tenant_id == tenant_id, Event.type == "unsubscribed")
            )
        )


def add_categories(runtime: Runtime, tenant_id: int, *names: str) -> None:
    with transaction(runtime.sessions) as session:
        session.add_all(
            Category(
                tenant_id=tenant_id,
                name=name,
                description=f"{name} description",
                created_at=datetime.now(UTC),
            )
            for name in names
        )


def without_nonces(html: str) -> str:
    return re.sub(r"nonce=\"[^\"]*\"", "", html)


# -- one-click ------------------------------------------------------------------------------


def test_one_click_form_post_unsubscribes_before_answering_200(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    answer = client.post(
        f"/u/{token(runtime, acme.tenant_id, contact_id=ann)}",
        data=ONE_CLICK,
        follow_redirects=False,
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert "You are unsubscribed" in answer.text
    after = state(runtime, acme.tenant_id)
    assert after["statuses"] == [("ann@example.com", "unsubscribed")]
    assert after["suppressions"] == [("ann@example.com", "unsubscribe")]
    [event] = unsubscribed_events(runtime, acme.tenant_id)
    assert event.message_id is None
    assert "ann@example.com" in (event.detail or "")


def test_one_click_multipart_post_unsubscribes(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    answer = client.post(
        f"/u/{token(runtime, acme.tenant_id, contact_id=ann)}",
        files={"List-Unsubscribe": (None, "One-Click")},
        follow_redirects=False,
    )
    assert answer.status_code == 200
    assert answer.request.headers["content-type"].startswith("multipart/form-data")
    assert state(runtime, acme.tenant_id)["statuses"] == [("ann@example.com", "unsubscribed")]


def test_repeating_the_one_click_post_changes_nothing_more(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    url = f"/u/{token(runtime, acme.tenant_id, contact_id=ann)}"
    assert client.post(url, data=ONE_CLICK).status_code == 200
    first = state(runtime, acme.tenant_id)
    for _ in range(3):
        assert client.post(url, data=ONE_CLICK).status_code == 200
    assert state(runtime, acme.tenant_id) == first
    assert len(unsubscribed_events(runtime, acme.tenant_id)) == 1


def test_the_confirmation_page_changes_nothing_and_posts_the_one_click_body(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    before = state(runtime, acme.tenant_id)
    link = token(runtime, acme.tenant_id, contact_id=ann)
    for _ in range(2):
        page = client.get(f"/u/{link}")
        assert page.status_code == 200
    assert state(runtime, acme.tenant_id) == before
    assert '<form method="post" action="' + link + '">' in page.text
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in page.text
    assert '<button type="submit">Unsubscribe</button>' in page.text
    assert "ann@example.com" not in page.text  # a shared link does not show the whole address
    assert "a…@example.com" in page.text


def test_public_pages_do_not_leak_the_token_or_allow_framing(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    for url in (
        f"/u/{token(runtime, acme.tenant_id, contact_id=ann)}",
        f"/p/{token(runtime, acme.tenant_id, contact_id=ann, kind='preferences')}",
        "/u/nonsense",
    ):
        headers = client.get(url).headers
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "noindex" in headers["x-robots-tag"]


def _bad_links(runtime: Runtime, acme: TenantKeys, globex: TenantKeys, ann: int) -> dict[str, str]:
    good = token(runtime, acme.tenant_id, contact_id=ann)
    middle = len(good) // 2
    flipped = good[:middle] + ("A" if good[middle] != "A" else "B") + good[middle + 1 :]
    return {
        "random": "q2V8x0Jm4nT0cXlV4rR1Zk3bVw9Y5nP8sD2fG7hJ1kL",
        "altered": flipped,
        "truncated": good[:-3],
        "other tenant": token(runtime, globex.tenant_id, contact_id=ann),
        "other instance's secret": token(runtime, acme.tenant_id, contact_id=ann, secret="z" * 48),
        "expired": token(
            runtime, acme.tenant_id, contact_id=ann, now=datetime.now(UTC) - timedelta(days=800)
        ),
        "preferences kind": token(runtime, acme.tenant_id, contact_id=ann, kind="preferences"),
        "no such contact": token(runtime, acme.tenant_id, contact_id=ann + 1000),
    }


def test_every_link_this_server_did_not_issue_gets_the_same_404_and_changes_nothing(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    contacts(runtime, globex.tenant_id, ["ann@example.com"])
    before = state(runtime, acme.tenant_id), state(runtime, globex.tenant_id)
    reference = client.post("/u/" + "x" * 40, data=ONE_CLICK)
    assert reference.status_code == 404
    for name, link in _bad_links(runtime, acme, globex, ann).items():
        for answer in (client.post(f"/u/{link}", data=ONE_CLICK), client.get(f"/u/{link}")):
            assert answer.status_code == 404, name
            assert without_nonces(answer.text) == without_nonces(reference.text), name
    assert (state(runtime, acme.tenant_id), state(runtime, globex.tenant_id)) == before


def test_a_post_without_the_one_click_body_changes_nothing(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    before = state(runtime, acme.tenant_id)
    url = f"/u/{token(runtime, acme.tenant_id, contact_id=ann)}"
    assert client.post(url).status_code == 400
    assert client.post(url, data={"List-Unsubscribe": "yes"}).status_code == 400
    assert client.post(url, json={"List-Unsubscribe": "One-Click"}).status_code == 400
    assert state(runtime, acme.tenant_id) == before


def test_a_one_click_link_for_a_category_turns_off_only_that_category(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    url = f"/u/{token(runtime, acme.tenant_id, contact_id=ann, category='marketing')}"
    assert "“marketing” emails" in client.get(url).text
    assert client.post(url, data=ONE_CLICK).status_code == 200
    assert client.post(url, data=ONE_CLICK).status_code == 200
    after = state(runtime, acme.tenant_id)
    assert after["statuses"] == [("ann@example.com", "active")]
    assert after["suppressions"] == []
    assert after["preferences"] == [(ann, "marketing", False)]
    [event] = unsubscribed_events(runtime, acme.tenant_id)
    assert "category marketing" in (event.detail or "")


def test_a_one_click_link_for_an_address_without_contact_suppresses_the_address(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    url = f"/u/{token(runtime, acme.tenant_id, email='walk-in@example.com')}"
    assert client.post(url, data=ONE_CLICK).status_code == 200
    assert state(runtime, acme.tenant_id)["suppressions"] == [
        ("walk-in@example.com", "unsubscribe")
    ]


def test_an_unsubscribe_keeps_a_stronger_suppression_reason(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"], status="complained")
    with transaction(runtime.sessions) as session:
        session.add(
            Suppression(
                tenant_id=acme.tenant_id,
                email="ann@example.com",
                reason="complaint",
                created_at=datetime.now(UTC),
            )
        )
    assert client.post(
        f"/u/{token(runtime, acme.tenant_id, contact_id=ann)}", data=ONE_CLICK
    ).is_success
    after = state(runtime, acme.tenant_id)
    assert after["statuses"] == [("ann@example.com", "complained")]
    assert after["suppressions"] == [("ann@example.com", "complaint")]
    assert unsubscribed_events(runtime, acme.tenant_id) == []


# -- the preference centre ------------------------------------------------------------------


def _checked(html: str) -> dict[str, bool]:
    boxes = re.findall(r"<input type=\"checkbox\"[^>]*>", html)
    return {
        re.search(r'value="([^"]+)"', box).group(1): bool(re.search(r"\schecked\b", box))  # type: ignore[union-attr]
        for box in boxes
    }


def test_the_preference_centre_lists_the_categories_and_changes_nothing_on_get(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    add_categories(runtime, acme.tenant_id, "reminders", "marketing", "notifications")
    add_categories(runtime, globex.tenant_id, "globex-news")
    opt_out(runtime, acme.tenant_id, ann, "marketing")
    before = state(runtime, acme.tenant_id)
    page = client.get(f"/p/{token(runtime, acme.tenant_id, contact_id=ann, kind='preferences')}")
    assert page.status_code == 200
    assert _checked(page.text) == {"marketing": False, "notifications": True, "reminders": True}
    assert "<legend>Send me these emails</legend>" in page.text
    assert '<label for="category-1">Marketing</label>' in page.text
    assert 'aria-describedby="category-1-hint"' in page.text
    assert state(runtime, acme.tenant_id) == before


def _post_preferences(client: TestClient, link: str, runtime: Runtime, **fields: object) -> object:
    data = {"form_nonce": form_nonce(runtime.secret_key, link, datetime.now(UTC)), **fields}
    return client.post(f"/p/{link}", data=data)


def test_saving_preferences_stores_each_category_and_records_what_was_turned_off(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    add_categories(runtime, acme.tenant_id, "reminders", "marketing", "notifications")
    opt_out(runtime, acme.tenant_id, ann, "notifications")
    link = token(runtime, acme.tenant_id, contact_id=ann, kind="preferences")
    answer = _post_preferences(
        client, link, runtime, action="save", category=["reminders", "notifications", "bogus"]
    )
    assert answer.status_code == 200  # type: ignore[attr-defined]
    assert "Your preferences are saved." in answer.text  # type: ignore[attr-defined]
    assert _checked(answer.text) == {  # type: ignore[attr-defined]
        "marketing": False,
        "notifications": True,
        "reminders": True,
    }
    after = state(runtime, acme.tenant_id)
    assert after["preferences"] == [
        (ann, "marketing", False),
        (ann, "notifications", True),
        (ann, "reminders", True),
    ]
    assert after["statuses"] == [("ann@example.com", "active")]
    [event] = unsubscribed_events(runtime, acme.tenant_id)
    assert "category marketing" in (event.detail or "")


def test_unsubscribe_from_everything_and_subscribe_again(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    add_categories(runtime, acme.tenant_id, "reminders")
    link = token(runtime, acme.tenant_id, contact_id=ann, kind="preferences")
    answer = _post_preferences(client, link, runtime, action="unsubscribe_all")
    assert "You are unsubscribed from all email from acme." in answer.text  # type: ignore[attr-defined]
    after = state(runtime, acme.tenant_id)
    assert after["statuses"] == [("ann@example.com", "unsubscribed")]
    assert after["suppressions"] == [("ann@example.com", "unsubscribe")]
    answer = _post_preferences(client, link, runtime, action="resubscribe")
    assert "You are subscribed again." in answer.text  # type: ignore[attr-defined]
    after = state(runtime, acme.tenant_id)
    assert after["statuses"] == [("ann@example.com", "active")]
    assert after["suppressions"] == []


def test_a_bounced_contact_cannot_subscribe_again_from_the_page(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"], status="bounced")
    link = token(runtime, acme.tenant_id, contact_id=ann, kind="preferences")
    page = client.get(f"/p/{link}")
    assert "Subscribe again" not in page.text
    _post_preferences(client, link, runtime, action="resubscribe")
    assert state(runtime, acme.tenant_id)["statuses"] == [("ann@example.com", "bounced")]


@pytest.mark.parametrize("nonce", ["", "garbage", "1.abc", "forged-for-another-token"])
def test_a_preference_post_without_a_valid_form_nonce_changes_nothing(
    client: TestClient, runtime: Runtime, acme: TenantKeys, nonce: str
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    add_categories(runtime, acme.tenant_id, "reminders")
    link = token(runtime, acme.tenant_id, contact_id=ann, kind="preferences")
    if nonce == "forged-for-another-token":
        nonce = form_nonce(runtime.secret_key, link + "x", datetime.now(UTC))
    before = state(runtime, acme.tenant_id)
    answer = client.post(f"/p/{link}", data={"form_nonce": nonce, "action": "unsubscribe_all"})
    assert answer.status_code == 400
    assert "Nothing was changed" in answer.text
    assert state(runtime, acme.tenant_id) == before


def test_an_old_form_nonce_is_refused(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    link = token(runtime, acme.tenant_id, contact_id=ann, kind="preferences")
    stale = form_nonce(runtime.secret_key, link, datetime.now(UTC) - timedelta(days=2))
    answer = client.post(f"/p/{link}", data={"form_nonce": stale, "action": "unsubscribe_all"})
    assert answer.status_code == 400
    assert state(runtime, acme.tenant_id)["statuses"] == [("ann@example.com", "active")]


def test_the_preference_centre_refuses_bad_links_like_the_unsubscribe_page(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    before = state(runtime, acme.tenant_id)
    for link in (
        token(runtime, globex.tenant_id, contact_id=ann, kind="preferences"),
        token(
            runtime, acme.tenant_id, contact_id=ann
        ),  # an unsubscribe token is not a preferences one
        "nonsense",
    ):
        assert client.get(f"/p/{link}").status_code == 404
        nonce = form_nonce(runtime.secret_key, link, datetime.now(UTC))
        answer = client.post(f"/p/{link}", data={"form_nonce": nonce, "action": "unsubscribe_all"})
        assert answer.status_code == 404
    assert state(runtime, acme.tenant_id) == before


def test_the_unsubscribe_page_links_to_the_preference_centre(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    page = client.get(f"/u/{token(runtime, acme.tenant_id, contact_id=ann)}")
    relative = re.search(r'href="\.\./p/([^"]+)"', page.text)
    assert relative is not None
    assert client.get(f"/p/{relative.group(1)}").status_code == 200


# -- a link acts only for the recipient of a sent message -----------------------------------


def _message(
    runtime: Runtime,
    tenant_id: int,
    *,
    contact_id: int | None = None,
    email: str = "someone@example.com",
    sent_at: datetime | None = None,
) -> int:
    """A message row: sent at ``sent_at``, or still queued when it is None."""
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:
        row = Message(
            tenant_id=tenant_id,
            contact_id=contact_id,
            to_address=email,
            subject="Hi",
            status="queued" if sent_at is None else "sent",
            not_before=now,
            expires_at=now + timedelta(days=1),
            attempts=0 if sent_at is None else 1,
            created_at=now,
            updated_at=now,
            sent_at=sent_at,
        )
        session.add(row)
        session.flush()
        return row.id


def _v1(
    tenant_id: int,
    *,
    contact_id: int | None = None,
    email: str | None = None,
    kind: tokens.TokenKind = "unsubscribe",
    now: datetime,
) -> str:
    return make_v1_token(
        TEST_SECRET,
        kind=kind,
        tenant_id=tenant_id,
        contact_id=contact_id,
        email=email,
        category=None,
        now=now,
    )


def _unsubscribed(runtime: Runtime, tenant_id: int, email: str) -> int:
    [contact] = contacts(runtime, tenant_id, [email], status="unsubscribed")
    with transaction(runtime.sessions) as session:
        session.add(
            Suppression(
                tenant_id=tenant_id, email=email, reason="unsubscribe", created_at=datetime.now(UTC)
            )
        )
    return contact


def test_a_link_naming_a_message_never_sent_or_another_tenants_acts_for_nobody(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    now = datetime.now(UTC)
    queued = _message(runtime, acme.tenant_id, email="victim@example.com")
    theirs = _message(runtime, globex.tenant_id, email="victim@example.com", sent_at=now)
    before = state(runtime, acme.tenant_id)
    for tenant_id, message_id in ((acme.tenant_id, queued), (acme.tenant_id, theirs)):
        link = tokens.make_token(
            TEST_SECRET,
            kind="unsubscribe",
            tenant_id=tenant_id,
            message_id=message_id,
            contact_created=None,
            category=None,
            now=now,
        )
        assert client.post(f"/u/{link}", data=ONE_CLICK).status_code == 404
    assert state(runtime, acme.tenant_id) == before


def test_old_format_links_in_mail_already_sent_still_work(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    """Version 1 links (before migration 0009) named a contact or an address; a real send to
    that recipient right after the link was made vouches for them."""
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    issued = datetime.now(UTC).replace(microsecond=0)
    _message(runtime, acme.tenant_id, contact_id=ann, email="ann@example.com", sent_at=issued)
    _message(runtime, acme.tenant_id, email="walk-in@example.com", sent_at=issued)
    for link in (
        _v1(acme.tenant_id, contact_id=ann, now=issued),
        _v1(acme.tenant_id, email="walk-in@example.com", now=issued),
    ):
        assert client.post(f"/u/{link}", data=ONE_CLICK).status_code == 200
    assert state(runtime, acme.tenant_id)["suppressions"] == [
        ("ann@example.com", "unsubscribe"),
        ("walk-in@example.com", "unsubscribe"),
    ]


def test_an_old_format_link_without_a_send_to_its_recipient_cannot_suppress_or_resubscribe(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    """What a viewer could mint through a preview before the fix: a link for any address, or
    for a contact who opted out. Without a mail sent to them soon after, it does nothing."""
    bob = _unsubscribed(runtime, acme.tenant_id, "bob@example.com")
    now = datetime.now(UTC)
    with transaction(runtime.sessions) as session:  # Bob has been a contact for long
        session.execute(
            update(Contact).where(Contact.id == bob).values(created_at=now - timedelta(days=30))
        )
    # Bob did get mail, but two hours after the link was made: not the mail it came in.
    _message(runtime, acme.tenant_id, contact_id=bob, email="bob@example.com", sent_at=now)
    before = state(runtime, acme.tenant_id)
    victim = _v1(acme.tenant_id, email="victim@example.com", now=now)
    assert client.post(f"/u/{victim}", data=ONE_CLICK).status_code == 404
    assert client.get(f"/u/{victim}").status_code == 404
    preferences = _v1(
        acme.tenant_id, contact_id=bob, kind="preferences", now=now - timedelta(hours=2)
    )
    nonce = form_nonce(runtime.secret_key, preferences, now)
    answer = client.post(f"/p/{preferences}", data={"form_nonce": nonce, "action": "resubscribe"})
    assert answer.status_code == 404
    assert state(runtime, acme.tenant_id) == before


def test_an_old_format_link_of_a_deleted_contact_misses_the_contact_now_under_its_id(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    """The id of a deleted contact given to a new one (SQLite before migration 0009), who is
    then sent mail: the old link names the id, but not a contact that existed when it was made."""
    issued = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    with transaction(runtime.sessions) as session:
        old = Contact(
            tenant_id=acme.tenant_id,
            email="ann@example.com",
            attributes={},
            status="active",
            created_at=issued - timedelta(days=1),
            updated_at=issued,
        )
        session.add(old)
        session.flush()
        reused = old.id
    _message(runtime, acme.tenant_id, contact_id=reused, email="ann@example.com", sent_at=issued)
    link = _v1(acme.tenant_id, contact_id=reused, now=issued)
    with transaction(runtime.sessions) as session:
        session.execute(update(Message).where(Message.contact_id == reused).values(contact_id=None))
        session.execute(delete(Contact).where(Contact.id == reused))
        session.add(
            Contact(
                id=reused,
                tenant_id=acme.tenant_id,
                email="new@example.com",
                attributes={},
                status="active",
                created_at=issued + timedelta(minutes=5),
                updated_at=issued + timedelta(minutes=5),
            )
        )
    _message(
        runtime,
        acme.tenant_id,
        contact_id=reused,
        email="new@example.com",
        sent_at=issued + timedelta(minutes=10),
    )
    before = state(runtime, acme.tenant_id)
    assert client.post(f"/u/{link}", data=ONE_CLICK).status_code == 404
    assert state(runtime, acme.tenant_id) == before


# -- abuse: rate limits and malformed forms -------------------------------------------------


def test_one_link_used_too_often_gets_429_with_retry_after_and_changes_nothing(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    add_categories(runtime, acme.tenant_id, "reminders")
    link = token(runtime, acme.tenant_id, contact_id=ann, kind="preferences")
    nonce = form_nonce(runtime.secret_key, link, datetime.now(UTC))
    flips = ("unsubscribe_all", "resubscribe")
    for i in range(rate_limit.PER_TOKEN.requests):
        answer = client.post(f"/p/{link}", data={"form_nonce": nonce, "action": flips[i % 2]})
        assert answer.status_code == 200, i
    before = state(runtime, acme.tenant_id)
    for method in (client.get, client.post):
        answer = method(f"/p/{link}")
        assert answer.status_code == 429
        assert 1 <= int(answer.headers["retry-after"]) <= rate_limit.PER_TOKEN.window_seconds
        assert "Nothing was changed" in answer.text
    assert state(runtime, acme.tenant_id) == before
    other = token(runtime, acme.tenant_id, contact_id=ann, kind="preferences")
    assert client.get(f"/p/{other}").status_code == 200  # another link of the same client


def test_one_client_trying_many_links_gets_429(client: TestClient) -> None:
    for i in range(rate_limit.PER_CLIENT.requests):
        assert client.get(f"/u/made-up-{i}").status_code == 404, i
    answer = client.post("/u/made-up-one-more", data=ONE_CLICK)
    assert answer.status_code == 429
    assert int(answer.headers["retry-after"]) >= 1


@pytest.mark.parametrize("nonce", ["é", "²", "١٢٣.abc", "{now}.é", "{now}.ABCDEFGHIJKLMNOPQRSTUé"])
def test_a_non_ascii_form_nonce_is_a_400_not_a_crash(
    client: TestClient, runtime: Runtime, acme: TenantKeys, nonce: str
) -> None:
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    link = token(runtime, acme.tenant_id, contact_id=ann, kind="preferences")
    nonce = nonce.format(now=int(datetime.now(UTC).timestamp()))
    before = state(runtime, acme.tenant_id)
    answer = client.post(f"/p/{link}", data={"form_nonce": nonce, "action": "unsubscribe_all"})
    assert answer.status_code == 400
    assert "Nothing was changed" in answer.text
    assert state(runtime, acme.tenant_id) == before


def test_a_link_names_its_contact_by_creation_time_too_so_a_reused_id_does_not_match(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    """Even if a message still named a contact id that now belongs to a newer contact (a row
    deleted by hand, without detaching its messages), the link's contact stamp does not match."""
    [ann] = contacts(runtime, acme.tenant_id, ["ann@example.com"])
    link = token(runtime, acme.tenant_id, contact_id=ann)
    later = datetime.now(UTC) + timedelta(seconds=5)
    with transaction(runtime.sessions) as session:
        session.execute(delete(Contact).where(Contact.id == ann))
        session.add(
            Contact(
                id=ann,
                tenant_id=acme.tenant_id,
                email="new@example.com",
                attributes={},
                status="active",
                created_at=later,
                updated_at=later,
            )
        )
    before = state(runtime, acme.tenant_id)
    assert client.post(f"/u/{link}", data=ONE_CLICK).status_code == 404
    assert state(runtime, acme.tenant_id) == before
