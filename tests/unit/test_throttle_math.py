"""The admission engine's arithmetic: slot spacing, sliding counts, holes, and what a claim does
with a tenant it cannot serve within the horizon. ``test_throttle_property`` checks the promise
itself on simulated workers."""

from __future__ import annotations

import itertools
import math

import pytest

from tidings.delivery.throttle import (
    HORIZON,
    JITTER,
    LEAD_HALF_LIFE,
    MAX_BLOCK_SECONDS,
    REFILL,
    SLOT_LEAD,
    TRANSPORT_SPREAD,
    Hold,
    Requeue,
    SlidingCount,
    Slot,
    Spacing,
    admit_tenant,
    schedule,
    window_for,
)

NOW = 1_800_000_000.0  # epoch seconds: slot arithmetic must hold at today's magnitudes


def slots(placements: list[Slot | Hold]) -> list[float]:
    return [p.at for p in placements if isinstance(p, Slot)]


def test_a_per_second_limit_spaces_slots_by_the_window_plus_jitter_over_the_limit() -> None:
    window = Spacing(5, 1.0)
    placed = slots(schedule([[window]] * 20, start=NOW, horizon=NOW + 10))
    gaps = [b - a for a, b in itertools.pairwise(placed)]
    assert gaps == pytest.approx([(1.0 + JITTER) / 5] * 19, abs=1e-6)
    # N + 1 slots span W + J: arrivals spread by at most J never put N + 1 into one second.
    assert placed[5] - placed[0] == pytest.approx(1.0 + JITTER)


def test_each_slot_may_start_late_by_the_jitter_left_after_the_transport() -> None:
    (placement,) = schedule([[Spacing(5, 1.0)]], start=NOW, horizon=NOW + 1)
    assert isinstance(placement, Slot)
    assert placement.latest - placement.at == pytest.approx(JITTER - TRANSPORT_SPREAD, abs=1e-6)
    (daily,) = schedule([[SlidingCount(500, 86400.0)]], start=NOW, horizon=NOW + 1)
    assert isinstance(daily, Slot) and daily.latest - daily.at == pytest.approx(
        86.4 - TRANSPORT_SPREAD
    )


def test_a_day_limit_lets_fifty_reminders_go_at_once_and_not_one_more_than_the_limit() -> None:
    window = SlidingCount(500, 86400.0)
    placed = schedule([[window]] * 550, start=NOW, horizon=NOW + 0.5)
    assert slots(placed) == [NOW] * 500
    held = placed[500:]
    assert all(isinstance(h, Hold) for h in held)
    # Room again once the bucket of those 500 has left the window (and its jitter).
    assert isinstance(held[0], Hold)
    assert NOW + 86400 < held[0].until <= NOW + 86400 + 86.4 + 864 + 1e-6


def test_a_sliding_window_admits_again_as_its_oldest_bucket_expires() -> None:
    window = SlidingCount(3, 60.0)
    for at in (NOW, NOW + 10, NOW + 20):
        window.take(at)
    free = window.earliest(NOW + 30)
    bucket_end = (math.floor(NOW / 0.6) + 1) * 0.6
    assert free == pytest.approx(bucket_end + 60 + 0.06)
    reloaded = SlidingCount.load(3, 60.0, window.state(), now=NOW + 30)
    assert reloaded.earliest(NOW + 30) == free


def test_buckets_stored_with_another_width_never_expire_sooner() -> None:
    """A stored bucket says its sends happened before its end, no more: read with another
    width, they must stay counted at least until that end leaves the window."""
    for width in (0.6, 7.0, 0.25):
        first = math.floor((NOW + 0.3) / width)
        stored = {"width": width, "first": first, "counts": [2]}
        window = SlidingCount.load(2, 60.0, stored, now=NOW)
        assert window.earliest(NOW) >= (first + 1) * width + 60.0 + 0.06 - 1e-6, width


def test_a_changed_per_second_limit_drops_holes_cut_for_the_old_spacing() -> None:
    window = Spacing(10, 1.0, now=NOW)
    window.take(NOW + 0.45)  # skips the grid from NOW on: holes at NOW, NOW + 0.102 ...
    assert window.holes
    same = Spacing.load(10, 1.0, window.state(), now=NOW)
    assert same.holes == window.holes
    slower = Spacing.load(3, 1.0, window.state(), now=NOW)
    assert slower.holes == [] and slower.tat == window.tat


