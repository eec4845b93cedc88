"""Unsubscribe / preferences tokens: round trip, opaque, tamper-proof, kind-bound, long-lived."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from tidings import tokens
from tidings.errors import InvalidInput, InvalidToken

SECRET = "s" * 48
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _make(**overrides: object) -> str:
    values: dict[str, object] = {
        "kind": "unsubscribe",
        "tenant_id": 7,
        "contact_id": 123456,
        "email": None,
        "category": "news",
        "now": NOW,
    }
    values.update(overrides)
    return tokens.make_token(SECRET, **values)  # type: ignore[arg-type]


def test_a_contact_token_reads_back_its_claims() -> None:
    claims = tokens.read_token(SECRET, _make(), kind="unsubscribe", now=NOW)
    assert claims == tokens.TokenClaims(
        kind="unsubscribe",
        tenant_id=7,
        contact_id=123456,
        email=None,
        category="news",
        issued_at=NOW,
    )


def test_an_address_token_reads_back_the_address_and_no_category() -> None:
    token = _make(kind="preferences", contact_id=None, email="Zoë@example.com", category=None)
    claims = tokens.read_token(SECRET, token, kind="preferences", now=NOW)
    assert (claims.email, claims.contact_id, claims.category) == ("Zoë@example.com", None, None)


def test_tokens_are_url_safe_short_and_reveal_nothing() -> None:
    token = _make(contact_id=None, email="alice@example.com", category="weekly-digest")
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for secret_part in (b"alice", b"example", b"weekly"):
        assert secret_part not in raw
    assert len(_make()) < 50  # a contact token keeps the URL short


def test_every_altered_character_is_refused() -> None:
    token = _make()
    alphabet = "AQgw"  # differ in the high bits, so every position really changes
    for position in range(len(token)):
        for replacement in alphabet:
            if replacement == token[position]:
                continue
            altered = token[:position] + replacement + token[position + 1 :]
            with pytest.raises(InvalidToken):
                tokens.read_token(SECRET, altered, kind="unsubscribe", now=NOW)


def test_a_token_with_another_spelling_of_its_last_bits_is_refused() -> None:
    # A length that is not a multiple of 4 leaves unused low bits in the last character.
    token = next(t for t in (_make(category="n" * i) for i in range(4)) if len(t) % 4)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1]
    tokens.read_token(SECRET, token, kind="unsubscribe", now=NOW)
    with pytest.raises(InvalidToken):
        tokens.read_token(SECRET, twin, kind="unsubscribe", now=NOW)


def test_another_secret_cannot_read_or_forge() -> None:
    with pytest.raises(InvalidToken):
        tokens.read_token("o" * 48, _make(), kind="unsubscribe", now=NOW)


def test_an_unsubscribe_token_is_not_a_preferences_token() -> None:
    with pytest.raises(InvalidToken):
        tokens.read_token(SECRET, _make(kind="unsubscribe"), kind="preferences", now=NOW)


def test_tokens_live_for_a_year_at_least_and_then_expire() -> None:
    token = _make()
    tokens.read_token(SECRET, token, kind="unsubscribe", now=NOW + timedelta(days=366))
    with pytest.raises(InvalidToken, match="expired"):
        tokens.read_token(SECRET, token, kind="unsubscribe", now=NOW + timedelta(days=731))


def test_a_token_from_the_future_is_refused_beyond_clock_skew() -> None:
    token = _make(now=NOW + timedelta(hours=1))
    with pytest.raises(InvalidToken):
        tokens.read_token(SECRET, token, kind="unsubscribe", now=NOW)
    tokens.read_token(SECRET, _make(now=NOW + timedelta(minutes=1)), kind="unsubscribe", now=NOW)


@pytest.mark.parametrize(
    "garbage",
    ["", "a", "!!!!", "AQ", "A" * 40, "é" * 30, "A" * 5000, "AQ==", "Ab8J glNh", "AQAA" * 10],
)
def test_garbage_is_an_invalid_token_not_a_crash(garbage: str) -> None:
    with pytest.raises(InvalidToken) as caught:
        tokens.read_token(SECRET, garbage, kind="unsubscribe", now=NOW)
    assert isinstance(caught.value, InvalidInput) and caught.value.field == "token"


def test_truncated_tokens_are_refused() -> None:
    token = _make()
    for size in range(len(token)):
        with pytest.raises(InvalidToken):
            tokens.read_token(SECRET, token[:size], kind="unsubscribe", now=NOW)


def test_exactly_one_of_contact_and_address_is_required() -> None:
    with pytest.raises(ValueError):
        _make(contact_id=None, email=None)
    with pytest.raises(ValueError):
        _make(contact_id=1, email="a@b.test")


def test_urls_point_at_the_public_routes() -> None:
    assert tokens.unsubscribe_url("https://m.example/", "TOK") == "https://m.example/u/TOK"
    assert tokens.preferences_url("https://m.example", "TOK") == "https://m.example/p/TOK"
