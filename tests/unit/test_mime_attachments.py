"""MIME with what a message can carry: Reply-To, extra headers and files (multipart/mixed around
the text and HTML alternative, RFC 2231 file names), read back exactly by the stdlib parser; and
a message without them is byte for byte what it was before they existed."""

from __future__ import annotations

import hashlib
import re
from base64 import b64encode
from dataclasses import replace

import pytest

from tests.unit.test_mime import BASE, DATE, assert_wire_format, parse
from tidings.delivery.features import EncodedContent
from tidings.domain.message import Attachment
from tidings.transports.mime import build_message_bytes

#: SHA-256 of build_message_bytes(...) for these messages, taken on main before attachments
#: existed (commit f627b52): the hot path's output must never change.
BEFORE = {
    "alternative": "f6f60df0c303d11f4ac7f79784263d8a85fe722b53720ef607e0866b8bf2bcf6",
    "text_only": "46a64e175ae6f957197d421915b26a494fe0ab477981235b308a203817d46e5c",
    "non_ascii": "23b9a03702550a88ba3a495d814a14f21c1637af15d114c7fc6598fbbe778ec8",
    "long_lines": "6e01b6f18eede3b38866cad4d50f7aa1ae71b4a6735e3a98c0abdb1ef8c083c4",
}
PLAIN = {
    "alternative": BASE,
    "text_only": replace(BASE, html=None),
    "non_ascii": replace(
        BASE,
        subject="Café ünïcode",
        to_name="Zoë",
        text="Grüße\n" * 50,
        html="<p>Grüße</p>" * 100,
    ),
    "long_lines": replace(BASE, html="<p>" + "x" * 3000 + "</p>", text="y " * 2000),
}
NAMES = [
    "syllabus.pdf",
    "Lehrplan für Straße \u2013 Übersicht 2026 (endgültig) ✓ 日本語のファイル名.pdf",
    'a "quoted" name; with=specials.pdf',
    "n" * 240 + ".pdf",
    "%41 looks encoded.pdf",
]
DATA = bytes(range(256)) * 40 + b"\r\n.\r\n--=_tidings_m1092--\r\n"


def attached(name: str, data: bytes = DATA, content_type: str = "application/pdf") -> Attachment:
    encoded = EncodedContent.of(data)
    return Attachment(name, content_type, encoded.content_base64, encoded.mime_body)


@pytest.mark.parametrize("case", sorted(PLAIN))
def test_a_message_without_features_is_byte_identical_to_before(case: str) -> None:
    raw = build_message_bytes(PLAIN[case], date=DATE)
    assert hashlib.sha256(raw).hexdigest() == BEFORE[case]


@pytest.mark.parametrize("html", [BASE.html, None])
def test_files_come_back_exactly_with_their_names_beside_the_text_and_html(
    html: str | None,
) -> None:
    msg = replace(BASE, html=html, attachments=tuple(attached(n) for n in NAMES))
    raw = build_message_bytes(msg, date=DATE)
    assert_wire_format(raw)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78  # headers folded, base64 76
    parsed = parse(raw)
    assert parsed.get_content_type() == "multipart/mixed"
    first = next(iter(parsed.iter_parts()))
    assert first.get_content_type() == ("multipart/alternative" if html else "text/plain")
    files = list(parsed.iter_attachments())
    assert [f.get_filename() for f in files] == NAMES
    assert all(f.get_content() == DATA for f in files)
    assert all(f.get_content_type() == "application/pdf" for f in files)
    body = parsed.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == BASE.text
    if html:
        assert parsed.get_body(("html",)) is not None


def test_a_non_ascii_name_is_written_per_rfc_2231_not_as_raw_utf8() -> None:
    raw = build_message_bytes(replace(BASE, attachments=(attached("Straße.pdf"),)), date=DATE)
    assert b"filename*=utf-8''Stra%C3%9Fe.pdf" in raw
    assert b"name*=utf-8''Stra%C3%9Fe.pdf" in raw
    long = build_message_bytes(replace(BASE, attachments=(attached(NAMES[1]),)), date=DATE)
    assert re.search(rb"filename\*0\*=utf-8''", long) and re.search(rb"filename\*1\*=", long)
    assert long.isascii()


def test_reply_to_and_extra_headers_are_written_and_read_back() -> None:
    msg = replace(
        BASE,
        reply_to='"Ms Ada Lovelace-Ünal" <ada@school.example>',
        headers=(*BASE.headers, ("X-Course", "ML 101"), ("List-Id", "ML <ml101.school.example>")),
    )
    parsed = parse(build_message_bytes(msg, date=DATE))
    assert parsed["Reply-To"].addresses[0].display_name == "Ms Ada Lovelace-Ünal"
    assert parsed["Reply-To"].addresses[0].addr_spec == "ada@school.example"
    assert parsed["X-Course"] == "ML 101"
    assert parsed["List-Id"] == "ML <ml101.school.example>"


def test_a_reply_to_header_in_the_extra_headers_or_a_broken_file_name_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be overridden"):
        build_message_bytes(replace(BASE, headers=(("Reply-To", "x@example.com"),)), date=DATE)
    with pytest.raises(ValueError, match="line break"):
        build_message_bytes(replace(BASE, reply_to="a@example.com\r\nBcc: x@y.z"), date=DATE)
    with pytest.raises(ValueError, match="control character"):
        build_message_bytes(replace(BASE, attachments=(attached("a\r\nb.pdf"),)), date=DATE)


def test_the_encoded_content_is_shared_not_copied_per_message() -> None:
    encoded = EncodedContent.of(DATA)
    one = Attachment("a.pdf", "application/pdf", encoded.content_base64, encoded.mime_body)
    two = Attachment("b.pdf", "application/pdf", encoded.content_base64, encoded.mime_body)
    assert one.mime_body is two.mime_body
    assert encoded.content_base64 == b64encode(DATA).decode()