def slow_domain_opening_soon() -> SlidingCount:
    """A domain allowed 1 a minute that used it 60.3 s ago: open again in 60 ms (its jitter),
    the bucket of that send ending exactly a minute ago."""
    domain = SlidingCount(1, 60.0)
    domain.take(NOW - 60.3)
    assert domain.earliest(NOW) == pytest.approx(NOW + 0.06)
    return domain


def test_mail_to_an_open_domain_takes_the_slots_a_closed_domain_left() -> None:
    tenant = Spacing(50, 1.0, now=NOW)
    spacing = tenant.spacing  # 20.4 ms
    slow_domain = slow_domain_opening_soon()
    # The first claim only has mail for the slow domain: it waits for the domain, past two
    # grid slots of the tenant's, which stay free.
    (first,) = schedule([[tenant, slow_domain]], start=NOW, horizon=NOW + HORIZON)
    assert isinstance(first, Slot) and first.at == pytest.approx(NOW + 0.06)
    assert [hole for hole, _ in tenant.holes] == pytest.approx([NOW, NOW + spacing])
    later = schedule([[tenant]] * 4, start=NOW, horizon=NOW + HORIZON)
    assert slots(later) == pytest.approx(
        [NOW, NOW + spacing, first.at + spacing, first.at + 2 * spacing]
    )
    taken = sorted([*slots(later), first.at])
    assert all(b - a >= spacing - 1e-6 for a, b in itertools.pairwise(taken))


def test_a_message_waiting_for_its_domain_does_not_take_tenant_slots_first() -> None:
    tenant = Spacing(50, 1.0, now=NOW)
    slow_domain = slow_domain_opening_soon()
    opens = slow_domain.earliest(NOW)
    # In priority order the slow-domain message comes first, yet the others go before it.
    placed = schedule(
        [[tenant, slow_domain], [tenant], [tenant], [tenant]], start=NOW, horizon=NOW + HORIZON
    )
    assert slots(placed) == pytest.approx(
        [NOW + 3 * tenant.spacing, NOW, NOW + tenant.spacing, NOW + 2 * tenant.spacing]
    )
    assert slots(placed)[0] >= opens


def test_a_tenant_closed_beyond_the_horizon_keeps_its_queue_order_and_is_blocked() -> None:
    tenant = [window_for(1, 1.0, None, now=NOW)]
    result = admit_tenant(tenant, [[], [], []], now=NOW)
    first, *rest = result.decisions
    assert isinstance(first, Slot) and first.at == NOW + SLOT_LEAD
    assert rest == [Requeue(None), Requeue(None)]
    next_slot = first.at + 1.0 + JITTER  # beyond the horizon
    assert result.blocked_until == pytest.approx(next_slot - REFILL)
    assert result.wake_at == result.blocked_until


def test_a_closed_domain_sends_its_mail_back_until_shortly_before_it_opens() -> None:
    domain = SlidingCount(1, 60.0)
    domain.take(NOW - 1)
    result = admit_tenant([], [[domain]], now=NOW)
    (decision,) = result.decisions
    assert result.blocked_until is None
    assert isinstance(decision, Requeue) and decision.not_before is not None
    assert decision.not_before == pytest.approx(domain.earliest(NOW) - REFILL)


def test_a_tenant_closed_for_a_day_is_looked_at_again_within_seconds() -> None:
    day = SlidingCount(1, 86400.0)
    day.take(NOW - 60)
    result = admit_tenant([day], [[]], now=NOW)
    assert result.blocked_until == NOW + MAX_BLOCK_SECONDS
    assert result.decisions == [Requeue(None)]


