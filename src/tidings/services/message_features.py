"""What a message can carry besides its content: a Reply-To, extra headers, attachments.

Templates, campaigns and transactional messages take them (a campaign's or message's own win over
its template's, see ``delivery/features.py``), and each keeps them in one JSON column,
``features``, null when none is given, as for almost every message::

    {"reply_to": "\\"Ms Ada\\" <ada@school.example>",
     "headers": [["X-Course", "ML 101"], ["List-Id", "<ml101.school.example>"]],
     "attachments": [{"id": 7, "filename": "syllabus.pdf", "content_type": "application/pdf",
                      "size": 2048000}]}

An attachment's content is stored once per tenant and content (``attachments``, by SHA-256) and
named by id, so a campaign to 100,000 recipients with a 2 MB syllabus stores 2 MB, and a second
campaign with the same file stores nothing more.

What is refused, each a 422 naming the field (``headers.X-Name``, ``attachments[0].content``):

* headers other than ``X-*`` and ``List-Id``, and ``X-Tidings-*`` (ours); every other header is
  either written by Tidings (From, To, Subject, Date, Message-ID, MIME, List-Unsubscribe, DKIM) or
  changes how the mail is handled in ways a tenant should not reach (Bcc, Return-Path, Received);
* any line break or control character in a name or value: CR, LF, NUL, vertical tab, form feed,
  NEL (U+0085), the Unicode line and paragraph separators (U+2028, U+2029), and the rest of C0/C1.
  A line break in a header is how a form field becomes somebody else's spam (header injection);
* content types outside ``ALLOWED_CONTENT_TYPES``: documents, images, plain text, CSV,
  calendars, archives. HTML and SVG are refused (they run script or phish when opened from a mail,
  and an HTML body is what ``html`` is for), and so are executables, by type, by file name
  extension (``BLOCKED_EXTENSIONS``) and by their first bytes, as the big mailbox providers do;
* base64 that does not decode; more than ``TIDINGS_MAX_ATTACHMENT_BYTES`` decoded in all is a 413.

A file name keeps only its last path component (``C:\\docs\\a.pdf`` becomes ``a.pdf``); its
non-ASCII characters are kept, and written per RFC 2231 in the mail (``transports/mime.py``).
"""

from __future__ import annotations

import binascii
import hashlib
import re
from base64 import b64decode
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tidings.db.models import Attachment
from tidings.errors import InvalidInput, PayloadTooLarge

DEFAULT_MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024  # as TIDINGS_MAX_ATTACHMENT_BYTES' default
MAX_HEADERS = 20
MAX_HEADER_NAME_LENGTH = 64  # characters
MAX_HEADER_VALUE_LENGTH = 900  # characters; with the name, one header line stays under 998
MAX_ATTACHMENTS = 20
MAX_FILENAME_LENGTH = 255  # characters, as most file systems allow
MAX_MAILBOX_LENGTH = 400  # characters, as the from_address column

#: What may be attached: the files a school or a small company mails (documents, spreadsheets,
#: slides, images, calendars, archives). Refused by default: HTML, SVG, scripts, executables,
#: and ``application/octet-stream`` (say what the file is).
ALLOWED_CONTENT_TYPES = frozenset(
    {
        "application/pdf",
        "application/rtf",
        "application/zip",
        "application/gzip",
        "application/json",
        "application/msword",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/vnd.oasis.opendocument.text",
        "application/vnd.oasis.opendocument.spreadsheet",
        "application/vnd.oasis.opendocument.presentation",
        "application/epub+zip",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/heic",
        "image/tiff",
        "image/bmp",
        "text/plain",
        "text/csv",
        "text/calendar",
        "text/markdown",
        "text/vcard",
        "audio/mpeg",
        "video/mp4",
    }
)
#: File name extensions refused whatever the declared type: what mail clients and providers
#: block because opening it runs it.
BLOCKED_EXTENSIONS = frozenset(
    {
        "app", "apk", "bat", "cmd", "com", "cpl", "dll", "dmg", "exe", "hta", "htm", "html",
        "jar", "js", "jse", "lnk", "msi", "msp", "pif", "ps1", "reg", "scr", "sh", "svg",
        "vb", "vbe", "vbs", "wsf", "xhtml",
    }
)  # fmt: skip
#: First bytes of executables (Windows PE, ELF, Mach-O): refused whatever the name and type.
_EXECUTABLE_MAGIC = (
    b"MZ",
    b"\x7fELF",
    b"\xfe\xed\xfa\xce",
    b"\xfe\xed\xfa\xcf",
    b"\xce\xfa\xed\xfe",
    b"\xcf\xfa\xed\xfe",
)

