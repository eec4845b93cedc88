"""The router on real SMTP transports and servers (no database): what a relay's failure hands over to
the next one, and what it must not (the RFC 1047 window: the server may have the message)."""

from __future__ import annotations

import socket
from collections.abc import Collection, Iterator
from dataclasses import replace

import pytest

from tests.smtp_server import THROTTLED, TRY_LATER, SmtpTestServer, drop, reply, slow
from tidings.domain.message import OutgoingMessage, Sent, Transient
from tidings.transports.factory import open_transport
from tidings.transports.memory import MemoryTransport
from tidings.transports.routing import Health, Route, RoutingTransport, TenantRoutes

MSG = OutgoingMessage(
    message_id=1,
    tenant_id=1,
    from_address="Acme <news@acme.example>",
    to_address="amy@example.com",
    subject="Hi",
    html=None,
    text="Hi",
    message_id_header="<1.abc@acme.example>",
)


class Fixed:
    """A directory with a fixed list and no memory of health."""

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes

    def load(self, tenant_ids: Collection[int]) -> dict[int, TenantRoutes]:
        return dict.fromkeys(tenant_ids, TenantRoutes(routes=self.routes))

    def record_failure(self, route: Route, reason: str) -> Health:
        return Health(True, 1, 0.0)

    def record_success(self, route: Route) -> Health:
        return Health(True, 0, 0.0)


@pytest.fixture
def relays() -> Iterator[tuple[SmtpTestServer, SmtpTestServer]]:
    with SmtpTestServer() as first, SmtpTestServer() as second:
        yield first, second


def router(*urls: str) -> RoutingTransport:
    routes = tuple(
        Route(id=i, tenant_id=1, name=f"r{i}", url=u, masked=u, priority=i, weight=1)
        for i, u in enumerate(urls, start=1)
    )
    return RoutingTransport(
        default=MemoryTransport(),
        directory=Fixed(routes),
        opener=lambda url: open_transport(url, concurrency=2),
        secret_key="k" * 40,
    )


def messages(n: int) -> list[OutgoingMessage]:
    return [
        replace(MSG, message_id=i, to_address=f"u{i}@example.com", message_id_header=f"<{i}@x>")
        for i in range(1, n + 1)
    ]


async def test_a_relay_that_refuses_connections_hands_everything_to_the_next(
    relays: tuple[SmtpTestServer, SmtpTestServer],
) -> None:
    _, second = relays
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    transport = router(f"smtp://127.0.0.1:{dead}?tls=none", second.url)
    try:
        outcomes = await transport.send(messages(4))
    finally:
        await transport.close()
    assert all(isinstance(o, Sent) for o in outcomes)
    assert len(second.messages) == 4


async def test_a_4xx_goes_to_the_next_relay_and_a_slow_down_does_not(
    relays: tuple[SmtpTestServer, SmtpTestServer],
) -> None:
    first, second = relays
    first.fail("u1@example.com", reply(TRY_LATER))
    first.fail("u2@example.com", reply(THROTTLED))
    transport = router(first.url, second.url)
    try:
        one, two, three = await transport.send(messages(3))
    finally:
        await transport.close()
    assert isinstance(one, Sent)
    assert isinstance(two, Transient) and two.throttled
    assert isinstance(three, Sent)
    assert [m.rcpt_tos for m in second.messages] == [("u1@example.com",)]
    assert [m.rcpt_tos for m in first.messages] == [("u3@example.com",)]


async def test_a_message_the_relay_may_have_is_never_sent_through_another(
    relays: tuple[SmtpTestServer, SmtpTestServer],
) -> None:
    first, second = relays
    first.fail(None, drop(at="END"), times=1)  # received, then the line went dead: no reply
    transport = router(first.url, second.url)
    try:
        (outcome,) = await transport.send(messages(1))
    finally:
        await transport.close()
    assert isinstance(outcome, Transient)
    assert outcome.may_have_arrived
    assert [m.replied for m in first.messages] == [False]
    assert second.messages == []


async def test_a_reply_to_the_final_dot_that_comes_too_late_is_not_sent_elsewhere_either(
    relays: tuple[SmtpTestServer, SmtpTestServer],
) -> None:
    first, second = relays
    first.fail(None, slow(1.0, at="END"), times=1)
    transport = router(f"{first.url}&data_timeout=0.3", second.url)
    try:
        (outcome,) = await transport.send(messages(1))
    finally:
        await transport.close()
    assert isinstance(outcome, Transient) and outcome.may_have_arrived
    assert second.messages == []
