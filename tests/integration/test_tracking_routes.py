"""The public tracking routes and the flush behind them: answers, no database on the request
path, forged tokens, the buffer's bound, and what a flush writes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, event, select, update

from tests.acceptance.conftest import wait_until
from tests.conftest import TenantKeys
from tests.integration.sent_mail import SentMail, seed_sent_mail
from tidings.api.routes.tracking import PIXEL
from tidings.app import create_app
from tidings.db.engine import transaction
from tidings.db.models import CampaignEngagement, CampaignLink, Message, TrackingHit
from tidings.runtime import Runtime
from tidings.tracking import links
from tidings.tracking.hits import HitBuffer, flush
from tidings.tracking.record import Hit

HUMAN = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120 Safari/537.36"
URL = "https://shop.example.com/sale?a=1&b=2&c=%C3%A9#top"


def sent(runtime: Runtime, tenant: TenantKeys, email: str = "ann@example.edu") -> SentMail:
    """A campaign's message sent an hour ago (past every prefetch window)."""
    mail = seed_sent_mail(runtime, tenant.tenant_id, email)
    with transaction(runtime.sessions) as session:
        session.execute(
            update(Message)
            .where(Message.id == mail.id)
            .values(sent_at=datetime.now(UTC) - timedelta(hours=1))
        )
    return mail


def click_url(runtime: Runtime, mail: SentMail, index: int = 1, url: str = URL) -> str:
    token = links.click_token(
        runtime.secret_key,
        tenant_id=mail.tenant_id,
        message_id=mail.id,
        link_index=index,
        url=url,
    )
    return f"/c/{token}"


def open_url(runtime: Runtime, mail: SentMail) -> str:
    return (
        f"/o/{links.open_token(runtime.secret_key, tenant_id=mail.tenant_id, message_id=mail.id)}"
    )


