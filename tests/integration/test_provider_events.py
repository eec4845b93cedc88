"""Resend's delivered, delayed, bounced, complained, opened and clicked events through the signed
``/v1/webhooks/inbound/resend`` route, end to end to the campaign's figures: each recorded once
per event id, each message counted once, nothing recorded for a message that is not ours."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.conftest import TenantKeys, make_settings
from tests.integration.sent_mail import (
    SentMail,
    events_of,
    footprint,
    seed_sent_mail,
    suppressions_of,
)
from tests.integration.test_inbound_resend import SECRET, URL, bounced, complained, signed
from tests.integration.test_webhook_dispatch import dispatch, register
from tests.live_server import LiveServer
from tests.webhook_receiver import WebhookReceiver
from tidings.config import Settings
from tidings.db.engine import transaction
from tidings.db.models import Message, TrackingHit
from tidings.queue.guardrails import enforce_guardrails
from tidings.runtime import Runtime
from tidings.services.resend_events import provider_link_index


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url, resend_webhook_secret=SECRET, webhook_allow_private=True)


PERSON = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Version/16.1 Safari/605.1.15"
SCANNER = "Barracuda Sentinel (EE)"
SHOP = "https://shop.example.com/spring"


def event(kind: str, email_id: str, *, at: datetime | None = None, **data: Any) -> dict[str, Any]:
    """An ``email.*`` event as Resend documents it (``created_at``: when the event happened)."""
    stamp = (at or datetime.now(UTC) - timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    return {
        "type": kind,
        "created_at": stamp,
        "data": {
            "broadcast_id": None,
            "created_at": "2026-01-01T00:00:00.000000+00:00",
            "email_id": email_id,
            "from": "Tidings <noreply@tidings.test>",
            "to": ["ada@example.com"],
            "subject": "Reminder",
            "tags": {"category": "reminder"},
            **data,
        },
    }


def clicked(email_id: str, *, agent: str = PERSON, link: str = SHOP) -> dict[str, Any]:
    click = {
        "ipAddress": "122.115.53.11",
        "link": link,
        "timestamp": (datetime.now(UTC) - timedelta(minutes=5)).isoformat(),
        "userAgent": agent,
    }
    return event("email.clicked", email_id, click=click)


def post(client: TestClient, payload: dict[str, Any], event_id: str) -> dict[str, Any]:
    body, headers = signed(payload, event_id=event_id)
    answer = client.post(URL, content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def stats(client: TestClient, keys: TenantKeys, mail: SentMail) -> dict[str, Any]:
    answer = client.get(f"/v1/campaigns/{mail.campaign_id}/stats", headers=keys.auth(keys.viewer))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def sent_an_hour_ago(runtime: Runtime, mail: SentMail) -> SentMail:
    """Opens and clicks this soon after the send would be a prefetcher's (``tracking/classify``)."""
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Message)
            .where(Message.id == mail.id)
            .values(sent_at=datetime.now(UTC) - timedelta(hours=1))
        )
    return mail


def results(runtime: Runtime, message_id: int) -> tuple[Any, ...]:
    with transaction(runtime.sessions) as session:
        row = session.execute(
            select(
                Message.status, Message.delivered_at, Message.bounce, Message.complained_at
            ).where(Message.id == message_id)
        ).one()
        return tuple(row)


