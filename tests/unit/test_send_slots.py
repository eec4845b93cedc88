"""Sending at slots: never before a slot, unthrottled mail at once, and nothing started too late."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from tidings.delivery.slots import SEND_TICK, send_in_slots
from tidings.queue.claimed import ClaimedMessage, ClockReading
from tidings.transports.base import send_on_time

DB_NOW = 1_800_000_000.0


def message(
    number: int, send_at: float | None = None, late: float = 0.012, lead: float = 0.0
) -> ClaimedMessage:
    return ClaimedMessage(
        id=number,
        tenant_id=1,
        campaign_id=None,
        contact_id=None,
        to_address=f"r{number}@example.com",
        template_id=None,
        subject="s",
        html=None,
        text="t",
        data=None,
        from_address=None,
        category=None,
        priority=5,
        attempts=0,
        expires_at=datetime(2030, 1, 1, tzinfo=UTC),
        idempotency_key=None,
        send_at=send_at,
        send_by=None if send_at is None else send_at + late,
        send_lead=lead,
    )


class Recorder:
    """A transport's two ways to send, noting when each message started (monotonic)."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}
        self.calls = 0
        self.leads: list[float] = []

    async def send(self, batch: Sequence[ClaimedMessage]) -> list[str]:
        self.calls += 1
        now = time.monotonic()
        for m in batch:
            self.started[m.id] = now
        return ["sent"] * len(batch)

    async def send_now(self, batch: list[tuple[ClaimedMessage, str]]) -> None:
        await self.send([m for m, _ in batch])

    async def send_at(
        self, batch: list[tuple[ClaimedMessage, str]], at: float, by: float, lead: float
    ) -> list[ClaimedMessage]:
        self.leads.append(lead)
        messages = [m for m, _ in batch]
        outcomes = await send_on_time(self, messages, at=at, by=by)  # type: ignore[arg-type]
        return [m for m, o in zip(messages, outcomes, strict=True) if o is None]


async def test_each_message_starts_at_its_slot_never_before_and_unthrottled_mail_at_once() -> None:
    clock = ClockReading(db=DB_NOW, before=time.monotonic(), after=time.monotonic())
    batch = [
        message(1, DB_NOW + 0.05),
        message(2, DB_NOW + 0.1),
        message(3),
        message(4, DB_NOW + 0.1),
    ]
    recorder = Recorder()
    missed = await send_in_slots(
        [(m, "x") for m in batch], clock, recorder.send_now, recorder.send_at
    )
    assert missed == []
    assert recorder.started[3] - clock.after < 0.02
    for m in batch:
        if m.send_at is not None:
            slot = clock.local_time(m.send_at)
            assert slot <= recorder.started[m.id] < slot + SEND_TICK + 0.02, m.id
    assert recorder.started[2] == recorder.started[4]  # one slot, one transport call
    assert recorder.calls == 3


async def test_each_group_is_handed_over_its_claimed_lead_ahead_and_told_that_lead() -> None:
    """The claim spaced envelopes by the lead it gave each message: the transport must write
    them that far ahead, not by a lead of its own."""
    clock = ClockReading(db=DB_NOW, before=time.monotonic(), after=time.monotonic())
    handed: dict[float, float] = {}
    recorder = Recorder()

    async def send_at(
        batch: list[tuple[ClaimedMessage, str]], at: float, by: float, lead: float
    ) -> list[ClaimedMessage]:
        handed[lead] = at - time.monotonic()
        return await recorder.send_at(batch, at, by, lead)

    batch = [message(1, DB_NOW + 0.2, lead=0.010), message(2, DB_NOW + 0.2, lead=0.150)]
    missed = await send_in_slots([(m, "x") for m in batch], clock, recorder.send_now, send_at)
    assert missed == [] and sorted(recorder.leads) == [0.010, 0.150]
    assert handed[0.150] > 0.150 > handed[0.010] > 0.010


async def test_a_message_that_cannot_start_by_its_send_by_is_handed_back_unsent() -> None:
    # The claim's clock reading is a second old: these slots passed long ago.
    clock = ClockReading(db=DB_NOW, before=time.monotonic() - 1.0, after=time.monotonic() - 1.0)
    batch = [message(1, DB_NOW + 0.05), message(2, DB_NOW + 0.9, late=0.5), message(3)]
    recorder = Recorder()
    missed = await send_in_slots(
        [(m, "x") for m in batch], clock, recorder.send_now, recorder.send_at
    )
    assert [m.id for m in missed] == [1]
    assert set(recorder.started) == {2, 3}


async def test_a_failed_send_surfaces_only_after_every_other_send_finished() -> None:
    clock = ClockReading(db=DB_NOW, before=time.monotonic(), after=time.monotonic())
    finished: list[int] = []

    async def send_now(batch: list[tuple[ClaimedMessage, str]]) -> None:
        raise RuntimeError("transport bug")

    async def send_at(
        batch: list[tuple[ClaimedMessage, str]], at: float, by: float, lead: float
    ) -> list[ClaimedMessage]:
        await asyncio.sleep(0.05)
        finished.extend(m.id for m, _ in batch)
        return []

    with pytest.raises(RuntimeError):
        await send_in_slots(
            [(message(1), "x"), (message(2, DB_NOW + 0.05), "x")], clock, send_now, send_at
        )
    assert finished == [2]


async def test_a_slow_clock_reading_is_taken_out_of_the_lateness_allowed() -> None:
    """The database read its clock somewhere within a 20 ms round trip: a slot converted from it
    may already be 20 ms old when reached, more than the 12 ms a per-second window allows."""
    now = time.monotonic()
    slow = ClockReading(db=DB_NOW, before=now - 0.02, after=now)
    recorder = Recorder()
    missed = await send_in_slots(
        [(message(1, DB_NOW + 0.05), "x")], slow, recorder.send_now, recorder.send_at
    )
    assert [m.id for m in missed] == [1] and recorder.started == {}
    quick = ClockReading(db=DB_NOW, before=now - 0.0005, after=now)
    missed = await send_in_slots(
        [(message(2, DB_NOW + 0.05), "x")], quick, recorder.send_now, recorder.send_at
    )
    assert missed == [] and set(recorder.started) == {2}
