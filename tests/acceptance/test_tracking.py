"""Open and click tracking end to end: settings, the mail a worker really sends through a real
SMTP server, and (below) the public routes its links lead to."""

from __future__ import annotations

import re
from collections.abc import Callable
from email.message import EmailMessage

from fastapi.testclient import TestClient

from tests.acceptance.conftest import WorkerThread, api_setup, start_campaign, wait_for_completion
from tests.conftest import TenantKeys
from tests.smtp_server import SmtpTestServer

TRACKED_TEMPLATE = {
    "name": "news",
    "subject": "News for {{ first_name }}",
    "html": "<html><body><p>Hi {{ first_name }},</p>"
    '<p><a href="https://shop.example.com/sale?a=1&b=2">Sale</a> '
    '<a href="https://blog.example.com/post">Post</a> '
    '<a href="mailto:help@example.com">Mail us</a> '
    '<a data-tidings-notrack href="https://private.example.com/account">Account</a></p>'
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> '
    '<a href="{{ preferences_url }}">Preferences</a></p></body></html>',
}
LINK = re.compile(r"http://tidings\.test/([oc])/([A-Za-z0-9_.-]+[A-Za-z0-9_-])")


def parts(message: EmailMessage) -> tuple[str, str]:
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    assert html is not None and text is not None
    return html.get_content(), text.get_content()


def test_settings_track_nothing_by_default_and_admins_turn_tracking_on(
    client: TestClient, acme: TenantKeys
) -> None:
    read = client.get("/v1/settings", headers=acme.auth(acme.viewer))
    assert read.json() == {
        "timezone": "UTC",
        "track_opens": False,
        "track_clicks": False,
        "bounce_domain": None,
    }
    denied = client.put("/v1/settings", json={"track_opens": True}, headers=acme.auth(acme.sender))
    assert denied.status_code == 403
    wrong = client.put("/v1/settings", json={"track_opens": "yes"}, headers=acme.auth(acme.admin))
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "track_opens"
    null = client.put("/v1/settings", json={"track_clicks": None}, headers=acme.auth(acme.admin))
    assert null.status_code == 422
    turned = client.put("/v1/settings", json={"track_opens": True}, headers=acme.auth(acme.admin))
    assert turned.json() == {
        "timezone": "UTC",
        "track_opens": True,
        "track_clicks": False,
        "bounce_domain": None,
    }
    both = client.put("/v1/settings", json={"track_clicks": True}, headers=acme.auth(acme.admin))
    assert both.json() == {
        "timezone": "UTC",
        "track_opens": True,
        "track_clicks": True,
        "bounce_domain": None,
    }


def test_untracked_by_default_a_sent_mail_has_no_pixel_and_its_links_as_written(
    client: TestClient,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    ids = api_setup(client, acme, [("ann@example.edu", "Ann")], **TRACKED_TEMPLATE)
    campaign_id = start_campaign(client, acme, ids)
    worker()
    wait_for_completion(client, acme, campaign_id)
    (received,) = smtp_server.wait_for(1)
    html, text = parts(received.message)
    assert LINK.findall(html) == [] and LINK.findall(text) == []
    assert 'href="https://shop.example.com/sale?a=1&b=2"' in html  # as written


def test_a_tracked_campaign_sends_the_pixel_and_sealed_links_except_the_excluded_ones(
    client: TestClient,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    ids = api_setup(client, acme, [("ann@example.edu", "Ann")], **TRACKED_TEMPLATE)
    campaign_id = start_campaign(client, acme, ids, track_opens=True, track_clicks=True)
    shown = client.get(f"/v1/campaigns/{campaign_id}", headers=acme.auth(acme.viewer)).json()
    assert (shown["track_opens"], shown["track_clicks"]) == (True, True)
    worker()
    wait_for_completion(client, acme, campaign_id)
    (received,) = smtp_server.wait_for(1)
    html, text = parts(received.message)
    found = LINK.findall(html)
    assert [kind for kind, _ in found] == ["c", "c", "c", "o"]  # two links, honeypot, pixel
    assert html.index("/o/") < html.index("</body>")
    for kept in (
        'href="mailto:help@example.com"',
        'href="https://private.example.com/account"',
        'href="http://tidings.test/u/',
        'href="http://tidings.test/p/',
    ):
        assert kept in html
    assert "shop.example.com" not in html and "blog.example.com" not in html
    text_links = LINK.findall(text)
    assert [kind for kind, _ in text_links] == ["c", "c"]  # the two links, no pixel, no honeypot
    assert {token for _, token in text_links} <= {token for _, token in found}
    assert "https://private.example.com/account" in text
    # The links lead exactly where the template pointed; the pixel is an image.
    targets = []
    for kind, token in found[:2]:
        answer = client.get(f"/{kind}/{token}", follow_redirects=False)
        assert answer.status_code == 302, answer.text
        targets.append(answer.headers["location"])
    assert targets == ["https://shop.example.com/sale?a=1&b=2", "https://blog.example.com/post"]
    pixel = client.get(f"/o/{found[3][1]}")
    assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/gif"


def test_a_message_override_beats_the_tenant_setting(
    client: TestClient,
    acme: TenantKeys,
    smtp_server: SmtpTestServer,
    worker: Callable[..., WorkerThread],
) -> None:
    client.put(
        "/v1/settings",
        json={"track_opens": True, "track_clicks": True},
        headers=acme.auth(acme.admin),
    )
    body = {"subject": "Hi", "html": '<p><a href="https://example.com/x">x</a></p>'}
    for to, overrides in (
        ("off@example.edu", {"track_opens": False, "track_clicks": False}),
        ("on@example.edu", {}),
    ):
        answer = client.post(
            "/v1/messages", json={"to": to, **body, **overrides}, headers=acme.auth(acme.sender)
        )
        assert answer.status_code == 201, answer.text
    worker()
    received = {m.rcpt_tos[0]: m for m in smtp_server.wait_for(2, timeout=15)}
    off_html, _ = parts(received["off@example.edu"].message)
    on_html, _ = parts(received["on@example.edu"].message)
    assert LINK.findall(off_html) == []
    assert [kind for kind, _ in LINK.findall(on_html)] == ["c", "c", "o"]