@contextmanager
def statements(runtime: Runtime) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        seen.append(statement)

    event.listen(runtime.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(runtime.engine, "before_cursor_execute", count)


def hits_of(runtime: Runtime, message_id: int) -> list[tuple[str, int | None, bool, str | None]]:
    with transaction(runtime.sessions) as session:
        rows = session.execute(
            select(
                TrackingHit.kind, TrackingHit.link_index, TrackingHit.machine, TrackingHit.network
            )
            .where(TrackingHit.message_id == message_id)
            .order_by(TrackingHit.id)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def test_the_pixel_is_a_gif_nobody_caches_and_the_click_redirects_to_the_exact_url(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    mail = sent(runtime, acme)
    pixel = client.get(open_url(runtime, mail), headers={"User-Agent": HUMAN})
    clicked = client.get(
        click_url(runtime, mail), headers={"User-Agent": HUMAN}, follow_redirects=False
    )
    assert pixel.status_code == 200 and pixel.content == PIXEL
    assert pixel.headers["content-type"] == "image/gif"
    assert "no-store" in pixel.headers["cache-control"]
    assert clicked.status_code == 302 and clicked.headers["location"] == URL
    assert "no-store" in clicked.headers["cache-control"]
    assert len(runtime.hits) + len(hits_of(runtime, mail.id)) == 2


def test_the_request_path_reads_and_writes_nothing(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    """The hits go to a buffer no flusher reads: every statement seen is the requests' own."""
    mail = sent(runtime, acme)
    runtime.hits = HitBuffer()
    with statements(runtime) as seen:
        for _ in range(3):
            assert client.get(open_url(runtime, mail)).status_code == 200
            assert client.get(click_url(runtime, mail), follow_redirects=False).status_code == 302
    assert len(runtime.hits) == 6 and seen == []


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # the last character
        lambda t: t.replace(".", ".A", 1),  # a byte slipped into the link part
        lambda t: t.split(".")[0],  # a click's message part alone
        lambda t: "x" + t,
        lambda t: "AAAA",
        lambda t: t + "." + t.split(".")[1],
    ],
    ids=["last-char", "inserted", "message-part", "prefixed", "made-up", "doubled"],
)
def test_a_forged_or_altered_token_is_a_404_page_before_any_database_access(
    client: TestClient, runtime: Runtime, acme: TenantKeys, forge: object
) -> None:
    mail = sent(runtime, acme)
    token = click_url(runtime, mail).removeprefix("/c/")
    assert callable(forge)
    forged = forge(token)
    with statements(runtime) as seen:
        clicked = client.get(f"/c/{forged}", follow_redirects=False)
        opened = client.get(f"/o/{forged}")
    assert clicked.status_code == 404 and "location" not in clicked.headers
    assert opened.status_code == 404
    assert "text/html" in clicked.headers["content-type"]
    assert seen == [] and len(runtime.hits) == 0


def test_an_altered_url_never_redirects(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    """The open redirect: a valid message part with a link part naming another URL."""
    import base64

    mail = sent(runtime, acme)
    token = click_url(runtime, mail, url="https://shop.example.com/").removeprefix("/c/")
    part, _, link = token.partition(".")
    raw = base64.urlsafe_b64decode(link + "=" * (-len(link) % 4))
    evil = raw.replace(b"shop.example.com", b"evil.example.net")
    forged = part + "." + base64.urlsafe_b64encode(evil).rstrip(b"=").decode()
    answer = client.get(f"/c/{forged}", follow_redirects=False)
    assert answer.status_code == 404 and "location" not in answer.headers


def test_a_pixel_token_is_no_link_and_a_link_token_no_pixel(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    mail = sent(runtime, acme)
    assert client.get(open_url(runtime, mail).replace("/o/", "/c/")).status_code == 404
    assert client.get(click_url(runtime, mail).replace("/c/", "/o/")).status_code == 404


def test_the_flush_writes_the_hits_classified_with_their_client_network(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    mail = sent(runtime, acme)
    client.get(open_url(runtime, mail), headers={"User-Agent": HUMAN})
    client.get(open_url(runtime, mail), headers={"User-Agent": "Mozilla/5.0"})  # Apple's proxy
    client.get(click_url(runtime, mail), headers={"User-Agent": HUMAN}, follow_redirects=False)
    found = wait_until(lambda: len(hits_of(runtime, mail.id)) == 3 and hits_of(runtime, mail.id))
    # The test client's address is "testclient": no network is kept for it.
    assert sorted(found) == [
        ("click", 1, False, None),
        ("open", None, False, None),
        ("open", None, True, None),
    ]
    with transaction(runtime.sessions) as session:
        summary = session.get(CampaignEngagement, mail.campaign_id)
        assert summary is not None
        assert (summary.opens_unique, summary.opens_total, summary.opens_machine) == (1, 1, 1)
        assert (summary.clicks_unique, summary.clicks_total, summary.clicks_machine) == (1, 1, 0)
        link = session.scalar(
            select(CampaignLink).where(CampaignLink.campaign_id == mail.campaign_id)
        )
        assert link is not None and (link.url, link.link_index, link.clicks_total) == (URL, 1, 1)


def test_a_purged_message_still_redirects_but_records_nothing(
    client: TestClient, runtime: Runtime, acme: TenantKeys
) -> None:
    mail = sent(runtime, acme)
    with transaction(runtime.sessions) as session:
        session.execute(delete(Message).where(Message.id == mail.id))
    answer = client.get(click_url(runtime, mail), follow_redirects=False)
    assert answer.status_code == 302 and answer.headers["location"] == URL
    wait_until(lambda: len(runtime.hits) == 0)
    assert hits_of(runtime, mail.id) == []
    with transaction(runtime.sessions) as session:
        assert session.get(CampaignEngagement, mail.campaign_id) is None


def test_hits_left_in_the_buffer_are_flushed_when_the_app_stops(
    runtime: Runtime, acme: TenantKeys
) -> None:
    mail = sent(runtime, acme)
    # Stamped an hour ahead: no periodic flush takes them (they are never past the hold).
    later = datetime.now(UTC) + timedelta(hours=1)
    with TestClient(create_app(runtime)):
        for _ in range(2):
            runtime.hits.add(Hit("open", mail.tenant_id, mail.id, None, None, later, HUMAN, None))
    assert len(hits_of(runtime, mail.id)) == 2 and len(runtime.hits) == 0


def test_a_full_buffer_drops_and_counts_rather_than_grows() -> None:
    buffer = HitBuffer(capacity=3)
    now = datetime.now(UTC)
    hit = Hit("open", 1, 1, None, None, now, None, None)
    assert [buffer.add(hit) for _ in range(5)] == [True, True, True, False, False]
    assert (len(buffer), buffer.dropped) == (3, 2)
    taken = buffer.take(now, everything=True)
    buffer.add(hit)
    buffer.give_back(taken)  # a failed flush: back within the bound, the rest counted
    assert (len(buffer), buffer.dropped) == (3, 3)


def test_a_flush_takes_old_hits_with_every_hit_of_their_messages() -> None:
    buffer = HitBuffer()
    now = datetime.now(UTC)
    old = Hit("click", 1, 7, 1, "https://a/", now - timedelta(seconds=2), None, None)
    same = Hit("click", 1, 7, 2, "https://b/", now, None, None)
    other = Hit("open", 1, 8, None, None, now, None, None)
    for each in (old, same, other):
        buffer.add(each)
    assert buffer.take(now) == [old, same]
    assert buffer.take(now) == [] and len(buffer) == 1


def test_a_flush_of_another_tenants_message_records_nothing(
    runtime: Runtime, acme: TenantKeys, globex: TenantKeys
) -> None:
    mail = sent(runtime, acme)
    hit = Hit("open", globex.tenant_id, mail.id, None, None, datetime.now(UTC), HUMAN, None)
    flushed = flush(runtime, [hit])
    assert (flushed.recorded, flushed.orphaned) == (0, 1)
    assert hits_of(runtime, mail.id) == []


def test_the_buffer_waits_for_a_batch_or_the_interval() -> None:
    async def run() -> float:
        buffer = HitBuffer()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await buffer.wait(0.05)
        return loop.time() - started

    assert asyncio.run(run()) >= 0.04


@pytest.mark.parametrize(
    ("address", "network"),
    [("203.0.113.77", "203.0.113.0/24"), ("2001:db8:aa:bb::7", "2001:db8:aa::/48")],
)
def test_a_hit_keeps_its_user_agent_and_client_network_never_the_address(
    runtime: Runtime, acme: TenantKeys, address: str, network: str
) -> None:
    mail = sent(runtime, acme)
    with TestClient(create_app(runtime), client=(address, 50000)) as client:
        client.get(open_url(runtime, mail), headers={"User-Agent": HUMAN})
    with transaction(runtime.sessions) as session:
        row = session.scalar(select(TrackingHit).where(TrackingHit.message_id == mail.id))
        assert row is not None
        assert (row.network, row.user_agent, row.machine) == (network, HUMAN, False)
