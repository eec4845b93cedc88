"""What a message can carry, checked before anything is stored: headers only from the allowlist,
no line break of any kind anywhere in a header, attachments of accepted types and size, file names
without paths."""

from __future__ import annotations

from base64 import b64encode

import pytest

from tidings.errors import InvalidInput, PayloadTooLarge
from tidings.services.message_features import (
    check_content_type,
    check_headers,
    clean_filename,
    decode_content,
)
from tidings.services.messages import check_header_text, check_mailbox

#: Every character that breaks a line somewhere (RFC 5322, Unicode, a careless client) or ends a
#: C string.
LINE_BREAKS = ["\r", "\n", "\r\n", "\u2028", "\u2029", "\x0b", "\x0c", "\x85", "\x00"]


def test_x_headers_and_list_id_are_kept_in_order_with_list_id_spelled_as_the_rfc_does() -> None:
    checked = check_headers(
        {"X-Course": "ML 101", "list-id": "Course news <ml101.school.example>", "X-Term": "2026"}
    )
    assert checked == [
        ["X-Course", "ML 101"],
        ["List-Id", "Course news <ml101.school.example>"],
        ["X-Term", "2026"],
    ]


@pytest.mark.parametrize(
    "name",
    ["Bcc", "Reply-To", "From", "Subject", "List-Unsubscribe", "Received", "Return-Path",
     "X-Tidings-Campaign", "x-tidings-test", "X-", "X_Thing", "DKIM-Signature"],
)  # fmt: skip
def test_a_header_outside_the_allowlist_or_one_tidings_writes_is_refused_naming_it(
    name: str,
) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_headers({name: "value"})
    assert refused.value.field == f"headers.{name}"


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_a_line_break_in_a_header_value_or_name_is_refused_naming_the_header(brk: str) -> None:
    with pytest.raises(InvalidInput) as in_value:
        check_headers({"X-Course": f"ML{brk}Bcc: victim@example.com"})
    assert in_value.value.field == "headers.X-Course"
    with pytest.raises(InvalidInput) as in_name:
        check_headers({f"X-Course{brk}Bcc": "x"})
    assert in_name.value.field is not None and in_name.value.field.startswith("headers.X-Course")


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_a_line_break_in_a_sender_or_reply_to_name_is_refused(brk: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_mailbox(f'"Ms Ada{brk}Bcc: x@example.com" <ada@school.example>', field="reply_to")
    assert refused.value.field == "reply_to"


def test_headers_have_limits_a_list_id_its_format_and_a_name_may_come_once() -> None:
    with pytest.raises(InvalidInput, match="at most"):
        check_headers({f"X-H{i}": "v" for i in range(21)})
    with pytest.raises(InvalidInput) as long_value:
        check_headers({"X-Long": "v" * 901})
    assert long_value.value.field == "headers.X-Long"
    with pytest.raises(InvalidInput) as list_id:
        check_headers({"List-Id": "no angle brackets"})
    assert list_id.value.field == "headers.List-Id"
    with pytest.raises(InvalidInput, match="twice"):
        check_headers({"X-A": "1", "x-a": "2"})
    with pytest.raises(InvalidInput):
        check_headers({"X-Empty": "  "})


def test_a_file_name_keeps_its_last_path_component_and_its_non_ascii_letters() -> None:
    assert clean_filename("C:\\Users\\ada\\Lehrplan für Straße.pdf", field="f") == (
        "Lehrplan für Straße.pdf"
    )
    assert clean_filename("../../etc/passwd.txt", field="f") == "passwd.txt"
    for bad in ("dir/", "..", "a" * 256 + ".pdf"):
        with pytest.raises(InvalidInput):
            clean_filename(bad, field="f")


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_a_line_break_in_a_file_name_is_refused(brk: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        clean_filename(f"a{brk}Content-Type: text/html.pdf", field="attachments[0].filename")
    assert refused.value.field == "attachments[0].filename"


@pytest.mark.parametrize("name", ["setup.exe", "run.BAT", "page.html", "logo.svg", "x.js"])
def test_programs_and_pages_are_refused_by_their_extension(name: str) -> None:
    with pytest.raises(InvalidInput):
        clean_filename(name, field="f")


def test_content_types_come_from_the_allowlist() -> None:
    assert check_content_type("Application/PDF", field="f") == "application/pdf"
    assert check_content_type("text/calendar", field="f") == "text/calendar"
    for refused in ("text/html", "image/svg+xml", "application/x-msdownload",
                    "application/octet-stream", "text/plain; charset=utf-8", ""):  # fmt: skip
        with pytest.raises(InvalidInput) as error:
            check_content_type(refused, field="attachments[1].content_type")
        assert error.value.field == "attachments[1].content_type"


def test_base64_is_decoded_exactly_and_bad_base64_is_refused_naming_the_content() -> None:
    data = bytes(range(256)) * 3
    wrapped = b64encode(data).decode()
    wrapped = "\r\n".join(wrapped[i : i + 76] for i in range(0, len(wrapped), 76))
    assert decode_content(wrapped, field="c", room=10_000) == data
    for bad in ("not base64!", "QQ=", "QUJ", "QUJD\x00"):
        with pytest.raises(InvalidInput) as refused:
            decode_content(bad, field="attachments[0].content", room=10_000)
        assert refused.value.field == "attachments[0].content"


def test_content_over_the_room_left_is_too_large_and_programs_are_refused() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_content(b64encode(b"x" * 101).decode(), field="c", room=100)
    assert decode_content(b64encode(b"x" * 100).decode(), field="c", room=100) == b"x" * 100
    with pytest.raises(InvalidInput, match="program"):
        decode_content(b64encode(b"MZ\x90\x00rest").decode(), field="c", room=100)


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_no_text_bound_for_a_header_takes_any_line_break(brk: str) -> None:
    """Subjects, categories, references: a Unicode line separator is refused like CR LF."""
    with pytest.raises(InvalidInput) as refused:
        check_header_text(f"Grades{brk}Bcc: x@evil.example", field="subject", max_length=998)
    assert refused.value.field == "subject"
