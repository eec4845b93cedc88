"""Reading bounce and complaint reports: RFC 3464 delivery status notifications and RFC 5965
(ARF) feedback reports, both ``multipart/report`` (RFC 6522).

A DSN holds a human-readable part, a ``message/delivery-status`` part (per-message fields, then one
block per recipient: ``Final-Recipient``, ``Action``, ``Status``, ``Diagnostic-Code``) and the
returned message or its headers. An ARF report holds a human-readable part, a
``message/feedback-report`` part (``Feedback-Type``, ``User-Agent``, ``Version``,
``Original-Rcpt-To`` ...) and the original message or its headers as the third part.

Parsing is pure (no database) and total: whatever bytes come in, the answer is a
``ParsedReport`` or a ``MalformedReport`` naming the reason, never another exception. Reports come
from anyone who can reach the bounce address, so nothing here trusts their shape: headers are read
as plain text (see ``_POLICY``), and the few fields a report needs are picked out leniently.
"""

from __future__ import annotations

import dataclasses
import email.policy
import enum
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import BytesParser, HeaderParser
from email.utils import collapse_rfc2231_value, getaddresses

from tidings.bounces.identify import clean_message_id
from tidings.errors import InvalidInput

MAX_REPORT_ID_LENGTH = 200  # characters: inbound_events.event_id
#: Message-IDs taken from the returned message: ours are about 60 characters and one per message,
#: so longer ones are not ours, and a few are plenty (they end up in a query and a refusal reason).
MAX_MESSAGE_ID_LENGTH = 200  # characters
MAX_MESSAGE_IDS = 10
MAX_DETAIL_LENGTH = 1000  # characters kept from a diagnostic
MAX_SHOWN_LENGTH = 80  # characters of a report's own value quoted in a refusal reason
#: Characters of a header value that are read (the rest is cut off). The fields a report needs are
#: short, and the standard library's header and parameter parsers take quadratic time: minutes for
#: a 4 MB To or a Content-Type of a million semicolons.
MAX_HEADER_LENGTH = 8192
#: Address headers (To, Delivered-To, X-Original-To) searched for a VERP address.
MAX_ADDRESS_HEADERS = 10
#: Lines starting with "--" (MIME boundaries) in one report. A report has three parts; the parser
#: spends about 25 ms and 350 KB on each part, so a 10 MB report of a million empty parts would
#: hold a thread for half a minute.
MAX_BOUNDARY_LINES = 1000
_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
_WHOLE_MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")
DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
HEADER_TYPES = frozenset({"text/rfc822-headers", "message/global-headers"})
MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
#: Feedback types that mean "this recipient does not want this mail" (RFC 5965 section 7.3).
COMPLAINT_FEEDBACK_TYPES = frozenset({"abuse", "fraud"})


def _text_header(_name: str, value: str) -> str:
    """A header value as plain text, cut to ``MAX_HEADER_LENGTH``; bytes that are not UTF-8 (RFC
    6532 allows UTF-8 in headers) become U+FFFD."""
    value = value[:MAX_HEADER_LENGTH]
    if value.isascii():
        return value
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte (the input was text)
        return value.encode("utf-8", "replace").decode("utf-8")


#: Every header is read as plain text (``_text_header``). ``email.policy.default`` parses
#: Message-ID, To, Date ... into structured values when they are first read, and its parsers raise
#: IndexError or AttributeError on values such as ``<r1@`` (they assume well-formed input in
#: places) and take quadratic time on long ones. A report needs only a few fields, which are read
#: here with tolerant code of our own; RFC 2047 encoded words are left as they are.
_POLICY = email.policy.default.clone(header_factory=_text_header)


class MalformedReport(InvalidInput):
    """The report does not follow RFC 3464 / RFC 5965."""

    code = "malformed_report"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, field="report")


