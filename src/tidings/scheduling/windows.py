"""Sending windows: the local hours and weekdays in which a message may start, read in one time zone.

A window is ``start``-``end`` local time ("HH:MM") on some ``days``, in an IANA time zone or in the
recipient's own (``"contact"``, resolved when the message is queued). The rules, chosen so that every
instant is unambiguously inside or outside:

* ``days`` are the days on which the window *opens*. ``end`` earlier than ``start`` closes it the next
  day: ``22:00``-``06:00`` on ``fri`` runs from Friday 22:00 to Saturday 06:00. ``end`` may be
  ``24:00`` (midnight at the end of the day); a whole day is ``00:00``-``24:00``. ``start`` equal to
  ``end`` is refused: it would mean either nothing or everything.
* Each boundary is **the first instant at which the local clock shows that time or later**. So when
  daylight saving skips an hour (Europe/Berlin's last Sunday of March, 02:00 → 03:00), a 02:30 start
  opens at the jump, 03:00 summer time; a window wholly inside the skipped hour does not open that
  day. When the clock is turned back (last Sunday of October, 03:00 → 02:00), 02:30 happens twice:
  the window opens at the first, and stays one continuous interval up to the first instant the clock
  shows its end — it neither closes nor opens again while the hour repeats. Australia/Lord_Howe's
  30-minute shift follows the same rule.

Equivalently: an instant is inside when the local wall clock *held still while it is turned back*
reads a time in ``[start, end)`` of a window-opening day. ``next_opening`` and ``is_open`` work on
the UTC intervals this gives (``openings``).
"""

from __future__ import annotations

import json
import re
import zoneinfo
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache, lru_cache
from typing import Any

from tidings.errors import InvalidInput

#: ``timezone`` of a window read in each recipient's own zone (then the tenant's, then UTC).
CONTACT = "contact"
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_DAYS = frozenset(range(7))
MINUTES_PER_DAY = 1440
FALLBACK_TIMEZONE = "UTC"  # when neither the contact nor the tenant names one

_CLOCK = re.compile(r"(\d{1,2}):(\d{2})")
_FIELDS = ("start", "end", "days", "timezone")


@dataclass(frozen=True, slots=True)
class SendWindow:
    start: int  # minutes after local midnight at which the window opens, 0-1439
    end: int  # minutes after local midnight at which it closes, 1-1440; below start: the next day
    days: frozenset[int]  # weekdays on which the window opens, 0 = Monday … 6 = Sunday
    timezone: str  # an IANA name, or CONTACT

    @property
    def overnight(self) -> bool:
        return self.end < self.start

    def to_json(self) -> dict[str, Any]:
        """The API's shape: ``{"start": "09:00", "end": "17:00", "days": [...], "timezone": ...}``."""
        return {
            "start": _clock(self.start),
            "end": _clock(self.end),
            "days": [DAY_NAMES[d] for d in sorted(self.days)],
            "timezone": self.timezone,
        }

    def in_zone(self, timezone: str) -> SendWindow:
        """The same hours read in ``timezone`` (a contact's, resolved)."""
        return SendWindow(self.start, self.end, self.days, timezone)

    def describe(self) -> str:
        """One line for people: ``09:00-17:00 mon, tue, wed, thu, fri (contact)``."""
        days = (
            "every day"
            if self.days == ALL_DAYS
            else ", ".join(DAY_NAMES[d] for d in sorted(self.days))
        )
        return f"{_clock(self.start)}-{_clock(self.end)} {days} ({self.timezone})"


# -- reading one --------------------------------------------------------------------------------