def test_a_delivery_confirmation_makes_a_sent_message_delivered_once(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com", provider_message_id="re-1")
    before = stats(client, acme, mail)
    assert (before["sent"], before["delivered"], before["awaiting_confirmation"]) == (1, 0, 1)

    at = datetime(2026, 1, 1, 0, 0, 7, tzinfo=UTC)
    answer = post(client, event("email.delivered", "re-1", at=at), "msg_d1")
    assert answer == {
        "status": "recorded",
        "message_id": mail.id,
        "kind": "delivered",
        "reason": None,
    }
    status, delivered_at, bounce, _ = results(runtime, mail.id)
    assert (status, delivered_at, bounce) == ("sent", at, None)
    assert [e[0] for e in events_of(runtime, mail.id)] == ["delivered"]
    after = stats(client, acme, mail)
    assert (after["sent"], after["delivered"], after["awaiting_confirmation"]) == (1, 1, 0)

    # Resend redelivers the same event: nothing moves. Another confirmation of the same message
    # (another event id) is an event, not a second delivery.
    same = footprint(runtime)
    assert post(client, event("email.delivered", "re-1", at=at), "msg_d1")["status"] == "duplicate"
    assert footprint(runtime) == same
    post(client, event("email.delivered", "re-1"), "msg_d2")
    assert stats(client, acme, mail)["delivered"] == 1
    assert results(runtime, mail.id)[1] == at


def test_a_delay_notice_is_an_event_and_neither_a_bounce_nor_a_failure(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com", provider_message_id="re-2")
    answer = post(client, event("email.delivery_delayed", "re-2"), "msg_late")
    assert (answer["status"], answer["kind"]) == ("recorded", "delivery_delayed")
    assert results(runtime, mail.id) == ("sent", None, None, None)
    assert [e[0] for e in events_of(runtime, mail.id)] == ["delivery_delayed"]
    figures = stats(client, acme, mail)
    assert (figures["bounced_soft"], figures["bounced_hard"], figures["sent"]) == (0, 0, 1)
    assert suppressions_of(runtime, acme.tenant_id) == []
    same = footprint(runtime)
    assert post(client, event("email.delivery_delayed", "re-2"), "msg_late")["status"] == (
        "duplicate"
    )
    assert footprint(runtime) == same


def test_bounce_types_split_hard_from_soft_and_only_hard_suppresses(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    mails = {
        name: seed_sent_mail(
            runtime, acme.tenant_id, f"{name}@example.com", provider_message_id=name
        )
        for name in ("permanent", "transient", "undetermined")
    }
    for name, mail in mails.items():
        answer = post(client, bounced(name, bounce_type=name.title(), to=mail.email), f"msg_{name}")
        assert answer["status"] == "recorded"
    assert [results(runtime, m.id)[::2] for m in mails.values()] == [
        ("failed", "hard"),
        ("sent", "soft"),
        ("sent", "soft"),
    ]
    assert suppressions_of(runtime, acme.tenant_id) == [("permanent@example.com", "hard_bounce")]
    hard, soft, _ = (stats(client, acme, m) for m in mails.values())
    assert (hard["bounced_hard"], hard["bounced_soft"], hard["bounce_rate"]) == (1, 0, 1.0)
    assert (soft["bounced_hard"], soft["bounced_soft"], soft["sent"]) == (0, 1, 1)
    assert soft["awaiting_confirmation"] == 0  # bounced: no longer waiting for a word

    # A soft bounce, then a delivery: the retry got through. Then a hard bounce outranks it all.
    transient = mails["transient"]
    post(client, event("email.delivered", "transient"), "msg_t_delivered")
    figures = stats(client, acme, transient)
    assert (figures["delivered"], figures["bounced_soft"]) == (1, 0)
    post(client, bounced("transient", to=transient.email), "msg_t_hard")
    figures = stats(client, acme, transient)
    assert (figures["delivered"], figures["bounced_soft"], figures["bounced_hard"]) == (0, 0, 1)
    # A late soft report never downgrades a hard bounce.
    post(client, bounced("transient", bounce_type="Transient"), "msg_t_soft_again")
    assert results(runtime, transient.id)[2] == "hard"
    assert stats(client, acme, transient)["bounced_soft"] == 0


def test_complaints_count_per_campaign_and_still_feed_the_guardrail(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    mail = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com", provider_message_id="re-3")
    post(client, event("email.delivered", "re-3"), "msg_c_delivered")
    post(client, complained("re-3"), "msg_c")
    post(client, complained("re-3"), "msg_c_again")  # a second report of the same complaint
    figures = stats(client, acme, mail)
    assert (figures["complaints"], figures["complaint_rate"], figures["delivered"]) == (1, 1.0, 1)
    with transaction(runtime.sessions) as session:
        paused = enforce_guardrails(
            session=session,
            now=datetime.now(UTC),
            min_sample=1,
            bounce_rate=0.5,
            complaint_rate=0.003,
        )
    assert paused == [mail.campaign_id]


def test_opens_and_clicks_from_resend_are_hits_classified_and_summed(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    mail = sent_an_hour_ago(
        runtime,
        seed_sent_mail(runtime, acme.tenant_id, "ada@example.com", provider_message_id="re-4"),
    )
    assert post(client, event("email.opened", "re-4"), "msg_o1")["kind"] == "opened"
    post(client, event("email.opened", "re-4"), "msg_o2")
    post(client, clicked("re-4"), "msg_k1")
    post(client, clicked("re-4"), "msg_k2")  # the same person, the same link, again
    post(client, clicked("re-4", agent=SCANNER, link="https://blog.example.com/"), "msg_k3")
    same = footprint(runtime)
    for event_id, payload in (
        ("msg_o1", event("email.opened", "re-4")),
        ("msg_k1", clicked("re-4")),
    ):
        assert post(client, payload, event_id)["status"] == "duplicate"
    assert footprint(runtime) == same

    figures = stats(client, acme, mail)
    assert {k: figures[k] for k in ("opens_unique", "opens_total", "opens_machine")} == {
        "opens_unique": 1,
        "opens_total": 2,
        "opens_machine": 0,
    }
    assert {k: figures[k] for k in ("clicks_unique", "clicks_total", "clicks_machine")} == {
        "clicks_unique": 1,
        "clicks_total": 2,
        "clicks_machine": 1,
    }
    assert figures["links"] == [
        {"url": SHOP, "clicks_unique": 1, "clicks_total": 2, "clicks_machine": 0},
        {
            "url": "https://blog.example.com/",
            "clicks_unique": 0,
            "clicks_total": 0,
            "clicks_machine": 1,
        },
    ]
    with transaction(runtime.sessions) as session:
        click = session.execute(
            select(TrackingHit.link_index, TrackingHit.user_agent, TrackingHit.network)
            .where(TrackingHit.message_id == mail.id, TrackingHit.kind == "click")
            .order_by(TrackingHit.id)
            .limit(1)
        ).one()
    assert tuple(click) == (provider_link_index(SHOP), PERSON, "122.115.53.0/24")


def test_a_click_without_a_link_and_events_for_messages_not_ours_change_nothing(
    client: TestClient, runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    ours = seed_sent_mail(runtime, acme.tenant_id, "ada@example.com", provider_message_id="re-5")
    theirs = sent_an_hour_ago(
        runtime,
        seed_sent_mail(runtime, globex.tenant_id, "bo@example.com", provider_message_id="g-1"),
    )
    before = footprint(runtime)
    for n, kind in enumerate(
        ("email.delivered", "email.delivery_delayed", "email.opened", "email.clicked")
    ):
        answer = post(client, event(kind, "re-unknown"), f"msg_unknown_{n}")
        assert (answer["status"], answer["message_id"]) == ("ignored", None)
    assert post(client, event("email.clicked", "re-5", click={}), "msg_nolink")["status"] == (
        "ignored"
    )
    assert footprint(runtime) == before

    # Globex's message: its own figures move, Acme's do not, and Acme cannot read Globex's.
    mine = stats(client, acme, ours)
    post(client, event("email.delivered", "g-1"), "msg_g_delivered")
    post(client, clicked("g-1"), "msg_g_click")
    assert stats(client, acme, ours) == mine
    assert (
        stats(client, globex, theirs)["delivered"],
        stats(client, globex, theirs)["clicks_unique"],
    ) == (1, 1)
    answer = client.get(f"/v1/campaigns/{theirs.campaign_id}/stats", headers=acme.auth(acme.viewer))
    assert answer.status_code == 404


def test_a_delivery_confirmation_reaches_the_tenants_message_delivered_webhook(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    hooks = WebhookReceiver()
    with LiveServer(hooks.app) as server:
        register(client, acme, f"{server.url}/delivered", "message.delivered")
        register(client, acme, f"{server.url}/sent", "message.sent")
        mail = seed_sent_mail(
            runtime, acme.tenant_id, "ada@example.com", provider_message_id="re-w"
        )
        post(client, event("email.delivered", "re-w"), "msg_w")
        post(client, event("email.delivered", "re-w"), "msg_w")  # redelivered: one webhook
        post(client, event("email.delivery_delayed", "re-w"), "msg_w_late")  # no public event
        dispatch(runtime)
    (request,) = hooks.requests
    assert request.path == "/delivered"
    payload = json.loads(request.body)
    assert payload["type"] == "message.delivered"
    assert payload["data"]["message_id"] == mail.id
    assert payload["data"]["campaign_id"] == mail.campaign_id
    assert payload["data"]["email"] == "ada@example.com"
    assert payload["data"]["detail"] == "Resend: delivered"


def test_message_delivered_is_among_the_event_types_an_endpoint_may_choose(
    client: TestClient, acme: TenantKeys
) -> None:
    auth = acme.auth(acme.admin)
    url = "http://127.0.0.1:9/hooks"
    chosen = client.post(
        "/v1/webhooks", json={"url": url, "event_types": ["message.delivered"]}, headers=auth
    )
    assert chosen.status_code == 201, chosen.text
    assert chosen.json()["event_types"] == ["message.delivered"]
    wrong = client.post(
        "/v1/webhooks", json={"url": url, "event_types": ["message.deliverd"]}, headers=auth
    )
    assert wrong.status_code == 422 and "event_types" in wrong.text