class FeedbackKind(enum.StrEnum):
    """What a report says happened to one of our messages after it left us."""

    hard_bounce = "hard_bounce"  # permanent (5.x.x): never send to this address again
    soft_bounce = "soft_bounce"  # temporary (4.x.x): noted, nothing suppressed
    complaint = "complaint"  # the recipient marked it as spam


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One per-recipient block of a DSN."""

    recipient: str  # Final-Recipient's address
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str  # an RFC 3463 code such as 5.1.1
    diagnostic: str | None  # Diagnostic-Code, e.g. "smtp; 550 5.1.1 User unknown"


@dataclass(frozen=True, slots=True)
class ParsedReport:
    report_type: str  # delivery-status | feedback-report
    report_id: str  # the report's own Message-ID (or a digest of its bytes): recorded once
    kind: FeedbackKind | None  # None: nothing to record (a delay notice, a success DSN, not-spam)
    message_ids: tuple[str, ...]  # Message-IDs of the original message, as the report returns them
    recipients: tuple[str, ...]  # the addresses the report is about
    detail: str  # what to show on the message: status and diagnostic, or the feedback type
    reporter: str | None  # Reporting-MTA or the feedback User-Agent
    #: Where the report was addressed (To, Delivered-To, X-Original-To): a DSN goes to the original
    #: message's return path, so a VERP address shows up here.
    addressed_to: tuple[str, ...] = ()


def parse_report(raw: bytes) -> ParsedReport:
    """What ``raw`` (a whole email, headers and body) reports; raises ``MalformedReport``, and
    nothing else, when it is not a usable DSN or ARF report."""
    if not raw.strip():
        raise MalformedReport("the report is empty")
    if raw.count(b"\n--") > MAX_BOUNDARY_LINES:
        raise MalformedReport(f"the report has more than {MAX_BOUNDARY_LINES} MIME boundaries")
    try:
        message = BytesParser(policy=_POLICY).parsebytes(raw)
    except RecursionError:  # the parser descends one level per nested multipart
        raise MalformedReport("the report's MIME parts are nested too deeply") from None
    content_type = message.get_content_type()
    report_type = collapse_rfc2231_value(message.get_param("report-type") or "").strip().lower()
    if content_type != "multipart/report":
        raise MalformedReport(
            f"a bounce or complaint report is multipart/report, this one is {_shown(content_type)}"
        )
    parts = list(message.iter_parts()) if isinstance(message, EmailMessage) else []
    if report_type == "delivery-status":
        parsed = _delivery_status(parts, _report_id(message, raw))
    elif report_type == "feedback-report":
        parsed = _feedback(parts, _report_id(message, raw))
    else:
        raise MalformedReport(
            "report-type must be delivery-status or feedback-report,"
            f" not {_shown(report_type) if report_type else 'missing'!r}"
        )
    return dataclasses.replace(parsed, addressed_to=_addressed_to(message))


def _shown(value: str) -> str:
    """A value from the report on one short printable line, for a refusal reason or a log."""
    flat = "".join(c if c.isprintable() else "?" for c in " ".join(value.split()))
    return flat if len(flat) <= MAX_SHOWN_LENGTH else flat[:MAX_SHOWN_LENGTH] + "..."


def _header(message: Message, name: str) -> str:
    return str(message.get(name, "") or "")


def _addressed_to(message: Message) -> tuple[str, ...]:
    values: list[str] = []
    for name in ("Delivered-To", "X-Original-To", "To"):
        values.extend(str(v) for v in message.get_all(name, []))
    found = [a for _, a in getaddresses(values[:MAX_ADDRESS_HEADERS]) if "@" in a]
    return tuple(dict.fromkeys(found))


def _report_id(message: Message, raw: bytes) -> str:
    own = clean_message_id(_header(message, "Message-ID"))
    # A broken id such as "<r1@" or "<>" could be shared by unrelated reports, and the first one
    # would then make every later one a "duplicate": only a whole id-left@id-right names one report.
    if _WHOLE_MESSAGE_ID.match(own) and len(own) <= MAX_REPORT_ID_LENGTH:
        return own
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _field_blocks(part: Message) -> list[Message]:
    """The header blocks of a ``message/delivery-status`` or ``message/feedback-report`` part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, Message) and len(block)]
    if isinstance(payload, str):
        blocks = re.split(r"\r?\n[ \t]*\r?\n", payload.strip())
        return [HeaderParser(policy=_POLICY).parsestr(block) for block in blocks if block.strip()]
    return []


def _first(parts: Sequence[Message], types: Iterable[str]) -> Message | None:
    wanted = frozenset(types)
    return next((p for p in parts if p.get_content_type() in wanted), None)


