"""The confirmation link of a public sign-up: its own token kind, lifetime and inert forms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tidings import tokens
from tidings.errors import InvalidToken
from tidings.web.inbox import inert_links

SECRET = "a-test-secret-that-is-long-enough-000"
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def confirm(now: datetime = NOW) -> str:
    return tokens.make_token(
        SECRET,
        kind="confirm",
        tenant_id=1,
        message_id=7,
        contact_created=100,
        category=None,
        now=now,
    )


def test_a_confirm_token_reads_back_only_as_a_confirm_token() -> None:
    token = confirm()
    claims = tokens.read_token(SECRET, token, kind="confirm", now=NOW)
    assert (claims.tenant_id, claims.message_id, claims.contact_created) == (1, 7, 100)
    for other in ("unsubscribe", "preferences"):
        with pytest.raises(InvalidToken):
            tokens.read_token(SECRET, token, kind=other, now=NOW)  # type: ignore[arg-type]


def test_a_confirm_token_expires_after_seven_days_unlike_unsubscribe_links() -> None:
    token = confirm()
    tokens.read_token(SECRET, token, kind="confirm", now=NOW + timedelta(days=6, hours=23))
    with pytest.raises(InvalidToken):
        tokens.read_token(SECRET, token, kind="confirm", now=NOW + timedelta(days=7, seconds=1))


def test_the_inbox_shows_confirmation_links_inert() -> None:
    link = f"https://mail.example/s/confirm/{confirm()}"
    assert inert_links(f'<a href="{link}">') == '<a href="https://mail.example/s/confirm/preview">'
    assert tokens.preview_url("https://mail.example", "confirm").endswith("/s/confirm/preview")