def parse_send_window(value: object, *, field: str = "send_window") -> SendWindow | None:
    """A window from its JSON shape; every mistake names its field (``send_window.start`` …).

    ``days`` left out is every day; ``timezone`` left out is ``"contact"``.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidInput(
            f"{field} must be an object with start, end, days and timezone", field=field
        )
    for key in value:
        if key not in _FIELDS:
            raise InvalidInput(f"{field}: unknown field {key!s}", field=f"{field}.{key}")
    start = _minutes(value.get("start"), field=f"{field}.start", allow_midnight_end=False)
    end = _minutes(value.get("end"), field=f"{field}.end", allow_midnight_end=True)
    if start == end:
        raise InvalidInput(
            f"{field}.end must differ from start; a whole day is 00:00 to 24:00",
            field=f"{field}.end",
        )
    days = _days(value.get("days"), field=f"{field}.days")
    given = value.get("timezone")
    timezone = _timezone(CONTACT if given is None else given, field=f"{field}.timezone")
    return SendWindow(start=start, end=end, days=days, timezone=timezone)


def parse_send_window_text(text: str, *, field: str = "send_window") -> SendWindow:
    """The command line's compact form, or JSON.

    ``HH:MM-HH:MM [DAYS] [TIMEZONE]``: DAYS is a comma-separated list of days or ranges
    (``mon-fri``, ``sat,sun``, ``fri-mon``), every day when left out; TIMEZONE is an IANA name or
    ``contact`` (the default). For example ``09:00-17:00 mon-fri contact`` or
    ``22:00-06:00 Europe/Berlin``.
    """
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            loaded = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{field} is not valid JSON: {exc.msg}", field=field) from None
        window = parse_send_window(loaded, field=field)
        assert window is not None  # JSON null does not start with "{"
        return window
    parts = stripped.split()
    if not parts or "-" not in parts[0] or len(parts) > 3:
        raise InvalidInput(
            f"{field} must look like '09:00-17:00 mon-fri contact' (hours, days, time zone)",
            field=field,
        )
    start, _, end = parts[0].partition("-")
    body: dict[str, Any] = {"start": start, "end": end}
    for part in parts[1:]:
        if _looks_like_days(part):
            if "days" in body:
                raise InvalidInput(f"{field}: days are given twice", field=f"{field}.days")
            body["days"] = _expand_days(part, field=f"{field}.days")
        elif "timezone" in body:
            raise InvalidInput(f"{field}: time zone is given twice", field=f"{field}.timezone")
        else:
            body["timezone"] = part
    window = parse_send_window(body, field=field)
    assert window is not None
    return window


def window_from_json(value: Mapping[str, Any]) -> SendWindow:
    """A window as stored (written by ``to_json``); memoised, the claim reads many alike."""
    return _stored(json.dumps(value, sort_keys=True))


@lru_cache(maxsize=1024)
def _stored(canonical: str) -> SendWindow:
    window = parse_send_window(json.loads(canonical))
    assert window is not None
    return window


def known_time_zone(name: str) -> bool:
    """Whether ``name`` is an IANA time zone of this system's (or the tzdata package's) database."""
    return name in _time_zones()


def time_zone_names() -> list[str]:
    """Every known IANA zone, sorted (for a form's choice)."""
    return sorted(_time_zones())


@cache
def _time_zones() -> frozenset[str]:
    # The set, not ZoneInfo(name): a look-up never touches the file system and accepts no paths.
    # "localtime" is the server's own zone file, not a name of the IANA database.
    return frozenset(zoneinfo.available_timezones()) - {"localtime", "posixrules"}


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The zone of a known name; anything else (a name a database update removed) reads as UTC."""
    return zoneinfo.ZoneInfo(name if known_time_zone(name) else FALLBACK_TIMEZONE)


def resolve_timezone(
    window: SendWindow, *, contact_timezone: str | None, tenant_timezone: str | None
) -> str:
    """The zone a message's window is read in: the window's own, or for ``"contact"`` the contact's,
    else the tenant's default, else UTC."""
    if window.timezone != CONTACT:
        return window.timezone
    for candidate in (contact_timezone, tenant_timezone):
        if candidate and known_time_zone(candidate):
            return candidate
    return FALLBACK_TIMEZONE


# -- when it is open ----------------------------------------------------------------------------


def first_instant(local: datetime, tz: zoneinfo.ZoneInfo) -> datetime:
    """The first instant (UTC) at which the clock in ``tz`` shows the naive ``local`` or later.

    The first of two readings when the clock is turned back; the jump itself when ``local`` falls
    in skipped time.
    """
    instant = local.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == local:
        return instant
    # Skipped time: fold=0 read it with the offset before the jump, which lands past the jump by
    # the length of the gap. The jump lies in that stretch; transitions fall on whole seconds.
    after = instant.astimezone(tz).utcoffset()
    before = local.replace(tzinfo=tz, fold=0).utcoffset()
    assert after is not None and before is not None
    low = int((instant - (after - before)).timestamp())
    high = int(instant.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == after:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def openings(window: SendWindow, tz: str, at: datetime) -> Iterator[tuple[datetime, datetime]]:
    """The window's open intervals ``[opens, closes)`` in UTC, in order, starting with the one that
    contains ``at`` or else the next one; endless."""
    if not window.days:
        raise ValueError("a window without days never opens")
    local_zone = zone(tz)
    # An overnight window that opened yesterday may still be open.
    day = at.astimezone(local_zone).date() - timedelta(days=1)
    while True:
        if day.weekday() in window.days:
            opens = first_instant(_at_minute(day, window.start), local_zone)
            closes_on = day + timedelta(days=1) if window.overnight else day
            closes = first_instant(_at_minute(closes_on, window.end), local_zone)
            # Empty only for a window wholly inside skipped time: it does not open that day.
            if opens < closes and closes > at:
                yield opens, closes
        day += timedelta(days=1)


def next_opening(window: SendWindow, tz: str, at: datetime) -> datetime:
    """``at`` itself (as UTC) when the window is open then, else the instant it next opens."""
    opens, _ = next(openings(window, tz, at))
    return max(opens, at.astimezone(UTC))


def is_open(window: SendWindow, tz: str, at: datetime) -> bool:
    return next_opening(window, tz, at) == at.astimezone(UTC)


# -- helpers ------------------------------------------------------------------------------------


def _at_minute(day: date, minute: int) -> datetime:
    """Naive local ``day`` + ``minute`` (1440 is the next midnight)."""
    return datetime.combine(day, time()) + timedelta(minutes=minute)


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _minutes(value: object, *, field: str, allow_midnight_end: bool) -> int:
    if value is None:
        raise InvalidInput(f"{field} is required, as HH:MM", field=field)
    match = _CLOCK.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidInput(f"{field} must be a time of day as HH:MM, e.g. 09:00", field=field)
    hours, minutes = int(match[1]), int(match[2])
    if allow_midnight_end and (hours, minutes) == (24, 0):
        return MINUTES_PER_DAY
    if hours > 23 or minutes > 59:
        limit = "00:00 to 24:00" if allow_midnight_end else "00:00 to 23:59"
        raise InvalidInput(f"{field} must be from {limit}", field=field)
    return hours * 60 + minutes


def _days(value: object, *, field: str) -> frozenset[int]:
    if value is None:
        return ALL_DAYS
    if not isinstance(value, list | tuple):
        raise InvalidInput(f"{field} must be a list of days such as ['mon', 'tue']", field=field)
    days: set[int] = set()
    for item in value:
        name = item.strip().lower() if isinstance(item, str) else None
        if name not in DAY_NAMES:
            raise InvalidInput(
                f"{field}: {item!r} is not one of {', '.join(DAY_NAMES)}", field=field
            )
        days.add(DAY_NAMES.index(name))
    if not days:
        raise InvalidInput(f"{field} must name at least one day", field=field)
    return frozenset(days)


def _timezone(value: object, *, field: str) -> str:
    if not isinstance(value, str) or not (value == CONTACT or known_time_zone(value)):
        raise InvalidInput(
            f"{field} must be 'contact' or an IANA time zone such as 'Europe/Berlin'", field=field
        )
    return value


def _looks_like_days(part: str) -> bool:
    names = re.split(r"[,-]", part.lower())
    return all(name in DAY_NAMES for name in names)


def _expand_days(part: str, *, field: str) -> list[str]:
    """``mon-fri,sun`` → ``['mon', 'tue', 'wed', 'thu', 'fri', 'sun']``; a range may wrap (``fri-mon``)."""
    days: list[str] = []
    for item in part.lower().split(","):
        first, dash, last = item.partition("-")
        if not dash:
            days.append(first)
            continue
        if not last or "-" in last:
            raise InvalidInput(f"{field}: {item!r} is not a range such as mon-fri", field=field)
        index = DAY_NAMES.index(first)
        while True:
            days.append(DAY_NAMES[index])
            if DAY_NAMES[index] == last:
                break
            index = (index + 1) % 7
    return days
