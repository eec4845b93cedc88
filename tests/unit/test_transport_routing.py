"""Per-tenant routing (``transports/routing.py``) on in-memory transports and an in-memory directory:
which transport each message goes through, failover within the call, what must never fail over,
weights, health and probes, reloads, VERP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from dataclasses import replace

import pytest

from tidings.bounces.identify import message_id_from_verp
from tidings.domain.message import OutgoingMessage, Permanent, Sent, Transient
from tidings.transports import routing
from tidings.transports.memory import MemoryTransport
from tidings.transports.routing import (
    UNHEALTHY_AFTER,
    Health,
    Route,
    RoutingTransport,
    TenantRoutes,
    can_fail_over,
    probe_delay,
)

SECRET = "s" * 40
MSG = OutgoingMessage(
    message_id=1,
    tenant_id=1,
    from_address="Acme <news@acme.test>",
    to_address="amy@example.com",
    subject="Hi",
    html=None,
    text="Hi",
    message_id_header="<1@acme.test>",
)


def batch(n: int, tenant_id: int = 1, start: int = 1) -> list[OutgoingMessage]:
    return [
        replace(MSG, message_id=i, tenant_id=tenant_id, to_address=f"u{i}@example.com")
        for i in range(start, start + n)
    ]


def route(rid: int, *, tenant_id: int = 1, priority: int = 1, weight: int = 1) -> Route:
    return Route(
        id=rid,
        tenant_id=tenant_id,
        name=f"r{rid}",
        url=f"memory://{rid}",
        masked=f"memory://{rid}",
        priority=priority,
        weight=weight,
    )


class Directory:
    """In memory, counting like the database one."""

    def __init__(self, tenants: dict[int, TenantRoutes]) -> None:
        self.tenants = tenants
        self.loads = 0
        self.failures: dict[int, int] = {}
        self.events: list[tuple[str, int]] = []

    def load(self, tenant_ids: Collection[int]) -> dict[int, TenantRoutes]:
        self.loads += 1
        return {t: self.tenants[t] for t in tenant_ids if t in self.tenants}

    def record_failure(self, route: Route, reason: str) -> Health:
        self.events.append(("failure", route.id))
        failures = self.failures[route.id] = self.failures.get(route.id, 0) + 1
        if failures < UNHEALTHY_AFTER:
            return Health(True, failures, 0.0)
        return Health(False, failures, probe_delay(failures))

    def record_success(self, route: Route) -> Health:
        self.events.append(("success", route.id))
        self.failures[route.id] = 0
        return Health(True, 0, 0.0)


class Setup:
    def __init__(self, tenants: dict[int, TenantRoutes], ttl: float = 60.0) -> None:
        self.default = MemoryTransport()
        self.opened: dict[str, MemoryTransport] = {}
        self.directory = Directory(tenants)
        self.router = RoutingTransport(
            default=self.default,
            directory=self.directory,
            opener=self.open,
            secret_key=SECRET,
            ttl=ttl,
        )

    def open(self, url: str) -> MemoryTransport:
        transport = self.opened.get(url)
        if transport is None or transport.closed:
            transport = self.opened[url] = MemoryTransport()
        return transport

    def sent_by(self, rid: int) -> list[int]:
        transport = self.opened.get(f"memory://{rid}")
        return [m.message_id for m in transport.sent] if transport else []


def down(_: OutgoingMessage) -> Transient:
    return Transient("cannot connect to relay: ConnectionRefusedError")


async def test_a_tenant_without_transports_goes_through_the_default_and_one_with_never_does() -> (
    None
):
    setup = Setup({1: TenantRoutes(routes=(route(10),))})
    outcomes = await setup.router.send([*batch(2, tenant_id=1), *batch(2, tenant_id=2, start=3)])
    assert all(isinstance(o, Sent) for o in outcomes)
    assert setup.sent_by(10) == [1, 2]
    assert [m.message_id for m in setup.default.sent] == [3, 4]


async def test_a_dead_first_priority_hands_its_messages_to_the_next_in_the_same_call() -> None:
    setup = Setup({1: TenantRoutes(routes=(route(10), route(20, priority=2)))})
    setup.open("memory://10").responder = down
    outcomes = await setup.router.send(batch(5))
    assert all(isinstance(o, Sent) for o in outcomes)
    assert setup.sent_by(20) == [1, 2, 3, 4, 5]
    assert setup.sent_by(10) == []


async def test_within_a_priority_a_message_tries_the_other_transport_before_the_next_priority() -> (
    None
):
    setup = Setup({1: TenantRoutes(routes=(route(10), route(11), route(20, priority=2)))})
    setup.open("memory://10").responder = down
    outcomes = await setup.router.send(batch(6))
    assert all(isinstance(o, Sent) for o in outcomes)
    assert sorted(setup.sent_by(11)) == [1, 2, 3, 4, 5, 6]
    assert setup.sent_by(20) == []


@pytest.mark.parametrize(
    "answer",
    [
        Transient("421 4.7.0 slow down", throttled=True),
        Transient("timed out after the message was sent", may_have_arrived=True),
        Permanent("550 5.1.1 no such user", hard_bounce=True),
    ],
)
async def test_what_must_not_fail_over_is_answered_as_it_came(answer: Transient) -> None:
    setup = Setup({1: TenantRoutes(routes=(route(10), route(20, priority=2)))})
    setup.open("memory://10").responder = lambda _: answer
    outcomes = await setup.router.send(batch(2))
    assert outcomes == [answer, answer]
    assert setup.sent_by(20) == []
    assert not can_fail_over(answer)


async def test_when_every_transport_fails_the_last_refusal_is_the_outcome() -> None:
    setup = Setup({1: TenantRoutes(routes=(route(10), route(20, priority=2)))})
    setup.open("memory://10").responder = down
    setup.open("memory://20").responder = lambda _: Transient("451 4.3.0 try later")
    outcomes = await setup.router.send(batch(2))
    assert outcomes == [Transient("451 4.3.0 try later")] * 2
    assert len(setup.opened["memory://10"].attempts) == 2  # each message tried each once
    assert len(setup.opened["memory://20"].attempts) == 2


async def test_weights_share_a_priority_exactly_over_time() -> None:
    setup = Setup({1: TenantRoutes(routes=(route(10, weight=3), route(11, weight=1)))})
    for start in range(1, 81, 10):
        await setup.router.send(batch(10, start=start))
    assert len(setup.sent_by(10)) == 60
    assert len(setup.sent_by(11)) == 20


async def test_a_transport_that_keeps_failing_is_left_out_then_probed_and_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(routing, "PROBE_BASE_SECONDS", 0.2)
    setup = Setup({1: TenantRoutes(routes=(route(10), route(20, priority=2)))})
    first = setup.open("memory://10")
    first.responder = down
    for call in range(UNHEALTHY_AFTER):
        await setup.router.send(batch(1, start=call + 1))
    assert setup.directory.events == [("failure", 10)] * UNHEALTHY_AFTER
    calls = len(first.attempts)
    await setup.router.send(batch(3, start=10))  # unhealthy: not even tried
    assert len(first.attempts) == calls
    assert setup.sent_by(20)[-3:] == [10, 11, 12]
    first.responder = None  # it is back
    await asyncio.sleep(0.25)  # past the probe's back-off
    await setup.router.send(batch(1, start=20))  # the probe
    assert setup.sent_by(10) == [20]
    assert setup.directory.events[-1] == ("success", 10)
    await setup.router.send(batch(2, start=30))
    assert setup.sent_by(10)[-2:] == [30, 31]


async def test_with_every_transport_unhealthy_messages_wait_for_the_probe() -> None:
    setup = Setup({1: TenantRoutes(routes=(route(10),))})
    setup.open("memory://10").responder = down
    for call in range(UNHEALTHY_AFTER):
        await setup.router.send(batch(1, start=call + 1))
    (outcome,) = await setup.router.send(batch(1, start=9))
    assert isinstance(outcome, Transient) and "unhealthy" in outcome.reason
    assert outcome.retry_after is not None and outcome.retry_after > 0
    assert setup.default.sent == []  # never the default


async def test_a_mixed_answer_is_not_a_transport_failure() -> None:
    setup = Setup({1: TenantRoutes(routes=(route(10), route(20, priority=2)))})
    first = setup.open("memory://10")
    first.script("u1@example.com", Transient("450 4.2.1 mailbox busy"))
    outcomes = await setup.router.send(batch(3))
    assert all(isinstance(o, Sent) for o in outcomes)
    assert setup.sent_by(20) == [1]  # that one message went on to the next priority
    assert setup.directory.events == []


async def test_the_list_is_read_again_after_its_ttl_and_a_removed_transport_is_closed() -> None:
    setup = Setup({1: TenantRoutes(routes=(route(10),))}, ttl=0.05)
    await setup.router.send(batch(1))
    await setup.router.send(batch(1, start=2))
    assert setup.directory.loads == 1  # cached
    setup.directory.tenants[1] = TenantRoutes(routes=(route(11),))
    await asyncio.sleep(0.06)
    await setup.router.send(batch(1, start=3))  # sent as known, read again beside it
    assert setup.sent_by(10) == [1, 2, 3]
    await asyncio.sleep(0.01)
    assert setup.directory.loads == 2
    await setup.router.send(batch(1, start=4))
    assert setup.sent_by(11) == [4]
    assert setup.opened["memory://10"].closed
    setup.directory.tenants.pop(1)  # none left: the default again
    await asyncio.sleep(0.06)
    await setup.router.send(batch(1, start=5))
    await asyncio.sleep(0.01)
    await setup.router.send(batch(1, start=6))
    assert [m.message_id for m in setup.default.sent] == [6]
    assert setup.opened["memory://11"].closed
    await setup.router.close()


async def test_a_bounce_domain_makes_the_envelope_sender_a_verp_address() -> None:
    setup = Setup({1: TenantRoutes(bounce_domain="bounces.acme.test"), 2: TenantRoutes()})
    await setup.router.send([*batch(1, start=7), *batch(1, tenant_id=2, start=8)])
    verp, plain = setup.default.sent
    assert verp.return_path is not None
    assert verp.return_path.startswith("bounces+m7.")
    assert verp.return_path.endswith("@bounces.acme.test")
    assert message_id_from_verp(SECRET, verp.return_path) == 7
    assert plain.return_path is None


async def test_send_at_routes_and_fails_over_like_send() -> None:
    setup = Setup({1: TenantRoutes(routes=(route(10), route(20, priority=2)))})
    setup.open("memory://10").responder = down
    now = time.monotonic()
    outcomes = await setup.router.send_at(batch(2), at=now, by=now + 5)
    assert all(isinstance(o, Sent) for o in outcomes)
    assert setup.sent_by(20) == [1, 2]


async def test_a_due_probe_gets_a_message_even_when_the_weights_would_pick_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(routing, "PROBE_BASE_SECONDS", 0.05)
    setup = Setup({1: TenantRoutes(routes=(route(10), route(11, weight=100)))})
    setup.open("memory://10").responder = down
    for call in range(UNHEALTHY_AFTER):  # 101 messages: the weights give route 10 one a call
        await setup.router.send(batch(101, start=1000 * (call + 1)))
    assert setup.directory.events == [("failure", 10)] * UNHEALTHY_AFTER
    setup.opened["memory://10"].responder = None
    await asyncio.sleep(0.1)
    await setup.router.send(batch(1, start=50))
    assert setup.sent_by(10) == [50]
    assert setup.directory.events[-1] == ("success", 10)