def _original_message_ids(parts: Sequence[Message]) -> tuple[str, ...]:
    """Message-IDs in the returned message or headers (a DSN's third part, an ARF's third part)."""
    found: list[str] = []
    for part in parts:
        content_type = part.get_content_type()
        headers: Message | None = None
        if content_type in MESSAGE_TYPES:
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                headers = payload[0]
            elif isinstance(payload, str):
                headers = HeaderParser(policy=_POLICY).parsestr(payload)
        elif content_type in HEADER_TYPES:
            payload = part.get_payload(decode=True)
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
            headers = HeaderParser(policy=_POLICY).parsestr(text)
        if headers is not None:
            for value in headers.get_all("Message-ID", []):
                token = clean_message_id(str(value))
                if token and len(token) <= MAX_MESSAGE_ID_LENGTH and token not in found:
                    found.append(token)
    return tuple(found[:MAX_MESSAGE_IDS])


def _address(value: str | None) -> str:
    """The address of an ``rfc822; someone@example.com`` field."""
    _, _, address = (value or "").rpartition(";")
    return address.strip().strip("<>")


def _one_line(value: str | None) -> str | None:
    return " ".join(value.split())[:MAX_DETAIL_LENGTH] if value else None


def _recipient(block: Message, index: int) -> RecipientStatus:
    recipient = _address(_header(block, "Final-Recipient"))
    action = _header(block, "Action").strip().lower()
    status = _STATUS.match(_header(block, "Status").strip())
    if not recipient:
        raise MalformedReport(f"recipient block {index} has no Final-Recipient")
    if not action:
        raise MalformedReport(f"recipient block {index} ({_shown(recipient)}) has no Action")
    if status is None:
        raise MalformedReport(
            f"recipient block {index} ({_shown(recipient)}) has no valid Status (got"
            f" {_shown(_header(block, 'Status')) if block.get('Status') else 'none'!r})"
        )
    return RecipientStatus(
        recipient=recipient,
        action=action,
        status=status.group(0),
        diagnostic=_one_line(_header(block, "Diagnostic-Code")),
    )


def _delivery_status(parts: Sequence[Message], report_id: str) -> ParsedReport:
    part = _first(parts, DSN_TYPES)
    if part is None:
        raise MalformedReport(
            "the delivery status notification has no message/delivery-status part"
        )
    blocks = _field_blocks(part)
    if len(blocks) < 2:
        raise MalformedReport("the delivery status notification has no per-recipient fields")
    per_message, recipient_blocks = blocks[0], blocks[1:]
    recipients = [_recipient(block, i) for i, block in enumerate(recipient_blocks, start=1)]
    hard = [r for r in recipients if r.action == "failed" and r.status.startswith("5.")]
    soft = [
        r for r in recipients if r.action in ("failed", "delayed") and r.status.startswith("4.")
    ]
    decisive = hard or soft
    kind = FeedbackKind.hard_bounce if hard else FeedbackKind.soft_bounce if soft else None
    reporter = _address(_header(per_message, "Reporting-MTA")) or None
    if decisive:
        first = decisive[0]
        detail = f"{first.action} {first.status}: {first.diagnostic or 'no diagnostic'}"
    else:
        detail = ", ".join(f"{r.action} {r.status}" for r in recipients)
    if reporter:
        detail = f"{detail} (reported by {reporter})"
    return ParsedReport(
        report_type="delivery-status",
        report_id=report_id,
        kind=kind,
        message_ids=_original_message_ids(parts),
        recipients=tuple(r.recipient for r in (decisive or recipients)),
        detail=detail[:MAX_DETAIL_LENGTH],
        reporter=reporter,
    )


def _feedback(parts: Sequence[Message], report_id: str) -> ParsedReport:
    part = _first(parts, {"message/feedback-report"})
    if part is None:
        raise MalformedReport("the feedback report has no message/feedback-report part")
    blocks = _field_blocks(part)
    if not blocks:
        raise MalformedReport("the message/feedback-report part is empty")
    fields = blocks[0]
    feedback_type = _header(fields, "Feedback-Type").strip().lower()
    if not feedback_type:
        raise MalformedReport("the feedback report has no Feedback-Type")
    user_agent = _one_line(_header(fields, "User-Agent"))
    recipients = tuple(
        _address(str(value)) for value in fields.get_all("Original-Rcpt-To", []) if value
    )
    kind = FeedbackKind.complaint if feedback_type in COMPLAINT_FEEDBACK_TYPES else None
    detail = f"{feedback_type} report" + (f" from {user_agent}" if user_agent else "")
    return ParsedReport(
        report_type="feedback-report",
        report_id=report_id,
        kind=kind,
        message_ids=_original_message_ids(parts),
        recipients=recipients,
        detail=detail[:MAX_DETAIL_LENGTH],
        reporter=user_agent,
    )
