"""Reading bounce and complaint reports: RFC 3464 delivery status notifications and RFC 5965
(ARF) feedback reports, both ``multipart/report`` (RFC 6522).

A DSN holds a human-readable part, a ``message/delivery-status`` part (per-message fields, then one
block per recipient: ``Final-Recipient``, ``Action``, ``Status``, ``Diagnostic-Code``) and the
returned message or its headers. An ARF report holds a human-readable part, a
``message/feedback-report`` part (``Feedback-Type``, ``User-Agent``, ``Version``,
``Original-Rcpt-To`` ...) and the original message or its headers as the third part.

Parsing is pure (no database): it says what the report claims and which Message-IDs it names; a
report that does not follow the RFCs raises ``MalformedReport`` with the reason.
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
from email.utils import getaddresses

from tidings.bounces.identify import clean_message_id
from tidings.errors import InvalidInput

MAX_REPORT_ID_LENGTH = 200  # characters: inbound_events.event_id
MAX_DETAIL_LENGTH = 1000  # characters kept from a diagnostic
_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
HEADER_TYPES = frozenset({"text/rfc822-headers", "message/global-headers"})
MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
#: Feedback types that mean "this recipient does not want this mail" (RFC 5965 section 7.3).
COMPLAINT_FEEDBACK_TYPES = frozenset({"abuse", "fraud"})


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
    """What ``raw`` (a whole email, headers and body) reports; raises ``MalformedReport``."""
    if not raw.strip():
        raise MalformedReport("the report is empty")
    try:
        message = BytesParser(policy=email.policy.default).parsebytes(raw)
        content_type = message.get_content_type()
        report_type = str(message.get_param("report-type") or "").strip().lower()
    except Exception as exc:  # the email package raises many things on broken input
        raise MalformedReport(f"the report cannot be read as an email: {exc}") from None
    if content_type != "multipart/report":
        raise MalformedReport(
            f"a bounce or complaint report is multipart/report, this one is {content_type}"
        )
    parts = list(message.iter_parts()) if isinstance(message, EmailMessage) else []
    if report_type == "delivery-status":
        parsed = _delivery_status(parts, _report_id(message, raw))
    elif report_type == "feedback-report":
        parsed = _feedback(parts, _report_id(message, raw))
    else:
        raise MalformedReport(
            f"report-type must be delivery-status or feedback-report, not {report_type or 'missing'!r}"
        )
    return dataclasses.replace(parsed, addressed_to=_addressed_to(message))


def _addressed_to(message: Message) -> tuple[str, ...]:
    values: list[str] = []
    for name in ("Delivered-To", "X-Original-To", "To"):
        values.extend(str(v) for v in message.get_all(name, []))
    found = [address for _, address in getaddresses(values) if "@" in address]
    return tuple(dict.fromkeys(found))


def _report_id(message: Message, raw: bytes) -> str:
    own = clean_message_id(str(message.get("Message-ID", "") or ""))
    if own and len(own) <= MAX_REPORT_ID_LENGTH:
        return own
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _field_blocks(part: Message) -> list[Message]:
    """The header blocks of a ``message/delivery-status`` or ``message/feedback-report`` part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, Message) and len(block)]
    if isinstance(payload, str):
        blocks = re.split(r"\r?\n[ \t]*\r?\n", payload.strip())
        return [HeaderParser().parsestr(block) for block in blocks if block.strip()]
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
                headers = HeaderParser().parsestr(payload)
        elif content_type in HEADER_TYPES:
            payload = part.get_payload(decode=True)
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
            headers = HeaderParser().parsestr(text)
        if headers is not None:
            for value in headers.get_all("Message-ID", []):
                token = clean_message_id(str(value))
                if token and token not in found:
                    found.append(token)
    return tuple(found)


def _address(value: str | None) -> str:
    """The address of an ``rfc822; someone@example.com`` field."""
    _, _, address = (value or "").rpartition(";")
    return address.strip().strip("<>")


def _one_line(value: str | None) -> str | None:
    return " ".join(value.split())[:MAX_DETAIL_LENGTH] if value else None


def _recipient(block: Message, index: int) -> RecipientStatus:
    recipient = _address(block.get("Final-Recipient"))
    action = str(block.get("Action", "") or "").strip().lower()
    status = _STATUS.match(str(block.get("Status", "") or "").strip())
    if not recipient:
        raise MalformedReport(f"recipient block {index} has no Final-Recipient")
    if not action:
        raise MalformedReport(f"recipient block {index} ({recipient}) has no Action")
    if status is None:
        raise MalformedReport(
            f"recipient block {index} ({recipient}) has no valid Status (got"
            f" {str(block.get('Status', '') or 'none')!r})"
        )
    return RecipientStatus(
        recipient=recipient,
        action=action,
        status=status.group(0),
        diagnostic=_one_line(block.get("Diagnostic-Code")),
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
    reporter = _address(per_message.get("Reporting-MTA")) or None
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
    feedback_type = str(fields.get("Feedback-Type", "") or "").strip().lower()
    if not feedback_type:
        raise MalformedReport("the feedback report has no Feedback-Type")
    user_agent = _one_line(fields.get("User-Agent"))
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
