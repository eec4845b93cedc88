"""Jinja filters for the dashboard: how times, counts and statuses read to a person."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from tidings.scheduling.windows import zone

#: Each status is told by a word and a symbol, never by colour alone.
STATUS_SYMBOLS: Mapping[str, str] = {
    "draft": "✎",
    "scheduled": "◔",
    "preparing": "◑",
    "running": "▶",
    "paused": "‖",
    "completed": "✓",
    "cancelled": "⊘",
    "failed": "✕",
    "queued": "…",
    "sending": "→",
    "sent": "✓",
    "dead": "✕",
    "suppressed": "⊘",
    "active": "●",
    "unsubscribed": "⊘",
    "bounced": "✕",
    "complained": "!",
}


def when(value: datetime | None) -> str:
    """A UTC time to the second, as ``2025-01-31 14:05:09 UTC``; a dash for none."""
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def when_in(value: datetime | None, timezone: str) -> str:
    """A time in the tenant's zone, as ``2025-01-31 15:05 Europe/Berlin``; a dash for none."""
    if value is None:
        return "—"
    return f"{value.astimezone(zone(timezone)):%Y-%m-%d %H:%M} {timezone}"


def iso(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


def count(value: int | None) -> str:
    """Thousands separated by a thin space, which reads the same in every locale."""
    return "—" if value is None else f"{value:,}".replace(",", "\u202f")


def percent(value: float) -> str:
    return f"{value:.0f}\u202f%" if value == int(value) else f"{value:.1f}\u202f%"


def rate(value: float | None) -> str:
    """Messages per second, to three significant figures (``12.5/s``, ``0.0167/s``); a dash for none."""
    return "—" if value is None else f"{value:.3g}/s"


def status_symbol(status: str) -> str:
    return STATUS_SYMBOLS.get(status, "•")


def full_name(contact: Any) -> str:
    """A contact's name as people write it, or empty (any object with the contact's name fields)."""
    name: str | None = contact.name
    if name:
        return name
    return " ".join(p for p in (contact.first_name, contact.last_name) if p)


FILTERS: Mapping[str, Callable[..., Any]] = {
    "when": when,
    "when_in": when_in,
    "iso": iso,
    "count": count,
    "percent": percent,
    "rate": rate,
    "status_symbol": status_symbol,
    "full_name": full_name,
}