#: Line breaks and every other control character, C0 and C1 (NEL is U+0085), and the Unicode
#: line and paragraph separators: none may reach a header.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_X_HEADER = re.compile(r"X-[A-Za-z0-9][A-Za-z0-9-]*", re.IGNORECASE)
_OWN_PREFIX = "x-tidings-"
# RFC 2919: an optional phrase, then the list's id in angle brackets.
_LIST_ID = re.compile(r"(?:[ -;=?-~]+ )?<[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,255}>")


@dataclass(frozen=True, slots=True)
class AttachmentIn:
    """An attachment as a caller gives it."""

    filename: str
    content_type: str
    content: str  # base64 (line breaks and spaces are ignored)


@dataclass(frozen=True, slots=True)
class FeaturesIn:
    """The extras a caller gives; None: not given (a template's apply)."""

    reply_to: str | None = None  # a mailbox, already checked like a From
    headers: Mapping[str, str] | None = None
    attachments: Sequence[AttachmentIn] | None = None

    def is_empty(self) -> bool:
        return self.reply_to is None and not self.headers and not self.attachments


def has_control(value: str) -> bool:
    """Whether ``value`` holds a line break or another control character (header injection)."""
    return _CONTROL.search(value) is not None


def mailbox_text(name: str | None, address: str) -> str:
    """``"Name" <address>`` from a name and an address as an API caller gives them apart (the
    caller checks the result with ``messages.check_mailbox``, which also checks the name)."""
    if name is None or not name.strip():
        return address
    escaped = name.strip().replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}" <{address}>'


def store_features(
    *,
    session: Session,
    tenant_id: int,
    given: FeaturesIn,
    max_attachment_bytes: int,
    now: datetime,
) -> dict[str, Any] | None:
    """The ``features`` JSON for ``given``, each part checked, the attachments' contents stored
    (once per content); None when nothing is given. ``reply_to`` comes checked and normalised by
    the caller (``messages.check_mailbox``, as a From)."""
    if given.is_empty():
        return None
    features: dict[str, Any] = {}
    if given.reply_to is not None:
        features["reply_to"] = given.reply_to
    if given.headers:
        features["headers"] = check_headers(given.headers)
    if given.attachments:
        features["attachments"] = _store_attachments(
            session, tenant_id, given.attachments, max_attachment_bytes, now
        )
    return features


def check_headers(headers: Mapping[str, str]) -> list[list[str]]:
    """The extra headers as stored: ``[[name, value], ...]`` in the given order."""
    if len(headers) > MAX_HEADERS:
        raise InvalidInput(f"at most {MAX_HEADERS} headers", field="headers")
    seen: set[str] = set()
    checked: list[list[str]] = []
    for name, value in headers.items():
        field = f"headers.{_printable(name)}"
        if has_control(name) or has_control(value):
            raise InvalidInput(
                f"{field} must not contain line breaks or control characters", field=field
            )
        lower = name.lower()
        if lower == "list-id":
            name = "List-Id"
            if not _LIST_ID.fullmatch(value):
                raise InvalidInput(
                    f"{field} must be ASCII, an optional description and the list's id in "
                    "angle brackets, e.g. 'Course news <ml101.school.example>'",
                    field=field,
                )
        elif not _X_HEADER.fullmatch(name) or lower.startswith(_OWN_PREFIX):
            raise InvalidInput(
                f"{field} cannot be set: only X-* headers (not X-Tidings-*) and List-Id may be",
                field=field,
            )
        if len(name) > MAX_HEADER_NAME_LENGTH:
            raise InvalidInput(
                f"a header name may be at most {MAX_HEADER_NAME_LENGTH} characters", field=field
            )
        if not value.strip() or len(value) > MAX_HEADER_VALUE_LENGTH:
            raise InvalidInput(
                f"{field} must be 1 to {MAX_HEADER_VALUE_LENGTH} characters", field=field
            )
        if lower in seen:
            raise InvalidInput(f"{field} is given twice", field=field)
        seen.add(lower)
        checked.append([name, value.strip()])
    return checked


