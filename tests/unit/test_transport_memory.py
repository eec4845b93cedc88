"""The in-memory transport the worker's unit tests rely on: it records and answers as scripted."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from tidings.domain.message import Outcome, OutgoingMessage, Permanent, Sent, Transient
from tidings.transports.memory import MemoryTransport

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


async def test_everything_is_sent_and_recorded_by_default() -> None:
    transport = MemoryTransport()
    batch = [replace(MSG, message_id=i, to_address=f"u{i}@example.com") for i in range(3)]
    outcomes = await transport.send(batch)
    assert [type(o) for o in outcomes] == [Sent] * 3
    assert len({o.provider_id for o in outcomes if isinstance(o, Sent)}) == 3
    assert transport.sent == batch
    assert transport.batches == [3]
    assert all(a.raw and a.raw.startswith(b"From: Acme") for a in transport.attempts)


async def test_scripted_outcomes_apply_in_order_to_that_address_then_default() -> None:
    transport = MemoryTransport()
    transport.script("AMY@example.com", Transient("451 later"), Permanent("550 no"))
    answers = [(await transport.send([MSG]))[0] for _ in range(3)]
    assert answers[:2] == [Transient("451 later"), Permanent("550 no")]
    assert isinstance(answers[2], Sent)
    assert len(transport.attempts_to("amy@example.com")) == 3
    (other,) = await transport.send([replace(MSG, to_address="bob@example.com")])
    assert isinstance(other, Sent)


async def test_a_responder_decides_when_nothing_is_scripted() -> None:
    def responder(message: OutgoingMessage) -> Outcome | None:
        return Transient("throttled", throttled=True) if message.tenant_id == 2 else None

    transport = MemoryTransport(responder=responder)
    outcomes = await transport.send([MSG, replace(MSG, tenant_id=2)])
    assert isinstance(outcomes[0], Sent)
    assert outcomes[1] == Transient("throttled", throttled=True)


async def test_an_unserialisable_message_is_permanent_like_on_a_real_transport() -> None:
    transport = MemoryTransport()
    (outcome,) = await transport.send([replace(MSG, subject="a\nb")])
    assert isinstance(outcome, Permanent) and "line break" in outcome.reason
    assert transport.sent == []


async def test_delay_makes_a_send_take_time_and_close_stops_it() -> None:
    transport = MemoryTransport(delay=0.05)
    started = time.monotonic()
    await transport.send([MSG])
    assert time.monotonic() - started >= 0.05
    await transport.close()
    with pytest.raises(RuntimeError):
        await transport.send([MSG])
