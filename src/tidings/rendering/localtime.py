"""The ``localtime`` template filter: a time shown in the recipient's own time zone and language.

``{{ event_at|localtime("EEEE d MMMM, HH:mm") }}`` is "Montag 1 März, 15:00" for a contact in
Europe/Berlin whose locale is ``de``, "Monday 1 March, 09:00" for one in America/New_York with
``en``. The format is a CLDR date pattern (Babel's ``format_datetime``) or one of ``short``,
``medium`` (the default), ``long`` and ``full``, the locale's own layouts.

The recipient's zone and locale come with the render's variables under ``LOCAL_KEY``, which is not
a name a template can write or read, and which the recipient's side sets after the caller's data
(``Renderer.variables``): neither the data nor the template can pose as another recipient's zone.
No zone means UTC (the caller resolves contact, then tenant default, before this); no locale, or
one CLDR does not know, means the language alone, then English: a contact's odd locale never fails
a message.

Bounds: the pattern is capped at ``MAX_PATTERN_LENGTH`` characters (Babel pads a field to its
repeat count, so a long pattern is a long output), each call formats one value, and it runs inside
a render process like any filter, under its CPU and memory limits. A bad value or pattern is a
render error naming the filter and the problem, never an exception of Babel's.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from babel.dates import format_datetime
from jinja2 import Undefined, pass_context
from jinja2.exceptions import TemplateRuntimeError
from jinja2.runtime import Context

#: Where the render's variables carry ``(time zone, locale)`` of the recipient; not an identifier,
#: so no template can name it.
LOCAL_KEY = "tidings:local"
DEFAULT_FORMAT = "medium"
NAMED_FORMATS = frozenset({"short", "medium", "long", "full"})
MAX_PATTERN_LENGTH = 100  # characters of a CLDR pattern
FALLBACK_LOCALE = "en"
_SHOWN = 40  # characters of a bad value quoted in an error


@pass_context
def localtime(context: Context, value: Any, pattern: str = DEFAULT_FORMAT) -> str:
    """``value`` (a datetime, or an ISO 8601 string as JSON data brings it) in the recipient's
    zone and locale; a time without a zone is taken as UTC, like every time Tidings stores."""
    if isinstance(value, Undefined):
        return str(value)  # StrictUndefined: raises, naming the missing variable
    if value is None:
        return ""  # like any missing value: prints as nothing
    moment = _as_datetime(value)
    if not isinstance(pattern, str) or not pattern:
        raise TemplateRuntimeError("localtime(): the format must be a pattern such as 'd MMMM y'")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise TemplateRuntimeError(
            f"localtime(): the pattern is longer than {MAX_PATTERN_LENGTH} characters"
        )
    zone_name, locale_name = context.get(LOCAL_KEY) or (None, None)
    zone = _zone(zone_name)
    try:
        moment = moment.astimezone(zone)
    except (OverflowError, ValueError):  # e.g. 0001-01-01T00:00:00 shown west of UTC
        raise TemplateRuntimeError("localtime(): the time is out of range") from None
    try:
        return format_datetime(moment, pattern, tzinfo=zone, locale=_locale(locale_name))
    except (ValueError, KeyError, IndexError, OverflowError) as exc:
        raise TemplateRuntimeError(f"localtime(): bad pattern {pattern!r} ({exc})") from None


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise TemplateRuntimeError(
                f"localtime(): {value[:_SHOWN]!r} is not an ISO 8601 time"
                " such as 2027-03-01T15:00:00+01:00"
            ) from None
    if not isinstance(value, datetime):
        kind = "a date without a time" if isinstance(value, date) else type(value).__name__
        raise TemplateRuntimeError(
            f"localtime() needs a time (a datetime or an ISO 8601 string), not {kind}"
        )
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@lru_cache(maxsize=64)
def _zone(name: str | None) -> tzinfo:
    """The zone by its IANA name; UTC for none, or for a name this system does not know (a
    contact's zone is checked when it is written, a tenant's too: this is the last resort)."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (
        ValueError,
        KeyError,
        OSError,
    ):  # not a zone's name; ZoneInfoNotFoundError is a KeyError
        return UTC


@lru_cache(maxsize=64)
def _locale(name: str | None) -> Locale:
    """``pt-BR``, ``pt_BR`` or ``pt``; an unknown region falls back to the language, an unknown
    language to English."""
    if name:
        tag = name.replace("-", "_")
        for candidate in (tag, tag.split("_", 1)[0]):
            try:
                return Locale.parse(candidate)
            except (ValueError, UnknownLocaleError):
                continue
    return Locale.parse(FALLBACK_LOCALE)
