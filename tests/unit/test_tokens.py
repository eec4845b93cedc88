"""Unsubscribe / preferences tokens: round trip, opaque, tamper-proof, kind-bound, long-lived."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from tests.token_formats import make_v1_token
from tidings import tokens
from tidings.errors import InvalidInput, InvalidToken

SECRET = "s" * 48
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _make(**overrides: object) -> str:
    values: dict[str, object] = {
        "kind": "unsubscribe",
        "tenant_id": 7,
        "message_id": 123456,
        "contact_created": 1_740_000_000,
        "category": "news",
        "now": NOW,
    }
    values.update(overrides)
    return tokens.make_token(SECRET, **values)  # type: ignore[arg-type]


def test_a_token_reads_back_its_message_contact_stamp_and_category() -> None:
    claims = tokens.read_token(SECRET, _make(), kind="unsubscribe", now=NOW)
    assert claims == tokens.TokenClaims(
        kind="unsubscribe",
        tenant_id=7,
        message_id=123456,
        contact_created=1_740_000_000,
        contact_id=None,
        email=None,
        category="news",
        issued_at=NOW,
    )


def test_an_address_token_names_only_the_message() -> None:
    token = _make(kind="preferences", contact_created=None, category=None)
    claims = tokens.read_token(SECRET, token, kind="preferences", now=NOW)
    assert (claims.message_id, claims.contact_created, claims.category) == (123456, None, None)


def test_version_1_tokens_in_mail_already_sent_still_read_back() -> None:
    for contact_id, email in ((42, None), (None, "Zoë@example.com")):
        token = make_v1_token(
            SECRET,
            kind="unsubscribe",
            tenant_id=7,
            contact_id=contact_id,
            email=email,
            category="news",
            now=NOW,
        )
        claims = tokens.read_token(SECRET, token, kind="unsubscribe", now=NOW)
        assert (claims.message_id, claims.contact_id, claims.email) == (None, contact_id, email)


def test_a_token_cannot_be_read_under_another_version() -> None:
    """The version byte is authenticated from version 2 on: relabelling a token breaks it, even
    one whose payload happens to parse under both layouts (contact 42 and a one-byte category
    read as version 2: message 42, contact stamp 1, category "")."""
    for version, token in (
        (tokens.V1, _make()),
        (
            tokens.TOKEN_VERSION,
            make_v1_token(
                SECRET,
                kind="unsubscribe",
                tenant_id=7,
                contact_id=42,
                email=None,
                category="\x00",
                now=NOW,
            ),
        ),
    ):
        raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        raw[0] = version
        relabelled = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
        with pytest.raises(InvalidToken):
            tokens.read_token(SECRET, relabelled, kind="unsubscribe", now=NOW)


def test_the_preview_placeholder_is_no_token() -> None:
    assert tokens.preview_url("https://m.example/", "unsubscribe") == "https://m.example/u/preview"
    with pytest.raises(InvalidToken):
        tokens.read_token(SECRET, tokens.PREVIEW_TOKEN, kind="unsubscribe", now=NOW)


def test_tokens_are_url_safe_short_and_reveal_nothing() -> None:
    token = _make(contact_created=None, category="weekly-digest")
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert b"weekly" not in raw
    assert len(_make()) <= 52  # message, contact stamp and a category: still a short URL


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


def test_a_token_needs_a_real_message_id() -> None:
    for message_id in (0, -1):
        with pytest.raises(ValueError):
            _make(message_id=message_id)


def test_urls_point_at_the_public_routes() -> None:
    assert tokens.unsubscribe_url("https://m.example/", "TOK") == "https://m.example/u/TOK"
    assert tokens.preferences_url("https://m.example", "TOK") == "https://m.example/p/TOK"