def clean_filename(filename: str, *, field: str) -> str:
    """The file name as it goes in the mail: its last path component, no line breaks."""
    if has_control(filename):
        raise InvalidInput(
            f"{field} must not contain line breaks or control characters", field=field
        )
    base = re.split(r"[/\\]", filename)[-1].strip()
    if not base or base in (".", "..") or len(base) > MAX_FILENAME_LENGTH:
        raise InvalidInput(
            f"{field} must be a file name of 1 to {MAX_FILENAME_LENGTH} characters", field=field
        )
    extension = base.rpartition(".")[2].lower() if "." in base else ""
    if extension in BLOCKED_EXTENSIONS:
        raise InvalidInput(f"{field}: .{extension} files cannot be attached", field=field)
    return base


def check_content_type(content_type: str, *, field: str) -> str:
    value = content_type.strip().lower()
    if value not in ALLOWED_CONTENT_TYPES:
        raise InvalidInput(
            f"{field}: {_printable(content_type)[:100]!r} is not an accepted type (documents, "
            "images, text/plain, text/csv, calendars, archives; not HTML, SVG or programs)",
            field=field,
        )
    return value


def decode_content(content: str, *, field: str, room: int) -> bytes:
    """The decoded content; ``room`` is how many bytes the message may still attach."""
    compact = "".join(content.split())
    if len(compact) // 4 * 3 > room + 2:  # before decoding: base64 is 4 characters per 3 bytes
        raise PayloadTooLarge("the attachments are larger than allowed", field="attachments")
    try:
        data = b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{field} is not valid base64", field=field) from None
    if not data:
        raise InvalidInput(f"{field} is empty", field=field)
    if len(data) > room:
        raise PayloadTooLarge("the attachments are larger than allowed", field="attachments")
    if data.startswith(_EXECUTABLE_MAGIC):
        raise InvalidInput(f"{field} is a program, which cannot be attached", field=field)
    return data


def _store_attachments(
    session: Session,
    tenant_id: int,
    attachments: Sequence[AttachmentIn],
    max_bytes: int,
    now: datetime,
) -> list[dict[str, Any]]:
    if len(attachments) > MAX_ATTACHMENTS:
        raise InvalidInput(f"at most {MAX_ATTACHMENTS} attachments", field="attachments")
    room = max_bytes
    decoded: list[tuple[str, str, bytes]] = []
    for index, given in enumerate(attachments):
        field = f"attachments[{index}]"
        filename = clean_filename(given.filename, field=f"{field}.filename")
        content_type = check_content_type(given.content_type, field=f"{field}.content_type")
        data = decode_content(given.content, field=f"{field}.content", room=room)
        room -= len(data)
        decoded.append((filename, content_type, data))
    return [
        {
            "id": _stored(session, tenant_id, data, now),
            "filename": filename,
            "content_type": content_type,
            "size": len(data),
        }
        for filename, content_type, data in decoded
    ]


def _stored(session: Session, tenant_id: int, data: bytes, now: datetime) -> int:
    """The id of the tenant's row holding ``data``, written when it is new.

    Two requests may store the same new file at once: the insert runs in a SAVEPOINT, so the
    loser's unique violation rolls back only that, and it takes the winner's row.
    """
    digest = hashlib.sha256(data).hexdigest()
    query = select(Attachment.id).where(
        Attachment.tenant_id == tenant_id, Attachment.sha256 == digest
    )
    found = session.scalar(query)
    if found is not None:
        return found
    row = Attachment(
        tenant_id=tenant_id, sha256=digest, size=len(data), content=data, created_at=now
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        found = session.scalar(query)
        if found is None:
            raise
        return found
    return row.id


def attachments_out(features: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The attachments as answers show them: name, type and size, never the content."""
    return [
        {"filename": a["filename"], "content_type": a["content_type"], "size": a["size"]}
        for a in (features or {}).get("attachments", ())
    ]


def headers_out(features: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(pair[0]): str(pair[1]) for pair in (features or {}).get("headers", ())}


def _printable(name: str) -> str:
    return _CONTROL.sub("?", name)[: MAX_HEADER_NAME_LENGTH + 10]
