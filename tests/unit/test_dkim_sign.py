"""DKIM signing (``transports/dkim_sign.py``): our relaxed canonical forms agree with dkimpy's,
signatures verify with dkimpy, and a key that cannot sign costs the signature, not the message."""

from __future__ import annotations

import logging

import dkim
import pytest
from dkim.canonicalization import Relaxed
from hypothesis import given
from hypothesis import strategies as st

from tidings.domain.addresses import covering_domains
from tidings.domain.message import DkimKey, OutgoingMessage
from tidings.transports import dkim_sign
from tidings.transports.mime import build_message_bytes

#: Bodies as mime.py writes them: CRLF lines of printable ASCII, spaces and tabs.
LINES = st.lists(st.text(alphabet=" \tab=-.<>", max_size=12), max_size=8)


@given(LINES, st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]))
def test_the_relaxed_body_is_dkimpys(lines: list[str], tail: bytes) -> None:
    body = "\r\n".join(lines).encode() + tail
    assert dkim_sign.canonical_body(body) == Relaxed.canonicalize_body(body)


def mail(key: DkimKey | None, **fields: object) -> OutgoingMessage:
    values: dict[str, object] = {
        "message_id": 7,
        "tenant_id": 1,
        "from_address": "Ann  Example <ann@mail.example.com>",
        "to_address": "bob@example.org",
        "subject": "Grades\tare  in",
        "html": "<p>Dear   Bob,</p>\n    <p>see you</p>  \n\n",
        "text": "Dear Bob,  \n\tsee you\n\n\n",
        "message_id_header": "<7.abc@mail.example.com>",
        "headers": (("List-Unsubscribe", "<https://t.example/u/1>"),),
        "dkim": key,
    }
    values.update(fields)
    return OutgoingMessage(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", dkim_sign.ALGORITHMS)
def test_a_signature_verifies_and_covers_the_listed_headers(algorithm: str) -> None:
    private = dkim_sign.generate_key(algorithm)
    record = dkim_sign.txt_record_value(algorithm, dkim_sign.public_key_value(private)).encode()
    key = DkimKey("mail.example.com", "td1", algorithm, private)
    raw = build_message_bytes(mail(key))

    def dns(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name == b"td1._domainkey.mail.example.com." else None

    assert dkim.verify(raw, dnsfunc=dns)
    assert dkim_sign.signed_header_names(raw) == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "from",
    ]
    # Another From added on the way breaks it (From is oversigned); so does a changed To.
    assert not dkim.verify(b"From: mallory@evil.example\r\n" + raw, dnsfunc=dns)
    assert not dkim.verify(raw.replace(b"To: bob@", b"To: rob@"), dnsfunc=dns)


def test_a_key_that_cannot_sign_sends_the_message_unsigned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def sign(self, *args: object) -> bytes:
            raise ValueError("no")

    key = DkimKey("mail.example.com", "td1", dkim_sign.RSA, Broken())  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="tidings.dkim"):
        raw = build_message_bytes(mail(key))
    assert b"DKIM-Signature" not in raw and b"Subject:" in raw
    assert "goes unsigned" in caplog.text


def test_a_message_cannot_bring_its_own_signature_header() -> None:
    with pytest.raises(ValueError, match="written by the transport"):
        build_message_bytes(mail(None, headers=(("DKIM-Signature", "v=1; d=evil.example"),)))


def test_long_records_are_cut_into_txt_strings() -> None:
    value = "v=DKIM1; k=rsa; p=" + "A" * 600
    strings = dkim_sign.txt_strings(value)
    assert "".join(strings) == value and [len(s) for s in strings] == [255, 255, 108]


def test_the_domains_that_cover_a_sender() -> None:
    assert covering_domains("News <a@News.Mail.Example.com>") == [
        "news.mail.example.com",
        "mail.example.com",
        "example.com",
    ]
    assert covering_domains("a@bücher.example") == ["xn--bcher-kva.example"]
    assert covering_domains("a@localhost") == [] and covering_domains("nobody") == []