def test_a_slot_given_back_is_free_again_unless_its_bucket_is_no_longer_known() -> None:
    window = SlidingCount(2, 60.0)
    window.take(NOW)
    window.take(NOW)
    assert window.earliest(NOW) > NOW + 60
    window.give_back(NOW)
    assert window.earliest(NOW) == NOW
    window.give_back(NOW + 30)  # never taken: nothing to give
    assert window.state()["counts"] == [1]
    # Stored with another width, a bucket was moved to where its sends surely ended: which of
    # them held the slot is lost, so nothing may be taken out.
    moved = SlidingCount.load(
        2, 60.0, {"width": 0.25, "first": NOW // 0.25, "counts": [2]}, now=NOW
    )
    moved.give_back(NOW)
    assert moved.earliest(NOW) > NOW + 60


def test_a_per_second_slot_given_back_while_ahead_becomes_a_hole() -> None:
    window = Spacing(10, 1.0, now=NOW)
    window.take(NOW)
    window.take(NOW + 0.102)
    window.give_back(NOW + 0.102)
    assert window.earliest(NOW + 0.05) == pytest.approx(NOW + 0.102)
    passed = Spacing(10, 1.0, now=NOW + 1)
    passed.give_back(NOW)  # a slot already behind the clock is of no use to anyone
    assert passed.holes == []


def test_envelopes_keep_the_spacing_when_the_lead_rises_and_the_rise_is_paid_once() -> None:
    window = Spacing(10, 1.0, now=NOW)
    step = window.spacing
    placed = schedule([[window]] * 3, start=NOW, horizon=NOW + 1, lead=0.010)
    raised = schedule([[window]] * 3, start=NOW, horizon=NOW + 1, lead=0.050)
    moments = [(p.at, p.lead) for p in placed + raised if isinstance(p, Slot)]
    slots_ = [at for at, _ in moments]
    envelopes = [at - lead for at, lead in moments]
    assert all(b - a >= step - 1e-6 for a, b in itertools.pairwise(slots_))
    assert all(b - a >= step - 1e-6 for a, b in itertools.pairwise(envelopes))
    # The first slot after the rise moved by the rise (40 ms); the next ones keep the grid.
    assert slots_[3] - slots_[2] == pytest.approx(step + 0.040)
    assert slots_[4] - slots_[3] == pytest.approx(step)


def test_a_tenants_messages_use_the_longest_lead_asked_for_lately_and_it_decays() -> None:
    window = Spacing(10, 1.0, now=NOW)
    far = admit_tenant([window], [[]], now=NOW, lead=0.0824)
    (slot,) = far.decisions
    # Whole milliseconds, and reckoned for the envelope: written SLOT_LEAD after the claim.
    assert isinstance(slot, Slot) and slot.lead == pytest.approx(0.083)
    assert slot.at - slot.lead == pytest.approx(NOW + SLOT_LEAD)
    stored = window.state()
    near = admit_tenant([Spacing.load(10, 1.0, stored, now=NOW)], [[]], now=NOW, lead=0.010)
    assert isinstance(near.decisions[0], Slot) and near.decisions[0].lead == pytest.approx(0.083)
    later = Spacing.load(10, 1.0, stored, now=NOW + LEAD_HALF_LIFE)
    assert later.lead_floor() == pytest.approx(0.083 / 2)


def test_a_hole_is_taken_only_with_the_lead_it_was_cut_with() -> None:
    window = Spacing(10, 1.0, now=NOW)
    window.take(NOW, 0.010)
    window.take(NOW + 0.3, 0.010)  # holes at NOW + 0.102 and NOW + 0.204, envelopes 10 ms ahead
    assert window.earliest(NOW, 0.010) == pytest.approx(NOW + window.spacing)
    assert window.earliest(NOW, 0.050) > NOW + 0.3  # a longer lead would crowd the envelopes


def test_state_stored_before_envelopes_were_counted_is_read_on_the_safe_side() -> None:
    spaced = Spacing.load(10, 1.0, {"tat": NOW, "spacing": 0.102, "holes": [NOW + 0.5]}, now=NOW)
    assert spaced.holes == [] and spaced.earliest(NOW, 0.030) == pytest.approx(NOW + 0.030)
    counted = SlidingCount.load(
        2, 60.0, {"width": 0.6, "first": int(NOW // 0.6), "counts": [2]}, now=NOW
    )
    assert counted.earliest(NOW, 0.030) > NOW + 60
