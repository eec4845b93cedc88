"""Reading HTML form values: every field arrives as text, and each mistake is kept next to its field."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from starlette.datastructures import FormData

from tidings.scheduling.windows import first_instant, zone

MAX_IDS = 10_000  # ids one form may carry (the campaign service's own cap)


@dataclass
class FieldErrors:
    """Messages by field name, shown next to each field (and summarised at the top of the form)."""

    by_field: dict[str, str] = field(default_factory=dict)

    def add(self, name: str | None, message: str) -> None:
        self.by_field.setdefault(name or "form", message)

    def __bool__(self) -> bool:
        return bool(self.by_field)


def text(form: FormData, name: str, *, max_length: int = 10_000) -> str:
    value = form.get(name)
    return value.strip()[:max_length] if isinstance(value, str) else ""


def ids(values: Iterable[object]) -> list[int]:
    """The positive whole numbers among ``values`` (checkbox values), in order, each once."""
    found: dict[int, None] = {}
    for value in values:
        if isinstance(value, str) and value.isdigit() and 0 < len(value) <= 18:
            found[int(value)] = None
        if len(found) >= MAX_IDS:
            break
    return list(found)


def optional_int(form: FormData, name: str, errors: FieldErrors) -> int | None:
    """An empty field is None; anything but a whole number is an error on that field."""
    raw = text(form, name, max_length=40)
    if not raw:
        return None
    if not raw.lstrip("-").isdigit():
        errors.add(name, "Enter a whole number, or leave it empty for no limit.")
        return None
    return int(raw)


def local_datetime(raw: str, timezone: str, name: str, errors: FieldErrors) -> datetime | None:
    """A ``datetime-local`` value (``2025-01-31T14:30``), read in ``timezone`` (the tenant's).

    A time the clock skips (a spring-forward hour) is the moment it jumps past it; a time it
    shows twice (autumn) is the first, as sending windows read them.
    """
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        errors.add(name, "Enter a date and time, such as 2025-01-31 14:30.")
        return None
    if value.tzinfo is not None:
        return value.astimezone(UTC)
    return first_instant(value, zone(timezone))
