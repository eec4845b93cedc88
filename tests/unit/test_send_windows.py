"""Sending windows: parsing with named fields, and openings across daylight-saving changes.

The property tests compare ``next_opening`` with an oracle written from the definition alone (the
local wall clock, held still while it is turned back, minute by minute), not from the module's way
of computing boundaries (``fold`` and a search for the jump).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tidings.errors import InvalidInput
from tidings.scheduling.windows import (
    CONTACT,
    DAY_NAMES,
    SendWindow,
    is_open,
    next_opening,
    openings,
    parse_send_window,
    parse_send_window_text,
    resolve_timezone,
    window_from_json,
)

BERLIN = "Europe/Berlin"
LORD_HOWE = "Australia/Lord_Howe"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def window(start: str, end: str, days: list[str] | None = None, tz: str = BERLIN) -> SendWindow:
    parsed = parse_send_window({"start": start, "end": end, "days": days, "timezone": tz})
    assert parsed is not None
    return parsed


# -- parsing ----------------------------------------------------------------------------------


def test_a_window_reads_back_as_it_was_given() -> None:
    given_ = {"start": "09:00", "end": "17:30", "days": ["mon", "fri"], "timezone": "contact"}
    parsed = parse_send_window(given_)
    assert parsed == SendWindow(540, 1050, frozenset({0, 4}), CONTACT)
    assert parsed.to_json() == given_
    assert window_from_json(parsed.to_json()) == parsed


def test_days_default_to_every_day_and_the_zone_to_the_contacts() -> None:
    parsed = parse_send_window({"start": "08:00", "end": "24:00"})
    assert parsed is not None
    assert parsed.days == frozenset(range(7)) and parsed.timezone == CONTACT
    assert not parsed.overnight


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"end": "17:00"}, "send_window.start"),
        ({"start": "9am", "end": "17:00"}, "send_window.start"),
        ({"start": "24:00", "end": "17:00"}, "send_window.start"),
        ({"start": "09:00", "end": "17:60"}, "send_window.end"),
        ({"start": "09:00", "end": "09:00"}, "send_window.end"),
        ({"start": "09:00", "end": 17}, "send_window.end"),
        ({"start": "09:00", "end": "17:00", "days": []}, "send_window.days"),
        ({"start": "09:00", "end": "17:00", "days": ["monday"]}, "send_window.days"),
        ({"start": "09:00", "end": "17:00", "days": "mon"}, "send_window.days"),
        ({"start": "09:00", "end": "17:00", "timezone": "Mars/Olympus"}, "send_window.timezone"),
        (
            {"start": "09:00", "end": "17:00", "timezone": "../../etc/passwd"},
            "send_window.timezone",
        ),
        ({"start": "09:00", "end": "17:00", "zone": "UTC"}, "send_window.zone"),
    ],
)
def test_each_mistake_names_its_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_send_window(body)
    assert caught.value.field == field


def test_a_window_that_is_not_an_object_names_the_whole_field() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_send_window("09:00-17:00")
    assert caught.value.field == "send_window"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("09:00-17:00 mon-fri contact", SendWindow(540, 1020, frozenset(range(5)), CONTACT)),
        (
            "22:00-06:00 fri-mon Europe/Berlin",
            SendWindow(1320, 360, frozenset({4, 5, 6, 0}), BERLIN),
        ),
        ("08:30-12:00 sat,sun", SendWindow(510, 720, frozenset({5, 6}), CONTACT)),
        ("00:00-24:00 UTC", SendWindow(0, 1440, frozenset(range(7)), "UTC")),
        (
            '{"start": "09:00", "end": "10:00", "days": ["tue"]}',
            SendWindow(540, 600, frozenset({1}), CONTACT),
        ),
    ],
)
def test_the_command_line_form(text: str, expected: SendWindow) -> None:
    assert parse_send_window_text(text) == expected


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("9 to 5", "send_window"),
        ("09:00-17:00 mon-fri mon", "send_window.days"),
        ("09:00-17:00 mon-fri Nowhere/City", "send_window.timezone"),
        ("09:00-25:00", "send_window.end"),
        ("{not json", "send_window"),
    ],
)
def test_the_command_line_form_names_what_is_wrong(text: str, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_send_window_text(text)
    assert caught.value.field == field


def test_contact_reads_the_contacts_zone_then_the_tenants_then_utc() -> None:
    contact_window = window("09:00", "17:00", tz=CONTACT)
    assert (
        resolve_timezone(contact_window, contact_timezone="Asia/Tokyo", tenant_timezone=BERLIN)
        == "Asia/Tokyo"
    )
    assert resolve_timezone(contact_window, contact_timezone=None, tenant_timezone=BERLIN) == BERLIN
    assert (
        resolve_timezone(contact_window, contact_timezone="Gone/Zone", tenant_timezone=None)
        == "UTC"
    )
    fixed = window("09:00", "17:00", tz="Asia/Tokyo")
    assert resolve_timezone(fixed, contact_timezone=BERLIN, tenant_timezone=BERLIN) == "Asia/Tokyo"


# -- openings ---------------------------------------------------------------------------------


def test_inside_the_window_the_opening_is_now() -> None:
    office = window("09:00", "17:00", ["mon", "tue", "wed", "thu", "fri"])
    wednesday_noon = utc(2025, 6, 11, 10)  # 12:00 in Berlin (summer time)
    assert next_opening(office, BERLIN, wednesday_noon) == wednesday_noon
    assert is_open(office, BERLIN, wednesday_noon)


def test_friday_evening_waits_for_monday_morning_in_local_time() -> None:
    office = window("09:00", "17:00", ["mon", "tue", "wed", "thu", "fri"])
    friday_evening = utc(2025, 6, 13, 22)  # 18:00 in New York, midnight in Berlin
    assert next_opening(office, BERLIN, friday_evening) == utc(2025, 6, 16, 7)
    # The same window read in New York opens six hours later.
    assert next_opening(office, "America/New_York", friday_evening) == utc(2025, 6, 16, 13)


def test_an_overnight_window_belongs_to_the_day_it_opens() -> None:
    night = window("22:00", "06:00", ["fri"], tz="UTC")
    assert is_open(night, "UTC", utc(2025, 6, 14, 5, 59))  # Saturday morning: Friday's window
    assert not is_open(night, "UTC", utc(2025, 6, 14, 6))
    assert not is_open(night, "UTC", utc(2025, 6, 14, 23))  # Saturday night: not a window day
    assert next_opening(night, "UTC", utc(2025, 6, 14, 6)) == utc(2025, 6, 20, 22)


def test_a_weekday_window_across_both_of_europes_switches_keeps_local_hours() -> None:
    office = window("09:00", "17:00", ["mon", "tue", "wed", "thu", "fri"])
    # Spring: Friday 28 March is winter time (UTC+1), Monday 31 March summer time (UTC+2).
    assert next_opening(office, BERLIN, utc(2025, 3, 28, 17)) == utc(2025, 3, 31, 7)
    assert next_opening(office, BERLIN, utc(2025, 3, 27, 17)) == utc(2025, 3, 28, 8)
    # Autumn: Friday 24 October summer time, Monday 27 October winter time.
    assert next_opening(office, BERLIN, utc(2025, 10, 24, 16)) == utc(2025, 10, 27, 8)
    assert next_opening(office, BERLIN, utc(2025, 10, 23, 16)) == utc(2025, 10, 24, 7)


def test_a_start_in_the_skipped_spring_hour_opens_at_the_jump() -> None:
    # 30 March 2025: Berlin's clocks go from 02:00 to 03:00 at 01:00 UTC; 02:30 never happens.
    early = window("02:30", "04:00", ["sun"])
    assert next_opening(early, BERLIN, utc(2025, 3, 29, 12)) == utc(2025, 3, 30, 1)  # 03:00 CEST
    assert is_open(early, BERLIN, utc(2025, 3, 30, 1, 59))  # 03:59
    assert not is_open(early, BERLIN, utc(2025, 3, 30, 2))  # 04:00
    # The next Sunday it opens at 02:30 summer time again.
    assert next_opening(early, BERLIN, utc(2025, 3, 30, 2)) == utc(2025, 4, 6, 0, 30)


def test_a_window_wholly_inside_the_skipped_hour_does_not_open_that_day() -> None:
    lost = window("02:10", "02:50", ["sun"])
    assert next_opening(lost, BERLIN, utc(2025, 3, 29, 12)) == utc(2025, 4, 6, 0, 10)


def test_the_repeated_autumn_hour_opens_once_at_the_first_reading() -> None:
    # 26 October 2025: at 01:00 UTC Berlin's clocks go back from 03:00 to 02:00; 02:30 happens
    # at 00:30 UTC (summer time) and again at 01:30 UTC (winter time).
    short = window("02:30", "02:45", ["sun"])
    assert next_opening(short, BERLIN, utc(2025, 10, 25, 12)) == utc(2025, 10, 26, 0, 30)
    assert not is_open(short, BERLIN, utc(2025, 10, 26, 1, 30))  # the second 02:30: no reopening
    assert next_opening(short, BERLIN, utc(2025, 10, 26, 0, 45)) == utc(2025, 11, 2, 1, 30)
    # A window over the repeat is one interval, from the first 02:30 to 04:00 winter time.
    longer = window("02:30", "04:00", ["sun"])
    first = next(openings(longer, BERLIN, utc(2025, 10, 25, 12)))
    assert first == (utc(2025, 10, 26, 0, 30), utc(2025, 10, 26, 3))
    assert is_open(longer, BERLIN, utc(2025, 10, 26, 1, 15))  # 02:15 the second time round


def test_lord_howe_half_hour_shift_in_both_directions() -> None:
    # 5 October 2025 (spring): 02:00 LHST (+10:30) jumps to 02:30 LHDT (+11) at 15:30 UTC the day before.
    inside_gap = window("02:00", "02:30", ["sun"], tz=LORD_HOWE)
    assert next_opening(inside_gap, LORD_HOWE, utc(2025, 10, 4, 12)) == utc(2025, 10, 11, 15)
    over_gap = window("02:15", "03:00", ["sun"], tz=LORD_HOWE)
    assert next(openings(over_gap, LORD_HOWE, utc(2025, 10, 4, 12))) == (
        utc(2025, 10, 4, 15, 30),  # the jump, 02:30 LHDT
        utc(2025, 10, 4, 16),  # 03:00 LHDT
    )
    # 6 April 2025 (autumn): 02:00 LHDT goes back to 01:30 LHST at 15:00 UTC the day before;
    # 01:45 happens twice. The window opens at the first and closes at 03:00 LHST.
    repeat = window("01:45", "03:00", ["sun"], tz=LORD_HOWE)
    assert next(openings(repeat, LORD_HOWE, utc(2025, 4, 5, 12))) == (
        utc(2025, 4, 5, 14, 45),
        utc(2025, 4, 5, 16, 30),
    )
    assert is_open(repeat, LORD_HOWE, utc(2025, 4, 5, 15, 10))  # 01:40 the second time round


# -- the same rules, against an oracle, for any window and instant ------------------------------

ZONES = (
    BERLIN,
    LORD_HOWE,
    "America/New_York",
    "America/Santiago",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "UTC",
)
YEARS = (2020, 2031)


@cache
def transitions(name: str) -> tuple[datetime, ...]:
    """Instants at which the zone's offset changes, found by hourly steps and bisection."""
    tz = ZoneInfo(name)
    found: list[datetime] = []
    t = int(datetime(YEARS[0], 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(YEARS[1], 1, 1, tzinfo=UTC).timestamp())
    offset = datetime.fromtimestamp(t, tz).utcoffset()
    while t < end:
        nxt = t + 3600
        if datetime.fromtimestamp(nxt, tz).utcoffset() != offset:
            low, high = t, nxt
            while high - low > 1:
                mid = (low + high) // 2
                if datetime.fromtimestamp(mid, tz).utcoffset() == offset:
                    low = mid
                else:
                    high = mid
            found.append(datetime.fromtimestamp(high, UTC))
            offset = datetime.fromtimestamp(nxt, tz).utcoffset()
        t = nxt
    return tuple(found)


class Oracle:
    """Inside or not, minute by minute, from the definition: the wall clock's running maximum
    (held still while the clock is turned back) reads a time in [start, end) of an opening day."""

    def __init__(self, w: SendWindow, name: str, at: datetime) -> None:
        self.w, self.tz = w, ZoneInfo(name)
        self.t = int(at.timestamp()) - 3 * 3600  # longer than any turn-back of the clock
        self.held = datetime.min
        while self.t < at.timestamp():
            self._step()

    def _step(self) -> None:
        wall = datetime.fromtimestamp(self.t, self.tz).replace(tzinfo=None)
        self.held = max(self.held, wall)
        self.t += 60

    def next_minute(self) -> tuple[datetime, bool]:
        """The next minute's instant and whether it is inside."""
        instant = datetime.fromtimestamp(self.t, UTC)
        self._step()
        w, held = self.w, self.held
        minute, weekday = held.hour * 60 + held.minute, held.weekday()
        if not w.overnight:
            return instant, weekday in w.days and w.start <= minute < w.end
        opened_today = weekday in w.days and minute >= w.start
        opened_yesterday = (weekday - 1) % 7 in w.days and minute < w.end
        return instant, opened_today or opened_yesterday


clock_minutes = st.integers(0, 1439)


@st.composite
def windows_and_instants(draw: st.DrawFn) -> tuple[SendWindow, str, datetime]:
    """Any window and instant; half of them near a change of offset, with boundaries drawn
    around the changed hour of that day, which is where the rules differ from plain clock time."""
    name = draw(st.sampled_from(ZONES))
    near = transitions(name)
    days = draw(st.frozensets(st.integers(0, 6), min_size=1))
    if near and draw(st.booleans()):
        change = draw(st.sampled_from(near))
        before = (change - timedelta(seconds=1)).astimezone(ZoneInfo(name))
        edge = before.hour * 60 + before.minute + 1  # where the clock jumps from
        start = (edge + draw(st.integers(-90, 90))) % 1440
        end = draw(st.sampled_from([(edge + draw(st.integers(-90, 90))) % 1440 or 1440, 1440]))
        days |= {before.weekday()} if draw(st.booleans()) else set()
        at = change - timedelta(days=2) + timedelta(minutes=draw(st.integers(0, 3 * 1440)))
    else:
        start = draw(clock_minutes)
        end = draw(st.integers(1, 1440))
        base = datetime(YEARS[0], 1, 7, tzinfo=UTC)
        at = base + timedelta(minutes=draw(st.integers(0, (YEARS[1] - YEARS[0] - 1) * 525_600)))
    assume(start != end)
    return SendWindow(start, end, frozenset(days), name), name, at


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(windows_and_instants())
def test_next_opening_is_inside_the_window_and_skips_no_open_minute(
    case: tuple[SendWindow, str, datetime],
) -> None:
    w, name, at = case
    opening = next_opening(w, name, at)
    assert opening >= at
    oracle = Oracle(w, name, at)
    while True:
        instant, inside = oracle.next_minute()
        if instant == opening:
            assert inside, f"{opening} is not inside {w.describe()}"
            break
        assert not inside, f"{instant} is inside {w.describe()} but the opening given is {opening}"
    assert is_open(w, name, opening)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(windows_and_instants())
def test_successive_intervals_cover_exactly_the_open_minutes(
    case: tuple[SendWindow, str, datetime],
) -> None:
    w, name, at = case
    intervals = openings(w, name, at)
    current = next(intervals)
    oracle = Oracle(w, name, at)
    for _ in range(2 * 1440):  # two days, minute by minute
        instant, inside = oracle.next_minute()
        while current[1] <= instant:
            nxt = next(intervals)
            assert nxt[0] >= current[1], "intervals overlap or go back"
            current = nxt
        assert (current[0] <= instant) == inside, f"{instant}: {w.describe()} in {name}"


def test_every_day_name_is_accepted_in_either_case() -> None:
    parsed = parse_send_window(
        {"start": "09:00", "end": "10:00", "days": [d.upper() for d in DAY_NAMES]}
    )
    assert parsed is not None and parsed.days == frozenset(range(7))
