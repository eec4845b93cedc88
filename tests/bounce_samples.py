"""Bounce and complaint reports shaped like the ones real mail systems send, built with the
standard library's ``email`` package: a Postfix DSN (returns the whole message), a Gmail DSN
(returns only the headers, as text/rfc822-headers), a Postfix delay notice, and a Yahoo ARF
complaint (returns the whole message)."""

from __future__ import annotations

from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate, make_msgid

BOUNCE_ADDRESS = "bounces@tidings.test"


def original_message(*, recipient: str, message_id: str | None) -> EmailMessage:
    """The message we sent, as a report returns it."""
    original = EmailMessage()
    original["From"] = "Tidings <noreply@tidings.test>"
    original["To"] = recipient
    original["Subject"] = "Reminder: grades are due Friday"
    original["Date"] = formatdate(1767225600)
    if message_id is not None:
        original["Message-ID"] = message_id
    original["List-Unsubscribe"] = "<http://tidings.test/u/abc>"
    original.set_content("Dear Ada, please submit your grades.\n")
    return original


def _fields(pairs: list[tuple[str, str]]) -> Message:
    block = Message()
    for name, value in pairs:
        block[name] = value
    return block


def _report(
    report_type: str, *, sender: str, to: str, subject: str, report_id: str | None
) -> MIMEMultipart:
    report = MIMEMultipart("report", report_type=report_type)
    report["From"] = sender
    report["To"] = to
    report["Subject"] = subject
    report["Date"] = formatdate(1767229200)
    report["Message-ID"] = report_id or make_msgid(domain="reports.example")
    report["Auto-Submitted"] = "auto-replied"
    return report


def _delivery_status(
    per_message: list[tuple[str, str]], recipients: list[list[tuple[str, str]]]
) -> Message:
    part = Message()
    part["Content-Type"] = "message/delivery-status"
    part.set_payload([_fields(per_message), *(_fields(r) for r in recipients)])
    return part


def postfix_dsn(
    *,
    recipient: str,
    message_id: str | None,
    status: str = "5.1.1",
    action: str = "failed",
    diagnostic: str | None = None,
    to: str = BOUNCE_ADDRESS,
    report_id: str | None = None,
) -> bytes:
    """A Postfix "Undelivered Mail Returned to Sender" with the original message attached."""
    diagnostic = diagnostic or (
        f"smtp; 550 {status} <{recipient}>: Recipient address rejected: User unknown in virtual"
        " mailbox table"
    )
    report = _report(
        "delivery-status",
        sender="MAILER-DAEMON@mx.example.org (Mail Delivery System)",
        to=to,
        subject="Undelivered Mail Returned to Sender",
        report_id=report_id,
    )
    report.attach(
        MIMEText(
            "This is the mail system at host mx.example.org.\n\nI'm sorry to have to inform you"
            " that your message could not\nbe delivered to one or more recipients.\n"
        )
    )
    report.attach(
        _delivery_status(
            [
                ("Reporting-MTA", "dns; mx.example.org"),
                ("X-Postfix-Queue-ID", "4Xyz1234"),
                ("Arrival-Date", formatdate(1767225600)),
            ],
            [
                [
                    ("Final-Recipient", f"rfc822; {recipient}"),
                    ("Original-Recipient", f"rfc822;{recipient}"),
                    ("Action", action),
                    ("Status", status),
                    ("Remote-MTA", "dns; mail.example.com"),
                    ("Diagnostic-Code", diagnostic),
                ]
            ],
        )
    )
    report.attach(MIMEMessage(original_message(recipient=recipient, message_id=message_id)))
    return report.as_bytes()


def gmail_dsn(*, recipient: str, message_id: str, status: str = "5.1.1") -> bytes:
    """Gmail's "Delivery Status Notification (Failure)": only the headers come back."""
    report = _report(
        "delivery-status",
        sender="Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
        to=BOUNCE_ADDRESS,
        subject="Delivery Status Notification (Failure)",
        report_id=None,
    )
    report.attach(
        MIMEText(
            f"** Address not found **\n\nYour message wasn't delivered to {recipient} because the"
            " address couldn't be found, or is unable to receive mail.\n"
        )
    )
    report.attach(
        _delivery_status(
            [("Reporting-MTA", "dns; googlemail.com"), ("Received-From-MTA", "dns; tidings.test")],
            [
                [
                    ("Final-Recipient", f"rfc822; {recipient}"),
                    ("Action", "failed"),
                    ("Status", status),
                    ("Remote-MTA", "dns; gmail-smtp-in.l.google.com. (142.250.1.26)"),
                    (
                        "Diagnostic-Code",
                        f"smtp; 550-{status} The email account that you tried to reach does not"
                        f" exist. Please try\n 550-{status} double-checking the recipient's email"
                        " address for typos.",
                    ),
                    ("Last-Attempt-Date", formatdate(1767229200)),
                ]
            ],
        )
    )
    headers = original_message(recipient=recipient, message_id=message_id)
    header_text = "".join(f"{name}: {value}\n" for name, value in headers.items())
    report.attach(MIMEText(header_text, "rfc822-headers"))
    return report.as_bytes()


def yahoo_arf(
    *,
    recipient: str,
    message_id: str | None,
    feedback_type: str = "abuse",
    report_id: str | None = None,
) -> bytes:
    """A Yahoo complaint feedback loop report (RFC 5965), with the original message."""
    report = _report(
        "feedback-report",
        sender="Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.com>",
        to=BOUNCE_ADDRESS,
        subject="FW: Reminder: grades are due Friday",
        report_id=report_id,
    )
    report.attach(
        MIMEText(
            "This is an email abuse report for an email message received from IP 203.0.113.7"
            " on Thu, 01 Jan 2026 00:00:00 +0000.\nFor more information about this format please"
            " see http://www.mipassoc.org/arf/.\n"
        )
    )
    feedback = MIMEBase("message", "feedback-report")
    feedback.set_payload(
        f"Feedback-Type: {feedback_type}\r\n"
        "User-Agent: Yahoo!-Mail-Feedback/2.0\r\n"
        "Version: 1\r\n"
        "Original-Mail-From: <bounces@tidings.test>\r\n"
        f"Original-Rcpt-To: <{recipient}>\r\n"
        "Received-Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        "Source-IP: 203.0.113.7\r\n"
        "Reported-Domain: tidings.test\r\n"
        "Authentication-Results: mta1000.mail.yahoo.com from=tidings.test; dkim=pass\r\n"
    )
    report.attach(feedback)
    report.attach(MIMEMessage(original_message(recipient=recipient, message_id=message_id)))
    return report.as_bytes()


def plain_email(text: str = "Out of office until Monday.") -> bytes:
    """Not a report at all: an auto-reply that reached the bounce address."""
    message = EmailMessage()
    message["From"] = "someone@example.com"
    message["To"] = BOUNCE_ADDRESS
    message["Subject"] = "Automatic reply"
    message.set_content(text)
    return message.as_bytes()
