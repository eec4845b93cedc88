"""MIME bytes: whatever the message holds, a standard parser reads back exactly what was sent,
every line fits the RFC limits, and a line break in a header is refused, never passed on."""

from __future__ import annotations

import email
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage

import pytest

from tidings.domain.message import OutgoingMessage
from tidings.transports.mime import build_message_bytes, format_date

DATE = datetime(2024, 9, 3, 10, 0, 5, tzinfo=UTC)

BASE = OutgoingMessage(
    message_id=4242,
    tenant_id=1,
    from_address="Acme News <news@acme.test>",
    to_address="bob@example.com",
    to_name="Bob Smith",
    subject="Welcome aboard",
    text="Hello Bob,\nthanks for joining.\n",
    html="<p>Hello Bob,</p>\n<p>thanks for joining.</p>\n",
    message_id_header="<4242.abc@acme.test>",
    headers=(
        ("List-Unsubscribe", "<https://acme.test/u/tok123>, <mailto:unsub@acme.test?subject=u>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ),
)


def parse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def body_of(parsed: EmailMessage, subtype: str) -> str:
    part = parsed.get_body((subtype,))
    assert part is not None, subtype
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")  # line breaks are CRLF on the wire, by definition


def assert_wire_format(raw: bytes) -> None:
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", raw) is None, "a bare CR or LF"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii(), "headers must be 7-bit (encoded-words, IDNA)"


def roundtrip(msg: OutgoingMessage) -> EmailMessage:
    raw = build_message_bytes(msg, date=DATE)
    assert_wire_format(raw)
    parsed = parse(raw)
    assert parsed.defects == []
    for part in parsed.walk():
        assert part.defects == [], part.defects
    return parsed


def test_headers_and_both_parts_come_back_exactly() -> None:
    parsed = roundtrip(BASE)

    assert parsed["From"] == "Acme News <news@acme.test>"
    assert parsed["To"].addresses[0].display_name == "Bob Smith"
    assert parsed["To"].addresses[0].addr_spec == "bob@example.com"
    assert parsed["Subject"] == "Welcome aboard"
    assert parsed["Date"].datetime == DATE
    assert parsed["Message-ID"] == "<4242.abc@acme.test>"
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["List-Unsubscribe"] == BASE.headers[0][1]
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed.get_content_type() == "multipart/alternative"
    assert body_of(parsed, "plain") == BASE.text
    assert body_of(parsed, "html") == BASE.html


def test_extra_headers_keep_their_order_after_the_standard_ones() -> None:
    raw = build_message_bytes(BASE, date=DATE)
    names = [line.split(b":")[0] for line in raw.split(b"\r\n\r\n")[0].split(b"\r\n")]
    names = [n for n in names if not n.startswith(b" ")]
    assert names[:8] == [
        b"From",
        b"To",
        b"Subject",
        b"Date",
        b"Message-ID",
        b"MIME-Version",
        b"List-Unsubscribe",
        b"List-Unsubscribe-Post",
    ]


@pytest.mark.parametrize(
    "subject",
    [
        "Héllo wörld",
        "🎉 Party on Friday 🎉",
        "Привет, это новости недели и ещё много слов, чтобы строка стала длинной",
        "A plain ASCII subject that is far longer than seventy-eight characters, so it must be folded",
        "x" * 1200,  # one word too long for any line: must be encoded, then folded
        "  leading and trailing spaces  ",
        "double  spaces\tand a tab",
        "=?utf-8?q?looks_encoded?= but is not",
        "emoji 👩‍👩‍👧 family (ZWJ sequence) and flags 🇫🇷🇩🇪" * 3,
        "",
    ],
)
def test_any_subject_comes_back_exactly(subject: str) -> None:
    parsed = roundtrip(replace(BASE, subject=subject))
    assert parsed["Subject"] == subject


@pytest.mark.parametrize(
    "name",
    [
        "Zoë Ångström",
        'O\'Brien, "Bob"',
        "Dr. Who (the doctor)",
        "😀 Smiley",
        "A" * 300,
        "back\\slash",
        '"' * 600,  # escaped, it would not fit a line: encoded instead
    ],
)
def test_any_recipient_name_comes_back_exactly(name: str) -> None:
    raw = build_message_bytes(replace(BASE, to_name=name), date=DATE)
    assert_wire_format(raw)
    assert rfc2047_display_name(raw) == name
    if len(name.encode()) <= 42:  # one encoded-word at most; see the test below
        address = parse(raw)["To"].addresses[0]
        assert address.display_name == name
        assert address.addr_spec == "bob@example.com"


def test_long_non_ascii_name_is_split_into_encoded_words_at_spaces() -> None:
    name = "Zoë Ångström-Øverli de la Montagne, Très Longue Famille 😀 " * 3
    raw = build_message_bytes(replace(BASE, to_name=name.strip()), date=DATE)
    assert_wire_format(raw)
    # RFC 2047 6.2: white space between adjacent encoded-words is ignored, so what a mail client
    # shows is exact. (Python's address parser keeps that white space instead, which is why the
    # words end after a space: at worst it shows a doubled space, never a word cut in two.)
    assert rfc2047_display_name(raw) == name.strip()
    shown = parse(raw)["To"].addresses[0].display_name
    assert " ".join(shown.split()) == " ".join(name.split())


def rfc2047_display_name(raw: bytes) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    unfolded_head = re.sub(r"\r\n(?=[ \t])", "", head)  # RFC 5322 2.2.3: remove the CRLF only
    to = next(line for line in unfolded_head.split("\r\n") if line.startswith("To: "))
    unfolded = re.sub(r"To: (.*) <[^<>]*>$", r"\1", to)
    if "=?" not in unfolded:
        parsed = parse(b"To: " + to[4:].encode() + b"\r\n\r\n")
        return str(parsed["To"].addresses[0].display_name)
    return str(make_header(decode_header(unfolded)))


def test_sender_name_is_encoded_when_not_ascii() -> None:
    parsed = roundtrip(replace(BASE, from_address="Café Ünïcode <news@acme.test>"))
    assert parsed["From"].addresses[0].display_name == "Café Ünïcode"
    assert parsed["From"].addresses[0].addr_spec == "news@acme.test"


def test_unicode_domain_goes_out_as_punycode() -> None:
    parsed = roundtrip(replace(BASE, to_address="bob@bücher.example"))
    assert parsed["To"].addresses[0].addr_spec == "bob@xn--bcher-kva.example"


@pytest.mark.parametrize(
    "body",
    [
        "short ascii",
        "line one\n.\n.starts with a dot\n..two dots\nend\n",
        "trailing spaces   \ntrailing tab\t\n",
        "y " * 2000,  # one long line ending in a space
        "a=b and =3D and =\n",
        "x" * 5000,  # one very long word
        "Grüße aus Köln — “quotes” and €uros\n" * 40,
        "Привет! Это письмо на русском языке.\n" * 40,  # dense non-ASCII: base64
        "emoji 🎉🎉🎉 " * 300,
        "--=_tidings_1092\nlooks like our boundary\n--=_tidings_1092--\n",
        "control \x0c form feed and \x1b escape\n",
        "",
        "\n\n\n",
    ],
)
def test_any_body_comes_back_exactly_in_both_parts(body: str) -> None:
    parsed = roundtrip(replace(BASE, text=body, html=f"<pre>{body}</pre>"))
    assert body_of(parsed, "plain") == body
    assert body_of(parsed, "html") == f"<pre>{body}</pre>"


def test_minified_html_longer_than_a_line_is_quoted_printable() -> None:
    html = "".join(f'<td style="padding:0;color:#{i:03d}">cell {i}</td>' for i in range(200))
    raw = build_message_bytes(replace(BASE, html=html), date=DATE)
    assert_wire_format(raw)
    part = parse(raw).get_body(("html",))
    assert part is not None and part["Content-Transfer-Encoding"] == "quoted-printable"
    assert body_of(parse(raw), "html") == html


def test_old_mac_and_windows_line_breaks_become_crlf() -> None:
    parsed = roundtrip(replace(BASE, text="one\r\ntwo\rthree\n"))
    assert body_of(parsed, "plain") == "one\ntwo\nthree\n"


def test_text_only_message_is_a_single_part() -> None:
    parsed = roundtrip(replace(BASE, html=None, text="just text\n"))
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content_charset() == "utf-8"
    assert body_of(parsed, "plain") == "just text\n"


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "hello\r\nBcc: victim@example.com"},
        {"subject": "line\nbreak"},
        {"to_name": "Bob\rSmith"},
        {"to_address": "bob@example.com\r\nBcc: x@y.z"},
        {"from_address": "Acme <news@acme.test>\nBcc: x@y.z"},
        {"message_id_header": "<a@b>\r\nX-Evil: 1"},
        {"headers": (("List-Unsubscribe", "<https://x>\r\nBcc: x@y.z"),)},
        {"headers": (("X-Bad\r\nBcc", "x@y.z"),)},
        {"headers": (("Bad Name", "value"),)},
        {"headers": (("X-Nul", "a\x00b"),)},
    ],
)
def test_a_line_break_or_a_bad_name_in_a_header_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_message_bytes(replace(BASE, **change), date=DATE)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["Subject", "from", "Content-Type", "MIME-Version", "Message-Id"])
def test_extra_headers_cannot_override_the_ones_we_write(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be overridden"):
        build_message_bytes(replace(BASE, headers=((name, "x"),)), date=DATE)


def test_long_extra_header_is_folded_at_spaces() -> None:
    urls = ", ".join(f"<https://acme.test/unsubscribe/{i}/{'t' * 40}>" for i in range(5))
    raw = build_message_bytes(replace(BASE, headers=(("List-Unsubscribe", urls),)), date=DATE)
    assert_wire_format(raw)
    head = raw.split(b"\r\n\r\n")[0].decode()
    folded = re.search(r"^List-Unsubscribe: .*?(?=\r\n[^ ])", head, re.M | re.S)
    assert folded is not None
    assert len(folded.group().split("\r\n")) == 5  # one URL a line
    assert parse(raw)["List-Unsubscribe"] == urls


def test_date_is_rfc5322_in_utc() -> None:
    assert format_date(DATE) == "Tue, 03 Sep 2024 10:00:05 +0000"
    paris = datetime(2024, 9, 3, 12, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert format_date(paris) == "Tue, 03 Sep 2024 10:00:05 +0000"
    with pytest.raises(ValueError):
        format_date(datetime(2024, 9, 3))  # naive: which zone?


def test_same_message_and_date_give_the_same_bytes() -> None:
    assert build_message_bytes(BASE, date=DATE) == build_message_bytes(BASE, date=DATE)
